"""One simulated editor: an LSP client over stdio driving the real `python -m lsp_server`.

It keeps each document's text itself, as an editor does, and speaks in character offsets; LSP
positions (line, UTF-16 column) are computed here, so the developer logic never sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from lsp_server.protocol import (
    ACCEPT_COMMAND,
    DID_CHANGE_STATUS,
    DID_PARTIALLY_ACCEPT,
    DID_REJECT,
    DID_SHOW,
    FLUSH_REQUEST,
)
from lsp_server.ranges import code_points_for_units, utf16_units

# One accept-next-word step: a word, or a run of punctuation, with the blanks before it.
WORD_STEP = re.compile(r"\s*(?:\w+|[^\w\s]+)")


def word_steps(text: str) -> list[int]:
    """Where each accept-next-word step through `text` ends."""
    return [step.end() for step in WORD_STEP.finditer(text)]


def position(text: str, offset: int) -> types.Position:
    """The LSP position of character `offset` in `text` (columns in UTF-16 code units)."""
    line = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    column = utf16_units(text[line_start:offset])
    return types.Position(line=line, character=column)


@dataclass
class Suggestion:
    completion_id: str
    # What the developer sees after the cursor: the item's text past what is typed in its range.
    text: str
    command: types.Command
    # The start of the item's text already in the document (typed ahead), which acceptedLength
    # counts along with what is accepted.
    typed: str = ""


@dataclass
class Document:
    uri: str
    text: str = ""
    version: int = 1


class Editor:
    """An editor session of one developer: one language-server process for the whole run."""

    def __init__(self, client: LanguageClient, log_task: asyncio.Task[None]) -> None:
        self.client = client
        self._log_task = log_task

    @classmethod
    async def start(cls, env: dict[str, str], log_path: Path, init_options: dict[str, Any]) -> Editor:
        client = LanguageClient("flywheel-simulate", "0.1")
        # The server's news about the backend and languages: read from flywheel/status when needed.
        client.feature(DID_CHANGE_STATUS)(lambda params: None)
        await client.start_io(sys.executable, "-m", "lsp_server", env=env)
        # pygls pipes the server's stderr; unread, a chatty server would block on a full pipe.
        log_task = asyncio.create_task(_copy_stream(client._server.stderr, log_path))
        await client.initialize_async(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(), initialization_options=init_options
            )
        )
        client.initialized(types.InitializedParams())
        return cls(client, log_task)

    # -- documents ---------------------------------------------------------------------------

    def open(self, uri: str, text: str = "") -> Document:
        document = Document(uri, text)
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
            )
        )
        return document

    def replace(self, document: Document, start: int, end: int, text: str) -> None:
        """Replace characters [start, end) with `text`: one incremental didChange."""
        change = types.TextDocumentContentChangePartial(
            range=types.Range(start=position(document.text, start), end=position(document.text, end)),
            text=text,
        )
        document.text = document.text[:start] + text + document.text[end:]
        document.version += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(
                    uri=document.uri, version=document.version
                ),
                content_changes=[change],
            )
        )

    def insert(self, document: Document, offset: int, text: str) -> None:
        self.replace(document, offset, offset, text)

    def close(self, document: Document) -> None:
        self.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=document.uri))
        )

    # -- completions -------------------------------------------------------------------------

    async def suggest(self, document: Document, offset: int) -> Suggestion | None:
        """Ask for an inline completion at `offset` as an editor does while typing; None: nothing."""
        result = await self.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=document.uri),
                position=position(document.text, offset),
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic
                ),
            )
        )
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        if not items or not isinstance(items[0].insert_text, str) or not items[0].insert_text:
            return None
        item = items[0]
        if item.command is None or not item.command.arguments:
            return None
        # A typed-ahead answer's range starts where the suggestion began (on the cursor's line).
        cursor = position(document.text, offset)
        units = cursor.character - item.range.start.character if item.range is not None else 0
        typed = item.insert_text[: code_points_for_units(item.insert_text, max(units, 0))]
        rest = item.insert_text[len(typed) :]
        if not rest:
            return None
        return Suggestion(str(item.command.arguments[0]), rest, item.command, typed)

    def shown(self, suggestion: Suggestion) -> None:
        self.client.protocol.notify(DID_SHOW, {"completionId": suggestion.completion_id})

    def dismiss(self, suggestion: Suggestion) -> None:
        self.client.protocol.notify(DID_REJECT, {"completionId": suggestion.completion_id})

    async def accept(self, document: Document, offset: int, suggestion: Suggestion) -> None:
        """Insert the suggestion at `offset`, then run the item's command (LSP 3.18)."""
        self.insert(document, offset, suggestion.text)
        await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=ACCEPT_COMMAND, arguments=suggestion.command.arguments)
        )

    def accept_words(self, document: Document, offset: int, suggestion: Suggestion, length: int) -> None:
        """Accept the suggestion's first `length` characters word by word, as an editor's
        accept-next-word does: each step inserts one word and reports the growing total."""
        accepted = 0
        for end in word_steps(suggestion.text[:length]):
            self.insert(document, offset + accepted, suggestion.text[accepted:end])
            accepted = end
            self.client.protocol.notify(
                DID_PARTIALLY_ACCEPT,
                {
                    "completionId": suggestion.completion_id,
                    "acceptedLength": utf16_units(suggestion.typed + suggestion.text[:accepted]),
                },
            )

    async def flush(self) -> int:
        """Deliver the server's queued events now; returns how many are still waiting."""
        answer = await self.client.protocol.send_request_async(FLUSH_REQUEST, {})
        fields = answer if isinstance(answer, dict) else answer._asdict()
        return int(fields.get("pending", 0))

    async def drain(self, tries: int = 5) -> None:
        """Flush until nothing waits, a few tries apart (the backend may be busy)."""
        for _ in range(tries):
            if await self.flush() == 0:
                return
            await asyncio.sleep(0.5)

    def configure(self, settings: dict[str, Any]) -> None:
        """Change client options mid-session, as an editor does when its settings change."""
        self.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.shutdown_async(None), 30)
            self.client.exit(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.stop(), 15)
        server = self.client._server
        if server is not None and server.returncode is None:
            server.kill()
        self._log_task.cancel()


async def _copy_stream(stream: asyncio.StreamReader | None, path: Path) -> None:
    if stream is None:
        return
    with open(path, "ab") as log:
        while line := await stream.readline():
            log.write(line)
            log.flush()
