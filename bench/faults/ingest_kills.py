"""The backend SIGKILLed while language servers' outboxes send it events, then started again.

The senders are the language server's own outbox and sender (lsp_server/outbox.py, sender.py),
each with its SQLite outbox file, as editors run them: events are written to the outbox, go out
in batches, and leave it only once the backend's 200 accounts for each of them; a failed or lost
batch goes again after a backoff. Each keeps writing completions' lives (shown, accepted, three
survival checks) while the backend is down.

An event counts as acknowledged when the sender got a 200 for its batch. Right after each
restart every event acknowledged before the kill must be in the store; at the end, once every
outbox is empty, each event written to an outbox must be stored exactly once, and the backend's
answers must have counted each as stored exactly once (the rest as duplicates: a batch whose answer
the kill swallowed goes again, and its events already stored come back as duplicates).

The store is read here with a read-only SQLite connection to the backend's database file: the
HTTP API has no route that lists raw events, and a read-only look changes nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.backend_requests import completion_life
from bench.tokens import NO_CONFIGURED_TOKEN
from core.config import Settings
from core.local_tokens import CLIENT, authorization, read_token
from core.processes import spawn_backend, start_backend, stop_process, wait_healthy
from lsp_server.backend_client import BackendClient
from lsp_server.outbox import Outbox
from lsp_server.sender import OutboxSender, SendEvents

COMPLETIONS = 32


@dataclass
class Ledger:
    """What the senders saw: each 200 answer with the ids of its batch, and when it came."""

    answers: list[tuple[float, list[str], dict[str, Any]]] = field(default_factory=list)
    # Batches sent whose answer never came (the backend died, or refused the connection).
    failed_sends: int = 0

    def acknowledged_before(self, moment: float) -> set[str]:
        return {i for at, ids, _ in self.answers if at <= moment for i in ids}


def stored_ids(database: Path) -> list[str]:
    """Every event id in the backend's store (read-only; a row per stored event)."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return [row[0] for row in db.execute("SELECT event_id FROM events")]
    finally:
        db.close()


async def _completions(url: str, client: dict[str, str], n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, headers=client, timeout=60) as http:

        async def one(i: int) -> str:
            context = {"prefix": f"def handler_{i}(request):\n    return ", "suffix": "\n", "path": "a.py"}
            response = await http.post("/v1/complete", json={"context": context})
            return str(response.raise_for_status().json()["completion_id"])

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def _life(completion_id: str) -> list[dict[str, Any]]:
    # Not final: the backend would finalize the episode early; its events are stored all the same.
    return [{**e, "final": False} for e in completion_life(completion_id)]


@dataclass
class IngestRig:
    url: str
    data_dir: Path
    env: dict[str, str]
    process: Any
    log_path: Path

    @property
    def database(self) -> Path:
        return Settings(data_dir=self.data_dir).database_path

    def kill(self) -> float:
        os.kill(self.process.pid, signal.SIGKILL)
        at = time.monotonic()
        self.process.wait()
        return at

    def restart(self) -> None:
        self.process = spawn_backend(self.env, self.log_path)
        wait_healthy(self.url, self.process, self.log_path, timeout_s=300)


async def _produce(outbox: Outbox, completion_ids: list[str], stop: asyncio.Event, pace_s: float) -> int:
    """Writes a completion's life to the outbox every `pace_s` until told to stop; how many events."""
    written = 0
    for completion_id in itertools.cycle(completion_ids):
        if stop.is_set():
            return written
        events = _life(completion_id)
        outbox.add_many(events)
        written += len(events)
        await asyncio.sleep(pace_s)
    return written


async def _ingest_run(
    rig: IngestRig, work: Path, kills: int, senders: int, flow_s: float, down_s: float, pace_s: float
) -> dict[str, Any]:
    token = read_token(rig.data_dir, CLIENT)
    client = authorization(token)
    completion_ids = await _completions(rig.url, client, COMPLETIONS)
    ledger = Ledger()
    outboxes = [Outbox(work / f"outbox-{n}.sqlite3") for n in range(senders)]
    clients = [BackendClient(rig.url, token, timeout_s=10) for _ in range(senders)]

    def recorder(backend: BackendClient) -> SendEvents:
        async def send(events: list[dict[str, Any]]) -> dict[str, Any]:
            try:
                answer = await backend.send_events(events)
            except Exception:
                ledger.failed_sends += 1
                raise
            ledger.answers.append((time.monotonic(), [e["event_id"] for e in events], answer))
            return answer

        return send

    running = [
        OutboxSender(box, recorder(c), interval_s=0.02, batch_size=100, backoff_base_s=0.1, backoff_max_s=1.0)
        for box, c in zip(outboxes, clients, strict=True)
    ]
    stop = asyncio.Event()
    producers = [asyncio.create_task(_produce(box, completion_ids, stop, pace_s)) for box in outboxes]
    for sender in running:
        sender.start()
    per_kill = []
    try:
        for _ in range(kills):
            await asyncio.sleep(flow_s)
            killed_at = await asyncio.to_thread(rig.kill)
            acknowledged = ledger.acknowledged_before(killed_at)
            await asyncio.sleep(down_s)
            started = time.monotonic()
            await asyncio.to_thread(rig.restart)
            back_s = time.monotonic() - started
            # Before the outboxes have had a chance to send anything again.
            stored = set(await asyncio.to_thread(stored_ids, rig.database))
            per_kill.append(
                {
                    "acknowledged_before_kill": len(acknowledged),
                    "acknowledged_lost": len(acknowledged - stored),
                    "stored_at_restart": len(stored),
                    "restart_s": round(back_s, 2),
                }
            )
        await asyncio.sleep(flow_s)
        stop.set()
        written = sum(await asyncio.gather(*producers))
        drain_started = time.monotonic()
        while any(box.pending() for box in outboxes):
            if time.monotonic() - drain_started > 300:
                raise RuntimeError("the outboxes did not empty within 300 s")
            await asyncio.sleep(0.1)
        drain_s = time.monotonic() - drain_started
    finally:
        stop.set()
        for sender in running:
            await sender.stop(flush_timeout_s=0.1)
        for c in clients:
            await c.aclose()
        for box in outboxes:
            box.close()
    rows = await asyncio.to_thread(stored_ids, rig.database)
    acknowledged_all = ledger.acknowledged_before(float("inf"))
    answered_stored = sum(answer["stored"] for _, _, answer in ledger.answers)
    answered_duplicates = sum(answer["duplicates"] for _, _, answer in ledger.answers)
    refused = sum(len(answer["refused"]) for _, _, answer in ledger.answers)
    return {
        "senders": senders,
        "kills": per_kill,
        "events_written": written,
        "events_stored": len(set(rows)),
        "rows": len(rows),
        "stored_twice": len(rows) - len(set(rows)),
        "acknowledged": len(acknowledged_all),
        # Each kill's count is of every event acknowledged before it: the last one's is all of them.
        "acknowledged_before_kills": max((k["acknowledged_before_kill"] for k in per_kill), default=0),
        # Acknowledged and not in the store at the end (each kill's own count is in `kills`).
        "acknowledged_lost": len(acknowledged_all - set(rows)),
        "answered_stored": answered_stored,
        # Stored, but the answer saying so was lost to a kill: the outbox sent them again.
        "stored_answer_lost": written - answered_stored,
        "answered_duplicates": answered_duplicates,
        "refused": refused,
        "failed_sends": ledger.failed_sends,
        "drain_s": round(drain_s, 2),
    }


def run_ingest_kills(
    model: str,
    work: Path,
    *,
    kills: int = 3,
    senders: int = 4,
    flow_s: float = 3.0,
    down_s: float = 1.0,
    pace_s: float = 0.005,
) -> dict[str, Any]:
    """`kills` SIGKILLs of a backend under ingest from `senders` outboxes; the figures, with
    `survived` true when no acknowledged event was lost and every event was stored exactly once."""
    data_dir = work / "ingest"
    # Each sender says once per outage that it could not deliver: hundreds of lines for a few kills.
    sender_log = logging.getLogger("lsp_server.sender")
    level_before = sender_log.level
    sender_log.setLevel(logging.ERROR)
    process, url, env = start_backend(model, data_dir, **NO_CONFIGURED_TOKEN)
    rig = IngestRig(url, data_dir, env, process, data_dir / "backend.log")
    started = time.monotonic()
    try:
        figures = asyncio.run(_ingest_run(rig, work, kills, senders, flow_s, down_s, pace_s))
    finally:
        stop_process(rig.process)
        sender_log.setLevel(level_before)
    figures["wall_s"] = round(time.monotonic() - started, 1)
    figures["survived"] = (
        figures["acknowledged_lost"] == 0
        and all(k["acknowledged_lost"] == 0 for k in figures["kills"])
        and figures["stored_twice"] == 0
        and figures["events_stored"] == figures["events_written"]
        # No event answered "stored" twice: a resend of a stored event is a duplicate.
        and figures["answered_stored"] <= figures["events_written"]
    )
    print(json.dumps(figures))
    return figures
