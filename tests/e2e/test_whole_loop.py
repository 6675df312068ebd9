"""One completion travels the whole loop on real parts.

A real LSP client over stdio (pytest-lsp) drives `python -m lsp_server`, which calls a real backend
process on loopback (real SQLite file, a tiny model trained by this test session). The suggestion
is accepted and then edited; the episode finalizes with a reward; `flywheel trainer --once` trains
and uploads a new adapter; the next completion is served by the new version. The same journey runs
on both serving engines: the in-process one (the new version live on upload), and vLLM, a real
server on this CPU that the backend starts (the new version loaded into it, tried as a canary on
real traffic and promoted) in tests/e2e/test_vllm_loop.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import RunningBackend
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from backend.auth import hash_token, person_of
from core.local_tokens import CLIENT, read_token

DOCUMENT = "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n        data = "


async def start_client(
    backend: RunningBackend, state_dir: Path
) -> tuple[LanguageClient, types.InitializeResult]:
    config = ClientServerConfig(server_command=[sys.executable, "-m", "lsp_server"], server_env=backend.env)
    client = await config.start()
    result = await client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options={
                "backendUrl": backend.url,
                "userId": "e2e-user",
                "survivalDelaysS": [0.5],
                "flushIntervalS": 0.2,
                "stateDir": str(state_dir),
            },
        )
    )
    return client, result


async def request_suggestion(
    client: LanguageClient, uri: str, position: types.Position
) -> types.InlineCompletionItem:
    """Asks until the sampling policy proposes something (it may abstain now and then)."""
    for _ in range(20):
        result = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=position,
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            )
        )
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        if items and isinstance(items[0].insert_text, str) and len(items[0].insert_text) >= 2:
            return items[0]
    raise AssertionError("the model never proposed a completion")


def edit(
    client: LanguageClient, uri: str, version: int, start: types.Position, end: types.Position, text: str
):
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(range=types.Range(start=start, end=end), text=text)
            ],
        )
    )


async def wait_for_episode(backend: RunningBackend, completion_id: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(headers=backend.admin) as http:
        while time.monotonic() < deadline:
            response = await http.get(f"{backend.url}/v1/episodes", params={"cursor": 0})
            page = response.raise_for_status().json()
            for episode in page["episodes"]:
                if episode["completion_id"] == completion_id:
                    return episode
            await asyncio.sleep(0.2)
    raise AssertionError(f"episode {completion_id} did not finalize")


def live_version(backend: RunningBackend) -> str:
    return httpx.get(f"{backend.url}/v1/model", headers=backend.client).json()["live_version"]


def promoted_on_upload(backend: RunningBackend, trainer_output: str) -> None:
    """With no canary (the tests' share 0), the upload goes live at once."""
    assert live_version(backend) == "v1", trainer_output


async def test_completion_travels_editor_to_trainer_and_back(backend: RunningBackend, tmp_path: Path) -> None:
    await travel(backend, tmp_path, promoted_on_upload)


async def travel(
    backend: RunningBackend, tmp_path: Path, goes_live: Callable[[RunningBackend, str], None]
) -> None:
    """Editor -> backend -> episode -> trainer -> new version -> editor; `goes_live` takes the
    trainer's upload (v1) to live, or checks it went live, given the trainer's output."""
    client, initialized = await start_client(backend, tmp_path / "lsp-state")
    try:
        assert initialized.capabilities.inline_completion_provider

        uri = (tmp_path / "example.py").as_uri()
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=DOCUMENT)
            )
        )
        lines = DOCUMENT.split("\n")
        cursor = types.Position(line=len(lines) - 1, character=len(lines[-1]))
        item = await request_suggestion(client, uri, cursor)
        assert item.command is not None and item.command.command == "flywheel.accept"
        completion_id = item.command.arguments[0]
        suggestion = item.insert_text
        assert isinstance(suggestion, str) and "\n" not in suggestion

        # A person reads it first: faster acceptance is filtered by the trainer's guards as inhuman.
        await asyncio.sleep(0.3 + 0.005 * len(suggestion))
        # The editor inserts the suggestion, then runs the item's command (LSP 3.18).
        edit(client, uri, 2, cursor, cursor, suggestion)
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=item.command.command, arguments=item.command.arguments)
        )
        # The developer then rewrites the second half of what was accepted.
        keep = len(suggestion) // 2
        start = types.Position(line=cursor.line, character=cursor.character + keep)
        end = types.Position(line=cursor.line, character=cursor.character + len(suggestion))
        edit(client, uri, 3, start, end, "None  # changed")

        episode = await wait_for_episode(backend, completion_id)
        assert episode["outcome"] == "accepted"
        # Partly rewritten: worth less than a fully kept suggestion, more than a rejection.
        assert -0.25 < episode["reward"] < 0.75
        assert episode["model_version"] == "base"
        # The language server presented the client token the backend left in the shared data
        # directory, and the episode is filed under that token's person, not the editor's userId.
        assert episode["user_id"] == person_of(hash_token(read_token(backend.data_dir, CLIENT)))

        # One trainer cycle: pulls the episode, updates the adapter, uploads it; the backend swaps it in.
        trainer = subprocess.run(
            [sys.executable, "-m", "flywheel.cli", "trainer", "--once"],
            env=dict(backend.env, FLYWHEEL_BACKEND__URL=backend.url),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert trainer.returncode == 0, trainer.stdout + trainer.stderr
        await asyncio.to_thread(goes_live, backend, trainer.stdout + trainer.stderr)

        # The next completion comes from the new version.
        cursor_after = types.Position(
            line=cursor.line, character=cursor.character + keep + len("None  # changed")
        )
        edit(client, uri, 4, cursor_after, cursor_after, "\n        ")
        next_cursor = types.Position(line=cursor.line + 1, character=8)
        await request_suggestion(client, uri, next_cursor)
        answer = await client.protocol.send_request_async("flywheel/status", {})
        # pygls hands untyped results back as namedtuples.
        status = answer if isinstance(answer, dict) else answer._asdict()
        assert status["model_version"] == "v1"
        assert status["heavy_modules"] == []
    finally:
        await client.shutdown_session()
