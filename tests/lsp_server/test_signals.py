"""Over real stdio: our clients' notifications, the typed-ahead cache, cancel-previous and
`$/cancelRequest`, a slow backend, secrets, and bad input that must not take the server down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import test_server
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pytest_lsp import LanguageClient
from test_server import (
    SUGGESTION,
    WireBackend,
    complete,
    insert,
    open_document,
    request,
    start,
    wait_for_events,
)

# The fixtures: a real language server over stdio, and a backend speaking the wire contract.
client = test_server.client
backend = test_server.backend


BAD_PARTIAL = {"completionId": "c", "acceptedLength": -1}


def events_of(backend: WireBackend, cid: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in backend.events.values() if e["completion_id"] == cid and e["kind"] == kind]


async def test_show_partial_and_reject_notifications_from_our_clients(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=backend.url, reportsShown=True, flushIntervalS=0.05, debounceMs=0)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, "def add(a, b):\n    \n")
    cid = (await complete(client, uri, 1, 4)).items[0].command.arguments[0]
    # The client says when it really showed it, then accepts the first word ("return").
    client.protocol.notify("flywheel/didShowCompletion", {"completionId": cid})
    partial = {"completionId": cid, "acceptedLength": 6}
    client.protocol.notify("flywheel/didPartiallyAcceptCompletion", partial)
    insert(client, uri, 2, 1, 4, "return")
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    await wait_for_events(client, backend, cid, ["shown", "partially_accepted", "survival"])
    assert events_of(backend, cid, "partially_accepted")[0]["accepted_chars"] == 6
    survival = events_of(backend, cid, "survival")[0]
    assert (survival["text"], survival["final"]) == ("return", True)
    assert survival["similarity"] == pytest.approx(0.5)

    # Dismissed: rejected, then the rewrite written at the spot, last.
    open_document(client, (ws / "b.py").as_uri(), "x = \n")
    second = (await complete(client, (ws / "b.py").as_uri(), 0, 4)).items[0].command.arguments[0]
    client.protocol.notify("flywheel/didShowCompletion", {"completionId": second})
    client.protocol.notify("flywheel/didRejectCompletion", {"completionId": second})
    insert(client, (ws / "b.py").as_uri(), 2, 0, 4, "42")
    await request(client, "flywheel/flush")
    await client.shutdown_session()
    assert backend.kinds(second) == ["shown", "rejected", "rewrite"]
    assert events_of(backend, second, "rewrite")[0]["text"] == "42"


async def test_typing_ahead_is_answered_from_the_suggestion_without_a_backend_call(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=backend.url, debounceMs=0, flushIntervalS=0.05)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, "def add(a, b):\n    \n")
    first = (await complete(client, uri, 1, 4)).items[0]
    asked = len(backend.completions)
    insert(client, uri, 2, 1, 4, "ret")
    rest = (await complete(client, uri, 1, 7)).items[0]
    assert len(backend.completions) == asked
    # The whole suggestion, over a range from where it began to the cursor: the client needs no
    # memory of the first answer.
    assert rest.insert_text == SUGGESTION
    assert rest.range == span(1, 4, 1, 7)
    assert rest.command.arguments == first.command.arguments
    # Accepted as an LSP client does it: the item's range replaced by its text.
    replace(client, uri, 3, rest.range, rest.insert_text)
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="flywheel.accept", arguments=rest.command.arguments)
    )
    await wait_for_events(client, backend, first.command.arguments[0], ["shown", "accepted"])
    assert (await request(client, "flywheel/status"))["cache_answers"] == 1
    close(client, uri)
    await wait_for_events(client, backend, first.command.arguments[0], ["shown", "accepted", "survival"])
    survival = events_of(backend, first.command.arguments[0], "survival")[0]
    assert (survival["text"], survival["similarity"]) == (SUGGESTION, 1.0)


async def test_a_partial_acceptance_after_typing_ahead_counts_from_the_answer_it_was_made_in(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=backend.url, reportsShown=True, debounceMs=0, flushIntervalS=0.05)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, "def add(a, b):\n    \n")
    cid = (await complete(client, uri, 1, 4)).items[0].command.arguments[0]
    client.protocol.notify("flywheel/didShowCompletion", {"completionId": cid})
    insert(client, uri, 2, 1, 4, "ret")
    rest = (await complete(client, uri, 1, 7)).items[0]
    # Accept-next-word: the editor completes "return"; the client reads its item's text from the
    # range's start to the cursor, 6 units.
    insert(client, uri, 3, 1, 7, "urn")
    client.protocol.notify(
        "flywheel/didPartiallyAcceptCompletion", {"completionId": cid, "acceptedLength": 6}
    )
    await wait_for_events(client, backend, cid, ["shown", "partially_accepted"])
    assert rest.insert_text[:6] == "return"
    assert events_of(backend, cid, "partially_accepted")[0]["accepted_chars"] == 6


async def test_typing_ahead_past_a_line_break_answers_from_the_start_of_the_cursors_line(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    backend.text = "if a:\n        return b"
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=backend.url, reportsShown=True, debounceMs=0, flushIntervalS=0.05)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, "def f(a, b):\n    \n")
    cid = (await complete(client, uri, 1, 4)).items[0].command.arguments[0]
    client.protocol.notify("flywheel/didShowCompletion", {"completionId": cid})
    insert(client, uri, 2, 1, 4, "if a:")
    insert(client, uri, 3, 1, 9, "\n        r")
    rest = (await complete(client, uri, 2, 9)).items[0]
    # LSP 3.18 and VS Code want the range on one line: it starts at the cursor's line.
    assert rest.command.arguments[0] == cid
    assert rest.range == span(2, 0, 2, 9)
    assert rest.insert_text == "        return b"
    # A word accepted from this item: 14 units of its text; the suggestion's first 20 characters.
    insert(client, uri, 4, 2, 9, "eturn")
    client.protocol.notify(
        "flywheel/didPartiallyAcceptCompletion", {"completionId": cid, "acceptedLength": 14}
    )
    await wait_for_events(client, backend, cid, ["shown", "partially_accepted"])
    assert events_of(backend, cid, "partially_accepted")[0]["accepted_chars"] == 20

    # The rest accepted as an LSP client does it: the range replaced by the item's text.
    again = (await complete(client, uri, 2, 14)).items[0]
    assert (again.range, again.insert_text) == (span(2, 0, 2, 14), "        return b")
    replace(client, uri, 5, again.range, again.insert_text)
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="flywheel.accept", arguments=[cid])
    )
    close(client, uri)
    await wait_for_events(client, backend, cid, ["shown", "partially_accepted", "accepted", "survival"])
    survival = events_of(backend, cid, "survival")[0]
    assert (survival["text"], survival["similarity"]) == (backend.text, 1.0)


def span(start_line: int, start_character: int, end_line: int, end_character: int) -> types.Range:
    return types.Range(
        start=types.Position(line=start_line, character=start_character),
        end=types.Position(line=end_line, character=end_character),
    )


def replace(client: LanguageClient, uri: str, version: int, where: types.Range, text: str) -> None:
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=where, text=text)],
        )
    )


def close(client: LanguageClient, uri: str) -> None:
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )


async def test_a_slow_backend_costs_the_editor_no_more_than_the_timeout_and_shows_no_error(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=backend.url, debounceMs=0)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, "x = \ny = \n")
    assert len((await complete(client, uri, 0, 4)).items) == 1  # warm: the first call imports httpx
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"flywheel": {"requestTimeoutS": 0.3}})
    )
    backend.delay = 3.0
    began = time.monotonic()
    assert (await complete(client, uri, 1, 4)).items == ()
    assert time.monotonic() - began < 1.0
    assert client.messages == []  # no window/showMessage popups
    assert (await request(client, "flywheel/status"))["backend_ok"] is False


async def test_a_newer_request_and_cancel_request_end_the_older_one(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    backend.delay = 0.5
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=backend.url, debounceMs=0)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, "x = \ny = \n")
    older = asyncio.ensure_future(complete(client, uri, 0, 4))
    await asyncio.sleep(0.2)
    newer = await complete(client, uri, 1, 4)
    assert (await older).items == ()  # cancel-previous: only the latest request gets an item
    assert len(newer.items) == 1

    # $/cancelRequest: the answer is the cancellation error LSP defines, and the server goes on.
    pending = client.protocol.send_request_async(
        types.TEXT_DOCUMENT_INLINE_COMPLETION,
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=0, character=4),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        ),
    )
    answer = asyncio.ensure_future(pending)
    await asyncio.sleep(0.2)
    (msg_id,) = [i for i in client.protocol._request_futures if i != "status"]
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
    with pytest.raises(Exception, match="cancel"):
        await answer
    assert (await request(client, "flywheel/status"))["ready"] is True
    backend.delay = 0.0
    assert len((await complete(client, uri, 0, 4)).items) == 1


async def test_debounce_keeps_a_burst_of_requests_to_one_backend_call(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    ws = tmp_path / "ws"
    # Long enough that the five, sent at once, reach the server within it on a loaded box too
    # (at 150 ms the first was answered alone once, at a load average of 8).
    await start(client, ws, backendUrl=backend.url, debounceMs=1000)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, "x = \n")
    answers = await asyncio.gather(*(complete(client, uri, 0, 4) for _ in range(5)))
    assert [len(a.items) for a in answers] == [0, 0, 0, 0, 1]
    assert len(backend.completions) == 1


async def test_secrets_are_redacted_from_the_context_and_from_event_text(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=backend.url, debounceMs=0, flushIntervalS=0.05)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, 'API_TOKEN = "tok-123456"\n\nx = \n\npassword = "hunter2"\n')
    cid = (await complete(client, uri, 2, 4)).items[0].command.arguments[0]
    sent = backend.completions[-1].context
    assert sent.prefix == 'API_TOKEN = "<redacted>"\n\nx = '
    assert sent.suffix == '\n\npassword = "<redacted>"\n'
    insert(client, uri, 2, 2, 4, SUGGESTION)
    insert(client, uri, 3, 2, 6, 'secret="s3"')  # edited inside the accepted range: "return secret="s3"..."
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    await wait_for_events(client, backend, cid, ["shown", "accepted", "survival"])
    assert events_of(backend, cid, "survival")[0]["text"] == "re" + 'secret="<redacted>"' + "turn a + b"


async def test_bad_client_input_gets_an_error_or_nothing_and_the_server_stays_up(
    client: LanguageClient, tmp_path: Path, backend: WireBackend
) -> None:
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=backend.url, debounceMs=0, flushIntervalS=0.05)
    uri = (ws / "a.py").as_uri()
    open_document(client, uri, "x = \n")
    # Malformed notifications and commands: logged and dropped.
    client.protocol.notify("flywheel/didShowCompletion", {"completionId": 7})
    client.protocol.notify("flywheel/didPartiallyAcceptCompletion", BAD_PARTIAL)
    client.protocol.notify("flywheel/didRejectCompletion", [1, 2])
    client.protocol.notify("flywheel/didRejectCompletion", {"completionId": "never-served"})
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="flywheel.accept", arguments=[{"not": "an id"}])
    )
    # A change to a document never opened, and a stale (replayed) change: ignored.
    insert(client, (ws / "unknown.py").as_uri(), 2, 0, 0, "zzz")
    insert(client, uri, 1, 0, 0, "STALE")
    # Malformed request params: an LSP error answer, not a crash.
    answer = asyncio.get_running_loop().create_future()
    client.protocol._request_futures["malformed"] = answer
    client.protocol._send_data(
        {
            "jsonrpc": "2.0",
            "id": "malformed",
            "method": types.TEXT_DOCUMENT_INLINE_COMPLETION,
            "params": {"textDocument": {"uri": uri}, "position": "nowhere"},
        }
    )
    with pytest.raises(JsonRpcInvalidParams):
        await asyncio.wait_for(answer, 5)
    # Out-of-range positions and unknown documents: an empty answer.
    assert (await complete(client, uri, 0, 99)).items == ()
    assert (await complete(client, uri, 9, 0)).items == ()
    assert (await complete(client, (ws / "unknown.py").as_uri(), 0, 0)).items == ()
    status = await request(client, "flywheel/status")
    assert status["ready"] is True and status["stale_changes"] == 1
    # And it still works: the stale change was not applied.
    answer = await complete(client, uri, 0, 4)
    assert backend.completions[-1].context.prefix == "x = "
    assert len(answer.items) == 1
    assert client.messages == []
