"""What is sent to the backend about the cursor: prefix, suffix, path, language."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from pygls.uris import to_fs_path

from lsp_server.documents import Document

# The backend keeps only the text nearest the cursor (a few hundred tokens); sending whole large
# files on every keystroke would only cost time (copying, redacting, encoding: the editor waits
# for all of it). Still about 2,000 tokens of prefix, room for a larger context window.
MAX_PREFIX_CHARS = 8_000
MAX_SUFFIX_CHARS = 2_000


@dataclass(frozen=True)
class CursorContext:
    prefix: str
    suffix: str
    path: str
    language: str


def cursor_context(document: Document, offset: int, uri: str, root_path: str | None) -> CursorContext:
    return CursorContext(
        prefix=document.text[max(0, offset - MAX_PREFIX_CHARS) : offset],
        suffix=document.text[offset : offset + MAX_SUFFIX_CHARS],
        path=display_path(uri, root_path),
        language=document.language_id,
    )


def display_path(uri: str, root_path: str | None) -> str:
    """The file's path relative to the workspace, or just its name: absolute paths would tell the
    backend the person's account name and directory layout."""
    fs_path = to_fs_path(uri)
    if fs_path is None:
        return uri.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    path = PurePath(fs_path)
    if root_path:
        try:
            return path.relative_to(root_path).as_posix()
        except ValueError:
            pass
    return path.name
