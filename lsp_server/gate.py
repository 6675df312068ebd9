"""Which documents the language server may ask the backend about: a language the model serves (or
the user turned on) and a path that is not excluded. A document that fails either is never sent to
the backend and never becomes an episode.

Imported after `initialize`; standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import PurePath
from urllib.parse import unquote, urlsplit

# Files that hold secrets as their whole point: never sent, whatever the user's own list says.
# A pattern without "/" is matched against the file name, one with "/" against the whole path.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "*.gpg",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".pypirc",
    ".npmrc",
    ".git-credentials",
    "credentials",
    "credentials.json",
    "*/.ssh/*",
    "*/.aws/*",
    "*/.gnupg/*",
)

# The key of `languages` that stands for every language not named there.
EVERY_LANGUAGE = "*"


def path_of(uri: str) -> str | None:
    """The file path of a file: URI; None for other schemes (an unsaved buffer, a diff view)."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return None
    return unquote(parts.path)


def excluded(uri: str, patterns: Iterable[str], root_path: str | None = None) -> bool:
    """True when the document's path matches one of DEFAULT_EXCLUDE or `patterns` (fnmatch globs,
    case-sensitive; `*` also crosses "/"). A pattern with "/" is tried against the absolute path and
    the path relative to the workspace root."""
    path = path_of(uri)
    if path is None:
        name = uri.rsplit("/", 1)[-1]
        candidates = [uri]
    else:
        name = PurePath(path).name
        candidates = [path]
        if root_path and PurePath(path).is_relative_to(root_path):
            candidates.append(PurePath(path).relative_to(root_path).as_posix())
    for pattern in (*DEFAULT_EXCLUDE, *patterns):
        if "/" not in pattern:
            if fnmatchcase(name, pattern):
                return True
        elif fnmatchcase(candidates[0], pattern) or any(
            fnmatchcase(relative, pattern.lstrip("/")) for relative in candidates[1:]
        ):
            return True
    return False


def language_enabled(language: str, served: Iterable[str], choices: Mapping[str, bool]) -> bool:
    """The user's word on a language first, then their word on every language ("*": false turns
    off all but those named), then whether the model serves it."""
    if language in choices:
        return choices[language]
    if choices.get(EVERY_LANGUAGE) is False:
        return False
    if choices.get(EVERY_LANGUAGE) is True:
        return True
    return language in served


def enabled_languages(served: Iterable[str], choices: Mapping[str, bool]) -> list[str]:
    """The languages the server asks for: those served and those the user turned on, less those
    they turned off."""
    named = {*served, *(language for language, on in choices.items() if on and language != EVERY_LANGUAGE)}
    served = list(served)
    return sorted(language for language in named if language_enabled(language, served, choices))
