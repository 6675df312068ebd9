"""The event outbox (SQLite) and its sender: nothing is lost, nothing is deleted unconfirmed."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from loopback_http import Answer, LoopbackHTTP

from core.wire import EventsResponse, parse_events
from lsp_server.backend_client import BackendClient, BackendError
from lsp_server.outbox import Outbox
from lsp_server.sender import Fate, OutboxSender, fate


def event(n: int = 0) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "completion_id": f"c{n}",
        "kind": "shown",
        "client_ts": 1_700_000_000.0 + n,
    }


def test_events_persist_in_order_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite3"
    outbox = Outbox(path)
    sent = [event(i) for i in range(5)]
    for e in sent:
        outbox.add(e)
    outbox.add(sent[0])  # the same event twice is stored once
    outbox.close()

    reopened = Outbox(path)
    assert reopened.pending() == 5
    rows = reopened.peek(3)
    assert [e for _, e in rows] == sent[:3]
    reopened.remove([row_id for row_id, _ in rows])
    assert [e for _, e in reopened.peek(10)] == sent[3:]
    reopened.close()
    assert Outbox(path).pending() == 2


def test_the_outbox_is_bounded_and_drops_the_oldest(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_rows=10)
    events = [event(i) for i in range(25)]
    for e in events:
        outbox.add(e)
    assert outbox.pending() == 10
    assert outbox.dropped == 15
    assert [e for _, e in outbox.peek(100)] == events[-10:]


def test_the_bound_counts_rows_other_processes_wrote(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    mine, theirs = Outbox(path, max_rows=10), Outbox(path, max_rows=10)
    for i in range(8):
        theirs.add(event(i))
    for i in range(8):
        mine.add(event(100 + i))
    assert mine.pending() == 10
    assert mine.dropped == 6


class Backend:
    """The sending side of the contract, scripted: answers, failures, and what it received."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.fail = 0
        self.refuse: set[str] = set()

    async def send(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        if self.fail:
            self.fail -= 1
            raise BackendError("connection refused")
        self.batches.append(events)
        refused = [
            {"index": i, "event_id": e["event_id"], "reason": "bad"}
            for i, e in enumerate(events)
            if e["event_id"] in self.refuse
        ]
        return {"stored": len(events) - len(refused), "duplicates": 0, "refused": refused}


async def test_sender_sends_batches_of_at_most_500_and_deletes_only_confirmed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    for i in range(1200):
        outbox.add(event(i))
    backend = Backend()
    backend.fail = 1
    sender = OutboxSender(outbox, backend.send, interval_s=1.0)
    with pytest.raises(BackendError):
        await sender.send_batch()
    assert outbox.pending() == 1200
    await sender.drain()
    assert [len(b) for b in backend.batches] == [500, 500, 200]
    assert outbox.pending() == 0
    assert sender.delivered == 1200


async def test_events_refused_by_name_are_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lsp_server.sender")
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    bad = event(1)
    outbox.add(bad)
    outbox.add(event(2))
    backend = Backend()
    backend.refuse = {bad["event_id"]}
    sender = OutboxSender(outbox, backend.send, interval_s=1.0)
    await sender.drain()
    assert outbox.pending() == 0
    assert (sender.delivered, sender.refused) == (1, 1)
    assert bad["event_id"] in caplog.text


async def test_background_loop_retries_with_backoff_until_the_backend_answers(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(event(1))
    backend = Backend()
    backend.fail = 3
    sender = OutboxSender(outbox, backend.send, interval_s=0.01, backoff_base_s=0.01, backoff_max_s=0.05)
    sender.start()
    try:
        async with asyncio.timeout(5):
            while outbox.pending():
                await asyncio.sleep(0.01)
    finally:
        await sender.stop(flush_timeout_s=0.5)
    assert backend.fail == 0
    assert len(backend.batches) == 1
    assert sender.failures == 0


async def test_nothing_is_sent_while_disabled_and_stop_flushes(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(event(1))
    backend = Backend()
    enabled = False
    sender = OutboxSender(outbox, backend.send, enabled=lambda: enabled, interval_s=0.01)
    sender.start()
    await asyncio.sleep(0.1)
    assert backend.batches == []
    enabled = True
    await sender.stop(flush_timeout_s=1.0)
    assert outbox.pending() == 0


async def test_a_flush_while_the_loop_sends_sends_each_event_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add_many([event(i) for i in range(10)])
    sent: list[str] = []

    async def slow_send(batch: list[dict[str, Any]]) -> dict[str, Any]:
        sent.extend(e["event_id"] for e in batch)
        await asyncio.sleep(0.05)  # the answer is on its way when the flush comes
        return {"stored": len(batch), "duplicates": 0, "refused": []}

    sender = OutboxSender(outbox, slow_send, interval_s=1.0, batch_size=4)
    await asyncio.gather(sender.drain(), sender.drain())
    assert outbox.pending() == 0
    assert len(sent) == len(set(sent)) == 10


@pytest.mark.parametrize("status", [None, 400, 401, 403, 404, 405, 407, 408, 413, 422, 429, 500, 502, 503])
async def test_any_failure_keeps_every_event_of_the_batch(tmp_path: Path, status: int | None) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    events = [event(i) for i in range(4)]
    outbox.add_many(events)
    tries: list[int] = []

    async def send(batch: list[dict[str, Any]]) -> dict[str, Any]:
        tries.append(len(batch))
        raise BackendError("no", status=status)

    sender = OutboxSender(outbox, send, interval_s=1.0)
    with pytest.raises(BackendError):
        await sender.send_batch()
    assert [e for _, e in outbox.peek(10)] == events
    assert (sender.delivered, sender.refused) == (0, 0)
    # Only a 413 is worth trying smaller; the first half failing stops the batch.
    assert tries == ([4, 2, 1] if status == 413 else [4])


@pytest.mark.parametrize(
    "answer",
    [
        {"stored": 1, "duplicates": 0, "refused": []},  # two events, one accounted for
        {"stored": 1, "duplicates": 0, "refused": [{"index": 1, "event_id": "someone-else", "reason": "x"}]},
        {"stored": 1, "duplicates": 0, "refused": [{"index": 2, "event_id": None, "reason": "x"}]},
        {"stored": "2", "duplicates": 0, "refused": []},
        {"detail": "ok"},
    ],
)
def test_an_answer_that_does_not_account_for_every_event_keeps_them_all(answer: dict[str, Any]) -> None:
    assert fate([event(1), event(2)], answer) is Fate.KEPT


def test_the_rule_settles_only_what_the_backend_accounts_for() -> None:
    events = [event(1), event(2), event(3)]
    named = {"index": 1, "event_id": events[1]["event_id"], "reason": "kind: bad"}
    unreadable_id = {"index": 2, "event_id": None, "reason": "event_id: too short"}
    assert fate(events, {"stored": 2, "duplicates": 1, "refused": []}) is Fate.SETTLED
    assert fate(events, {"stored": 1, "duplicates": 0, "refused": [named, unreadable_id]}) is Fate.SETTLED
    assert fate(events, BackendError("HTTP 413", status=413)) is Fate.SPLIT
    assert fate(events[:1], BackendError("HTTP 413", status=413)) is Fate.KEPT
    assert fate(events, BackendError("HTTP 422", status=422)) is Fate.KEPT


# -- over real HTTP on loopback ------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One answer from something between the editor and the backend, or from a confused backend."""

    status: int = 0  # 0: the connection closes without an answer
    body: bytes = b""
    content_type: str = "application/json"
    hang_s: float = 0.0


class Gateway:
    """/v1/events on loopback as a user's editor may reach it: the scripted faults first (a proxy,
    a stale token, an HTML error page), then the backend's contract (core.wire), keeping what it
    stored. `max_body`: a proxy's request size limit, answered 413 whatever the script."""

    def __init__(self, faults: list[Fault], max_body: int | None = None) -> None:
        self.faults = list(faults)
        self.max_body = max_body
        self.posts: list[list[str]] = []
        self.stored: Counter[str] = Counter()
        self.refused: list[str] = []
        self.duplicates = 0
        self._lock = threading.Lock()
        self.http = LoopbackHTTP(lambda method, path, headers, body: self.answer(body))
        self.url = self.http.url

    def answer(self, body: bytes) -> Answer:
        with self._lock:
            if self.max_body is not None and len(body) > self.max_body:
                return 413, b"<html>413 Request Entity Too Large</html>", "text/html"
            if self.faults:
                fault = self.faults.pop(0)
                time.sleep(fault.hang_s)
                return (fault.status, fault.body, fault.content_type) if fault.status else None
            valid, refused = parse_events(body)
            self.posts.append([event.event_id for _, event in valid])
            duplicates = sum(1 for _, event in valid if event.event_id in self.stored)
            self.duplicates += duplicates
            self.stored.update(event.event_id for _, event in valid)
            self.refused += [r.event_id for r in refused if r.event_id is not None]
            answer = EventsResponse(stored=len(valid) - duplicates, duplicates=duplicates, refused=refused)
            return 200, answer.model_dump_json().encode(), "application/json"


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for gateway in made:
        gateway.http.close()


def gateway_for(gateways: list[Gateway], faults: list[Fault], max_body: int | None = None) -> Gateway:
    gateways.append(Gateway(faults, max_body))
    return gateways[-1]


def html(status: int, title: str) -> Fault:
    return Fault(status, f"<html><title>{title}</title></html>".encode(), "text/html")


FAULTS = [
    html(405, "405 Method Not Allowed"),  # a proxy that only passes GET
    html(407, "407 Proxy Authentication Required"),
    Fault(413, b'{"detail": "request body larger than 1 bytes"}'),
    Fault(401, b'{"detail": "missing or unknown token"}'),
    html(200, "Sign in to the hotel Wi-Fi"),  # a captive portal: 200, and not JSON
    Fault(200, b'{"ok": true}'),  # JSON that is not the events answer
    Fault(422, b'{"detail": [{"loc": ["body"], "msg": "Field required"}]}'),
    html(404, "404 Not Found"),
    Fault(429, b'{"detail": "slow down"}'),
    html(502, "502 Bad Gateway"),
    Fault(503, b"not json at all"),
    Fault(0),  # the connection closes without an answer
    Fault(0, hang_s=1.0),  # no answer within the client's timeout
]


async def until_drained(outbox: Outbox, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while outbox.pending():
            await asyncio.sleep(0.02)


def fast_sender(outbox: Outbox, url: str, **options: Any) -> tuple[OutboxSender, BackendClient]:
    client = BackendClient(url, token="test-token", timeout_s=0.5)
    backoff = {"interval_s": 0.01, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "auth_retry_s": 0.05}
    return OutboxSender(outbox, client.send_events, **{**backoff, **options}), client


async def test_over_http_every_failure_keeps_the_events_and_each_arrives_once(
    tmp_path: Path, gateways: list[Gateway]
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    events = [event(i) for i in range(30)]
    bad = [events[4], events[17], events[29]]
    for e in bad:
        e["kind"] = "glanced"  # not a kind the contract knows: the backend refuses it by name
    outbox.add_many(events)
    gateway = gateway_for(gateways, FAULTS)
    sender, client = fast_sender(outbox, gateway.url, batch_size=8)
    sender.start()
    try:
        await until_drained(outbox, 30)
    finally:
        await sender.stop(flush_timeout_s=0.5)
        await client.aclose()
    assert gateway.faults == []
    good = {e["event_id"] for e in events if e not in bad}
    assert set(gateway.stored) == good and set(gateway.stored.values()) == {1}
    assert gateway.duplicates == 0
    assert sorted(gateway.refused) == sorted(e["event_id"] for e in bad)
    assert (sender.delivered, sender.refused, sender.duplicates) == (27, 3, 0)


async def test_a_413_splits_the_batch_and_an_event_too_large_alone_waits(
    tmp_path: Path, gateways: list[Gateway]
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    events = [event(i) for i in range(20)]
    huge = events[13]
    huge["text"] = "x" * 2000
    outbox.add_many(events)
    # A proxy that passes four events per request at most, and never the huge one.
    gateway = gateway_for(gateways, [], max_body=600)
    sender, client = fast_sender(outbox, gateway.url, batch_size=16)
    try:
        for _ in range(20):
            with pytest.raises(BackendError, match="413"):
                await sender.drain()
        # Everything before the huge event arrived, in smaller batches; it and all after it wait.
        assert list(gateway.stored) == [e["event_id"] for e in events[:13]]
        assert max(len(post) for post in gateway.posts) == 4
        assert [e for _, e in outbox.peek(100)] == events[13:]

        gateway.max_body = None  # the proxy is configured to let larger requests through
        await sender.drain()
    finally:
        await client.aclose()
    assert outbox.pending() == 0
    assert set(gateway.stored) == {e["event_id"] for e in events} and set(gateway.stored.values()) == {1}
    assert (sender.delivered, sender.refused) == (20, 0)


async def test_a_refused_token_keeps_the_events_and_retries_slowly_until_woken(
    tmp_path: Path, gateways: list[Gateway]
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add_many([event(i) for i in range(5)])
    gateway = gateway_for(gateways, [Fault(401, b'{"detail": "missing or unknown token"}')] * 2)
    sender, client = fast_sender(outbox, gateway.url, auth_retry_s=60.0)
    sender.start()
    try:
        async with asyncio.timeout(5):
            while sender.failures == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        # Not retried at the outage pace: once, then a wait of at least half a minute.
        assert (sender.failures, len(gateway.faults), outbox.pending()) == (1, 1, 5)
        sender.wake()  # what a new token in the settings does
        async with asyncio.timeout(5):
            while sender.failures < 2:
                await asyncio.sleep(0.01)
        sender.wake()
        await until_drained(outbox, 5)
    finally:
        await sender.stop(flush_timeout_s=0.5)
        await client.aclose()
    assert len(gateway.stored) == 5 and sender.delivered == 5
