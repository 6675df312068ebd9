"""A language server killed with SIGKILL mid-session loses none of the events it had queued.

Real processes: the backend (`flywheel backend`, tiny model, SQLite file, its client token) and the
language server over stdio, which reaches the backend through a forwarding proxy on loopback that
keeps the event ids of every batch the backend accepted. The backend becomes unreachable (stopped,
or the proxy starts asking for its own credentials: 407); the user goes on accepting, asking and
closing the file, so events queue in the outbox while the sender retries; the language server is
killed (no shutdown, no flush); a new one starts on the same state dir; the backend is reachable
again. Every queued event then reaches the backend once, and is stored once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from conftest import restart_backend, start_backend, stop_backend
from loopback_http import Answer, LoopbackHTTP
from lsprotocol import types
from test_outage import FIRST, SECOND, Editor, ask, start_lsp, status, suggestion

from core.local_tokens import CLIENT, read_token
from lsp_server.session import OUTBOX_FILE

FORWARDED_HEADERS = ("Authorization", "Content-Type")


class Proxy:
    """Forwards to the backend (502 when nothing answers there), or refuses everything with a 407
    while `refusing`; keeps the event ids of each events batch the backend answered 200."""

    def __init__(self, backend_url: str) -> None:
        self.refusing = False
        self.events_through: Counter[str] = Counter()
        upstream = httpx.Client(base_url=backend_url, timeout=30)
        proxy = self

        def forward(method: str, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
            if proxy.refusing:
                return 407, b"<html>Proxy Authentication Required</html>", "text/html"
            sent = {k: v for k in FORWARDED_HEADERS if (v := headers.get(k)) is not None}
            try:
                answer = upstream.request(method, path, content=body, headers=sent)
            except httpx.TransportError:
                return 502, b"<html>Bad Gateway</html>", "text/html"
            if path == "/v1/events" and answer.status_code == 200:
                proxy.events_through.update(e["event_id"] for e in json.loads(body)["events"])
            return answer.status_code, answer.content, answer.headers["content-type"]

        self.http = LoopbackHTTP(forward)
        self.url = self.http.url


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    made: list[Proxy] = []
    yield made
    for proxy in made:
        proxy.http.close()


def queued(state: Path) -> list[str]:
    """The event ids in the outbox file, read from disk as the next process will."""
    with sqlite3.connect(state / OUTBOX_FILE) as db:
        return [row[0] for row in db.execute("SELECT event_id FROM events ORDER BY id")]


def stored_times(data_dir: Path, event_ids: list[str]) -> dict[str, int]:
    with sqlite3.connect(data_dir / "flywheel.sqlite3") as db:
        marks = ",".join("?" * len(event_ids))
        rows = db.execute(
            f"SELECT event_id, COUNT(*) FROM events WHERE event_id IN ({marks}) GROUP BY event_id", event_ids
        )
        return dict(rows.fetchall())


@pytest.mark.parametrize("outage", ["backend stopped", "proxy answers 407"])
async def test_a_killed_language_server_delivers_what_it_had_queued_once_after_a_restart(
    tiny_model_dir: Path, tmp_path: Path, proxies: list[Proxy], outage: str
) -> None:
    backend = start_backend(tiny_model_dir, tmp_path / "data")
    proxies.append(proxy := Proxy(backend.url))
    token = read_token(backend.data_dir, CLIENT)
    state = tmp_path / "state"
    uri = (tmp_path / "a.py").as_uri()
    served: list[str] = []
    try:
        client = await start_lsp(proxy.url, state, token)
        editor = Editor(client, uri)
        for _ in range(3):  # each replaced by the next: a rewrite to measure for each
            await suggestion(client, uri, *FIRST, served)
        second = await suggestion(client, uri, *SECOND, served)
        assert (await status(client, "flywheel/flush"))["pending"] == 0

        if outage == "backend stopped":
            stop_backend(backend)
        else:
            proxy.refusing = True
        # The user goes on: accepts the suggestion on screen, asks for another, closes the file
        # (what was followed there is measured now: the survival, the rewrites).
        editor.insert(*SECOND, second.insert_text)
        await editor.accept(second.command.arguments[0])
        assert await ask(client, uri, 7, 0) is None
        client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )
        await asyncio.sleep(0.5)  # the sender tries, and fails, a few times (flush interval 0.1 s)
        before = await status(client)
        ids = queued(state)
        assert before["outbox_pending"] == len(ids)
        assert len(ids) >= 5  # accepted, survival, and a rewrite of each of the three replaced
        assert client._server is not None
        client._server.send_signal(signal.SIGKILL)
        assert await client._server.wait() == -signal.SIGKILL
        await client.stop()
        assert queued(state) == ids  # on disk as it was: nothing lost, nothing half-written

        client = await start_lsp(proxy.url, state, token)
        assert (await status(client))["outbox_pending"] == len(ids)
        if outage == "backend stopped":
            backend = restart_backend(backend)
        else:
            proxy.refusing = False
        async with asyncio.timeout(30):
            while (await status(client, "flywheel/flush"))["pending"]:
                await asyncio.sleep(0.2)
        after = await status(client)
        await client.shutdown_session()
    finally:
        stop_backend(backend)

    # What the backend received: every queued event, once (and no event of the session twice).
    assert {event_id: proxy.events_through[event_id] for event_id in ids} == dict.fromkeys(ids, 1)
    assert set(proxy.events_through.values()) == {1}
    assert stored_times(backend.data_dir, ids) == dict.fromkeys(ids, 1)
    assert (after["events_delivered"], after["events_refused"], after["events_duplicate"]) == (len(ids), 0, 0)
    # The figure for the record (pytest -s). A kill can only lose what was not yet an event: checks
    # still waiting in the tracker's memory for files left open (none here: the file was closed).
    lost = len(ids) - after["events_delivered"]
    print(
        f"\nSIGKILL ({outage}): {len(ids)} events queued, {after['events_delivered']} delivered, {lost} lost"
    )
