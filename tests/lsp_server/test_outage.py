"""A backend outage and a language-server restart lose no feedback and duplicate none.

Real processes: the backend (`flywheel backend`, tiny model, SQLite file) and the language server
over stdio. The backend stops mid-session; the user goes on typing and accepting; the language
server restarts on the same state dir; the backend comes back on the same data dir. Every event
each completion's life produced is then in the backend's events table, once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import restart_backend, start_backend, stop_backend
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from core.local_tokens import CLIENT, read_token

DOCUMENT = (
    "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n"
    "        data = \n    path = os.\n\n"
)
# Where the two suggestions are asked: mid-line, where a completion is the rest of one line.
FIRST, SECOND = (5, 15), (6, 14)


async def start_lsp(url: str, state: Path, token: str) -> LanguageClient:
    client = await ClientServerConfig(server_command=[sys.executable, "-m", "lsp_server"]).start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options={
                "backendUrl": url,
                "token": token,
                "stateDir": str(state),
                # Nothing timed happens during the test: what is measured is measured at shutdown.
                "survivalDelaysS": [600],
                "rewriteWindowS": 600,
                "flushIntervalS": 0.1,
                "requestTimeoutS": 5,
            },
        )
    )
    return client


async def ask(client: LanguageClient, uri: str, line: int, char: int, invoked: bool = True) -> Any:
    trigger = types.InlineCompletionTriggerKind
    kind = trigger.Invoked if invoked else trigger.Automatic
    answer = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=char),
            context=types.InlineCompletionContext(trigger_kind=kind),
        )
    )
    return answer.items[0] if answer.items else None


async def suggestion(client: LanguageClient, uri: str, line: int, char: int, served: list[str]) -> Any:
    """Asks until the sampling policy proposes two characters or more (each ask is a new one)."""
    for _ in range(30):
        item = await ask(client, uri, line, char)
        if item is not None:
            served.append(item.command.arguments[0])
            # One line only, so the text can be typed at the spot as one edit.
            if len(item.insert_text) >= 2 and "\n" not in item.insert_text:
                return item
    raise AssertionError("the model never proposed a completion")


class Editor:
    def __init__(self, client: LanguageClient, uri: str) -> None:
        self.client, self.uri, self.version = client, uri, 1
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=DOCUMENT)
            )
        )

    def insert(self, line: int, char: int, text: str) -> None:
        self.version += 1
        at = types.Position(line=line, character=char)
        change = types.TextDocumentContentChangePartial(range=types.Range(at, at), text=text)
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                content_changes=[change],
            )
        )

    async def accept(self, cid: str) -> None:
        await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="flywheel.accept", arguments=[cid])
        )


async def status(client: LanguageClient, method: str = "flywheel/status") -> dict[str, Any]:
    answer = await client.protocol.send_request_async(method, {})
    return answer if isinstance(answer, dict) else answer._asdict()


def stored(data_dir: Path, ids: list[str]) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data_dir / "flywheel.sqlite3") as db:
        marks = ",".join("?" * len(ids))
        return db.execute(
            f"SELECT event_id, completion_id, kind FROM events WHERE completion_id IN ({marks})", ids
        ).fetchall()


async def test_outage_and_restart_lose_nothing_and_duplicate_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = start_backend(tiny_model_dir, tmp_path / "data")
    state = tmp_path / "state"
    uri = (tmp_path / "a.py").as_uri()
    served: list[str] = []
    try:
        client = await start_lsp(backend.url, state, read_token(backend.data_dir, CLIENT))
        editor = Editor(client, uri)
        # Before the outage: one suggestion accepted (its first events delivered), one on screen.
        first = await suggestion(client, uri, *FIRST, served)
        editor.insert(*FIRST, first.insert_text)
        await editor.accept(first.command.arguments[0])
        assert (await status(client, "flywheel/flush"))["pending"] == 0
        second = await suggestion(client, uri, *SECOND, served)
        cid = second.command.arguments[0]

        stop_backend(backend)
        # The user goes on: types the first character of the suggestion on screen; the rest is
        # answered from it without the backend, then accepted; the first one is edited.
        editor.insert(*SECOND, second.insert_text[0])
        rest = await ask(client, uri, SECOND[0], SECOND[1] + 1, invoked=False)
        assert rest is not None and rest.command.arguments[0] == cid
        # The whole suggestion again, over the typed character: the editor inserts what follows it.
        assert rest.insert_text == second.insert_text
        assert (rest.range.start, rest.range.end) == (
            types.Position(*SECOND),
            types.Position(SECOND[0], SECOND[1] + 1),
        )
        editor.insert(SECOND[0], SECOND[1] + 1, rest.insert_text[1:])
        await editor.accept(cid)
        editor.insert(*FIRST, "x")
        began = time.monotonic()
        assert await ask(client, uri, 7, 0) is None  # no backend: no item, quickly
        assert time.monotonic() - began < 3.0
        assert (await status(client, "flywheel/flush"))["pending"] > 0
        await client.shutdown_session()  # measures what is left; the backend is still down

        client = await start_lsp(backend.url, state, read_token(backend.data_dir, CLIENT))
        left = (await status(client))["outbox_pending"]
        assert left > 0
        backend = restart_backend(backend)
        async with asyncio.timeout(30):
            while (await status(client, "flywheel/flush"))["pending"]:
                await asyncio.sleep(0.2)
        after = await status(client)
        assert (after["events_delivered"], after["events_refused"]) == (left, 0)
        await client.shutdown_session()
    finally:
        stop_backend(backend)

    rows = stored(backend.data_dir, served)
    assert len({event_id for event_id, _, _ in rows}) == len(rows)
    kinds: dict[str, Counter[str]] = {c: Counter() for c in served}
    for _, completion_id, kind in rows:
        kinds[completion_id][kind] += 1
    accepted = Counter(["shown", "accepted", "survival"])
    replaced = Counter(["shown", "ignored", "rewrite"])  # superseded by the next ask
    expected = {c: replaced for c in served}
    expected[first.command.arguments[0]] = accepted
    expected[cid] = accepted
    assert kinds == expected
