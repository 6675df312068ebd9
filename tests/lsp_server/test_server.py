"""The language server over real stdio (pytest-lsp), against a backend that speaks the wire contract.

The backend here is a small HTTP server that validates every request with `core.wire` and
answers as the contract says; the real backend's own behaviour is the end-to-end test's business.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from loopback_http import NOT_FOUND, Answer, LoopbackHTTP, json_answer
from lsprotocol import types
from pydantic import BaseModel
from pytest_lsp import ClientServerConfig, LanguageClient

from core.wire import CompleteRequest, CompleteResponse, Event, EventsRequest, EventsResponse, ModelInfo
from lsp_server.outbox import Outbox

SUGGESTION = "return a + b"


class WireBackend:
    """Serves /v1/complete and /v1/events on loopback, keeping what it received."""

    def __init__(self) -> None:
        self.text = SUGGESTION
        # Seconds each completion takes: a slow backend.
        self.delay = 0.0
        self.completions: list[CompleteRequest] = []
        self.events: dict[str, dict[str, Any]] = {}
        self.authorizations: list[str | None] = []
        self.languages = ["python"]
        self.down = False
        self.http = LoopbackHTTP(self.answer)
        self.url = self.http.url

    def answer(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        if self.down:
            return None  # the connection closes without an answer
        if method == "GET":
            if path == "/v1/model":
                self.authorizations.append(headers.get("Authorization"))
                return json_answer(self.model_info().model_dump_json().encode())
            if path != "/healthz":
                return NOT_FOUND
            health = {"status": "ok", "live_version": "v-live", "canary_version": None}
            return json_answer(json.dumps(health).encode())
        self.authorizations.append(headers.get("Authorization"))
        if path == "/v1/complete":
            answer: BaseModel = self.complete(CompleteRequest.model_validate_json(body))
        elif path == "/v1/events":
            answer = self.store(EventsRequest.model_validate_json(body))
        else:
            return NOT_FOUND
        return json_answer(answer.model_dump_json().encode())

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            base_model="tiny",
            live_version="v-live",
            fim="flywheel",
            temperature=0.7,
            languages=self.languages,
        )

    def complete(self, request: CompleteRequest) -> CompleteResponse:
        self.completions.append(request)
        time.sleep(self.delay)
        return CompleteResponse(
            completion_id=uuid.uuid4().hex,
            text=self.text,
            model_version="v-test",
            token_logprobs=[-0.5],
            latency_ms=1.0,
        )

    def store(self, request: EventsRequest) -> EventsResponse:
        duplicates = 0
        for raw in request.events:
            event = Event.model_validate(raw)
            if event.event_id in self.events:
                duplicates += 1
            self.events[event.event_id] = raw
        return EventsResponse(stored=len(request.events) - duplicates, duplicates=duplicates, refused=[])

    def kinds(self, completion_id: str) -> list[str]:
        events = sorted(
            (e for e in self.events.values() if e["completion_id"] == completion_id),
            key=lambda e: e["client_ts"],
        )
        return [e["kind"] for e in events]


@pytest.fixture
def backend() -> Iterator[WireBackend]:
    server = WireBackend()
    yield server
    server.http.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp_server"]))
async def client(lsp_client: LanguageClient) -> AsyncIterator[LanguageClient]:
    yield lsp_client
    if not shut_down(lsp_client):
        await lsp_client.shutdown_session()


def shut_down(client: LanguageClient) -> bool:
    return client._server is not None and client._server.returncode is not None


async def start(client: LanguageClient, workspace: Path, **options: Any) -> types.InitializeResult:
    workspace.mkdir(exist_ok=True)
    options.setdefault("stateDir", str(workspace.parent / "state"))
    return await client.initialize_session(
        types.InitializeParams(
            capabilities=pytest_lsp.client_capabilities("visual-studio-code"),
            root_uri=workspace.as_uri(),
            initialization_options=options,
        )
    )


def open_document(client: LanguageClient, uri: str, text: str) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        )
    )


def insert(client: LanguageClient, uri: str, version: int, line: int, character: int, text: str) -> None:
    position = types.Position(line=line, character=character)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(start=position, end=position), text=text
                )
            ],
        )
    )


async def complete(client: LanguageClient, uri: str, line: int, character: int) -> Any:
    return await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
    )


async def request(client: LanguageClient, method: str) -> dict[str, Any]:
    answer = await client.protocol.send_request_async(method, {})
    # pygls hands untyped results back as namedtuples.
    return answer if isinstance(answer, dict) else answer._asdict()


async def wait_for_events(client: LanguageClient, backend: WireBackend, cid: str, kinds: list[str]) -> None:
    async with asyncio.timeout(10):
        while backend.kinds(cid) != kinds:
            await request(client, "flywheel/flush")
            await asyncio.sleep(0.05)


async def test_capabilities_announce_inline_completion_and_the_accept_command(
    client: LanguageClient, tmp_path: Path
) -> None:
    result = await start(client, tmp_path / "ws", backendUrl=closed_port_url())
    capabilities = result.capabilities
    assert capabilities.inline_completion_provider is not None
    assert capabilities.execute_command_provider is not None
    assert "flywheel.accept" in capabilities.execute_command_provider.commands
    sync = capabilities.text_document_sync
    assert isinstance(sync, types.TextDocumentSyncOptions)
    assert sync.change == types.TextDocumentSyncKind.Incremental


async def test_status_asks_the_backend_before_any_completion(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    # An editor's empty text field ("") leaves the setting alone instead of breaking the URL.
    await start(client, tmp_path / "ws", backendUrl=backend.url, token="")
    status = await request(client, "flywheel/status")
    assert (status["backend_ok"], status["model_version"]) == (True, "v-live")
    assert status["backend_url"] == backend.url
    assert backend.completions == []


async def test_unreachable_backend_answers_empty_quickly_and_the_server_stays_up(
    client: LanguageClient, tmp_path: Path
) -> None:
    await start(client, tmp_path / "ws", backendUrl=closed_port_url())
    uri = (tmp_path / "ws" / "a.py").as_uri()
    open_document(client, uri, "def add(a, b):\n    ")
    for _ in range(2):
        began = time.monotonic()
        answer = await complete(client, uri, 1, 4)
        assert time.monotonic() - began < 2.0
        assert answer is not None and len(answer.items) == 0
    # Bad input: a document never opened, a position outside the text.
    assert (await complete(client, (tmp_path / "ws" / "b.py").as_uri(), 0, 0)).items == ()
    assert (await complete(client, uri, 7, 0)).items == ()
    assert (await complete(client, uri, 0, 99)).items == ()
    status = await request(client, "flywheel/status")
    assert status["ready"] is True
    assert status["backend_ok"] is False
    assert status["heavy_modules"] == []


async def test_a_completion_accepted_in_the_editor_reports_its_whole_life(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    workspace = tmp_path / "ws"
    await start(
        client,
        workspace,
        backendUrl=backend.url,
        token="s3cret",
        survivalDelaysS=[0.2, 0.4],
        flushIntervalS=0.05,
    )
    uri = (workspace / "pkg" / "a.py").as_uri()
    open_document(client, uri, "def add(a, b):\n    \n")
    answer = await complete(client, uri, 1, 4)
    assert len(answer.items) == 1
    item = answer.items[0]
    assert item.insert_text == SUGGESTION
    assert item.range == types.Range(start=types.Position(1, 4), end=types.Position(1, 4))
    assert item.command.command == "flywheel.accept"
    cid = item.command.arguments[0]

    sent = backend.completions[-1]
    assert (sent.context.prefix, sent.context.suffix) == ("def add(a, b):\n    ", "\n")
    assert (sent.context.path, sent.context.language) == ("pkg/a.py", "python")
    # The pseudonym is made once and kept in the state dir.
    assert sent.user_id == (tmp_path / "state" / "user_id").read_text().strip()
    assert backend.authorizations[-1] == "Bearer s3cret"

    # What VS Code does on Tab: insert the text, then run the item's command.
    insert(client, uri, 2, 1, 4, SUGGESTION)
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="flywheel.accept", arguments=[cid])
    )
    await wait_for_events(client, backend, cid, ["shown", "accepted", "survival", "survival"])
    survivals = [e for e in backend.events.values() if e["kind"] == "survival"]
    assert sorted((e["delay_s"], e["final"]) for e in survivals) == [(0.2, False), (0.4, True)]
    assert all(e["text"] == SUGGESTION and e["similarity"] == 1.0 for e in survivals)

    # A second suggestion, typed over, then the document closes.
    backend.text = "pass"
    open_document(client, (workspace / "b.py").as_uri(), "x = 1\n")
    second = (await complete(client, (workspace / "b.py").as_uri(), 1, 0)).items[0]
    cid2 = second.command.arguments[0]
    insert(client, (workspace / "b.py").as_uri(), 2, 1, 0, "y")
    await wait_for_events(client, backend, cid2, ["shown", "ignored"])
    ignored = next(
        e for e in backend.events.values() if e["completion_id"] == cid2 and e["kind"] == "ignored"
    )
    # The rewrite, collected at its spot until the window ends or the document closes, is last.
    assert (ignored["reason"], ignored["final"]) == ("typed_over", False)
    b_uri = (workspace / "b.py").as_uri()
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=b_uri))
    )
    await wait_for_events(client, backend, cid2, ["shown", "ignored", "rewrite"])
    rewrite = next(
        e for e in backend.events.values() if e["completion_id"] == cid2 and e["kind"] == "rewrite"
    )
    assert (rewrite["text"], rewrite["final"]) == ("y", True)

    status = await request(client, "flywheel/status")
    assert status["backend_ok"] is True
    assert status["model_version"] == "v-test"
    assert status["outbox_pending"] == 0
    assert status["heavy_modules"] == []


async def test_telemetry_off_sends_no_events_until_switched_on(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    workspace = tmp_path / "ws"
    await start(client, workspace, backendUrl=backend.url, telemetry=False, flushIntervalS=0.05)
    uri = (workspace / "a.py").as_uri()
    # Columns are UTF-16 code units: the emoji counts two, "é" one.
    open_document(client, uri, "x = '😀é'; y = \n")
    first = (await complete(client, uri, 0, 15)).items[0]
    assert first.insert_text == SUGGESTION  # completions still work
    assert backend.completions[-1].context.prefix == "x = '😀é'; y = "
    assert backend.completions[-1].user_id == "anonymous"
    insert(client, uri, 2, 0, 15, SUGGESTION)
    assert (await request(client, "flywheel/flush"))["pending"] == 0
    assert backend.events == {}

    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"flywheel": {"telemetry": True}})
    )
    second = (await complete(client, uri, 0, 15 + len(SUGGESTION))).items[0]
    assert backend.completions[-1].context.suffix == "\n"
    cid = second.command.arguments[0]
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    await wait_for_events(client, backend, cid, ["shown", "ignored"])
    assert {e["completion_id"] for e in backend.events.values()} == {cid}


async def test_evaluation_marks_the_requests_while_it_is_on(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    """An editor set for evaluation (flywheel simulate's held-out rounds) marks what it asks for,
    so the backend never trains on it; switched off, its requests are ordinary again."""
    workspace = tmp_path / "ws"
    await start(client, workspace, backendUrl=backend.url, evaluation=True)
    first, second = (workspace / "a.py").as_uri(), (workspace / "b.py").as_uri()
    open_document(client, first, "x = \n")
    await complete(client, first, 0, 4)
    assert backend.completions[-1].evaluation is True

    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"flywheel": {"evaluation": False}})
    )
    open_document(client, second, "y = \n")
    await complete(client, second, 0, 4)
    assert [request.evaluation for request in backend.completions] == [True, False]


async def test_shutdown_measures_what_is_left_and_delivers_it(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    workspace = tmp_path / "ws"
    await start(client, workspace, backendUrl=backend.url, flushIntervalS=60.0)
    uri = (workspace / "a.py").as_uri()
    open_document(client, uri, "def add(a, b):\n    \n")
    cid = (await complete(client, uri, 1, 4)).items[0].command.arguments[0]
    insert(client, uri, 2, 1, 4, SUGGESTION)  # accepted; its first survival check is 30 s away
    # The periodic send is a minute away too: only the shutdown flush can deliver these.
    await client.shutdown_session()
    assert shut_down(client)
    assert backend.kinds(cid) == ["shown", "accepted", "survival"]
    last = next(e for e in backend.events.values() if e["kind"] == "survival")
    assert (last["final"], last["text"]) == (True, SUGGESTION)


async def test_events_left_by_an_earlier_run_are_sent_on_start(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    state = tmp_path / "state"
    outbox = Outbox(state / "outbox.sqlite3")
    left = [
        {"event_id": uuid.uuid4().hex, "completion_id": "old", "kind": "shown", "client_ts": 1.0 + i}
        for i in range(3)
    ]
    for event in left:
        outbox.add(event)
    outbox.close()
    await start(client, tmp_path / "ws", backendUrl=backend.url, flushIntervalS=0.05)
    await wait_for_events(client, backend, "old", ["shown"] * 3)
    assert (await request(client, "flywheel/status"))["outbox_pending"] == 0


async def test_each_request_tells_the_show_policy_the_documents_recent_outcomes(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    """Numbers only: how many of this document's recent suggestions were shown and accepted, and
    how long since it last changed; an evaluation's showRule goes with it, and only under one."""
    workspace = tmp_path / "ws"
    await start(client, workspace, backendUrl=backend.url, evaluation=True, showRule="floors")
    uri = (workspace / "a.py").as_uri()
    open_document(client, uri, "def add(a, b):\n    \n")
    cid = (await complete(client, uri, 1, 4)).items[0].command.arguments[0]
    first = backend.completions[-1]
    assert first.signals is not None and first.show_rule == "floors"
    assert (first.signals.recent_shown, first.signals.recent_accepted) == (0, 0)
    assert first.signals.since_keystroke_ms is None  # not changed since it was opened

    insert(client, uri, 2, 1, 4, SUGGESTION)
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="flywheel.accept", arguments=[cid])
    )
    changed = time.monotonic()
    await complete(client, uri, 1, 4 + len(SUGGESTION))
    second = backend.completions[-1].signals
    assert second is not None
    assert (second.recent_shown, second.recent_accepted) == (1, 1)
    assert second.since_keystroke_ms is not None
    assert 0 <= second.since_keystroke_ms <= (time.monotonic() - changed) * 1000 + 2000

    # Another document has its own outcomes; off evaluation, the version's own rule.
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"flywheel": {"evaluation": False}})
    )
    open_document(client, (workspace / "b.py").as_uri(), "y = \n")
    await complete(client, (workspace / "b.py").as_uri(), 0, 4)
    other = backend.completions[-1]
    assert other.show_rule == "version" and other.signals is not None
    assert (other.signals.recent_shown, other.signals.recent_accepted) == (0, 0)
