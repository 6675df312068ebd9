"""The event outbox (SQLite) and its sender: nothing is lost, nothing is deleted unconfirmed."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from lsp_server.backend_client import BackendError
from lsp_server.outbox import Outbox
from lsp_server.sender import OutboxSender


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
    sender = OutboxSender(outbox, backend.send)
    with pytest.raises(BackendError):
        await sender.send_batch()
    assert outbox.pending() == 1200
    await sender.drain()
    assert [len(b) for b in backend.batches] == [500, 500, 200]
    assert outbox.pending() == 0
    assert sender.delivered == 1200


async def test_refused_events_count_as_delivered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    bad = event(1)
    outbox.add(bad)
    outbox.add(event(2))
    backend = Backend()
    backend.refuse = {bad["event_id"]}
    await OutboxSender(outbox, backend.send).drain()
    assert outbox.pending() == 0
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


async def test_a_batch_refused_with_4xx_is_narrowed_to_its_bad_events_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    events = [event(i) for i in range(10)]
    for e in events:
        outbox.add(e)
    poison = {events[3]["event_id"], events[7]["event_id"]}
    received: list[str] = []

    async def send(batch: list[dict[str, Any]]) -> dict[str, Any]:
        if poison & {e["event_id"] for e in batch}:
            raise BackendError("HTTP 422 from /v1/events: unprocessable", status=422)
        received.extend(e["event_id"] for e in batch)
        return {"stored": len(batch), "duplicates": 0, "refused": []}

    sender = OutboxSender(outbox, send)
    await sender.drain()
    assert outbox.pending() == 0
    assert sorted(received) == sorted(e["event_id"] for e in events if e["event_id"] not in poison)
    assert (sender.delivered, sender.refused) == (8, 2)
    assert all(event_id in caplog.text for event_id in poison)


@pytest.mark.parametrize("status", [None, 401, 429, 500, 503])
async def test_transport_errors_5xx_and_auth_or_rate_limits_keep_the_batch_for_a_retry(
    tmp_path: Path, status: int | None
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(event(1))

    async def send(batch: list[dict[str, Any]]) -> dict[str, Any]:
        raise BackendError("no", status=status)

    sender = OutboxSender(outbox, send)
    with pytest.raises(BackendError):
        await sender.send_batch()
    assert outbox.pending() == 1
    assert sender.refused == 0
