"""Writing what happens: served completions and the outcome events the language server reports."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from backend.store.group_commit import Batch, GroupCommit, event_row
from backend.store.rows import decision_column
from backend.store.sqlite.database import Database
from core import wire


class IngestMixin:
    _db: Database
    _event_writer: EventWriter

    async def record_completion(
        self,
        *,
        completion_id: str,
        user_id: str,
        model_version: str,
        context: dict[str, Any],
        prompt_ids: Sequence[int],
        completion_ids: Sequence[int],
        token_logprobs: Sequence[float],
        temperature: float,
        text: str,
        created_at: float,
        latency_ms: float,
        evaluation: bool = False,
        client: str = "lsp",
        language: str = "",
        decision: wire.ServingDecision | None = None,
    ) -> None:
        """Store one served completion (abstentions too: they are episodes with reward 0)."""
        row = (
            completion_id,
            user_id,
            model_version,
            json.dumps(context),
            json.dumps(list(prompt_ids)),
            json.dumps(list(completion_ids)),
            json.dumps(list(token_logprobs)),
            temperature,
            text,
            created_at,
            latency_ms,
            int(evaluation),
            client,
            language,
            decision_column(decision),
        )
        await self._db.write_one(
            "INSERT INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
            " completion_ids, token_logprobs, temperature, text, created_at, latency_ms, evaluation,"
            " client, language, decision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    async def add_events(self, raw: list[Any], received_at: float) -> wire.EventsResponse:
        """Judge a batch of raw event dicts one by one and store the valid ones."""
        valid, refused = wire.judge_events(raw)
        return await self.store_events(valid, refused, received_at)

    async def store_events(
        self,
        valid: list[tuple[int, wire.Event]],
        refused: list[wire.RefusedEvent],
        received_at: float,
    ) -> wire.EventsResponse:
        """Store a batch's valid events; one for an unknown completion is refused with its reason.

        An event id seen before (in this batch or earlier) counts as a duplicate and is stored
        once, so a client may safely resend a batch it is unsure about.
        """
        if not valid:
            return wire.EventsResponse(stored=0, duplicates=0, refused=refused)
        return await self._event_writer.write(Batch(valid, refused, received_at))


class EventWriter(GroupCommit):
    """Group commit: the batches that arrive while a transaction runs share the next one.

    Every statement is a hand-off between the event loop's thread and aiosqlite's, and under load
    each hand-off waits its turn, so ingestion is bound by statements, not rows. A group costs a
    write transaction of four or five statements, whatever the number of batches in it.
    """

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db

    async def _commit_group(self, group: list[Batch]) -> list[wire.EventsResponse]:
        """Store the group's new events in one transaction; each batch's response.

        Almost always every event is new and names a known completion, so that is tried first:
        one INSERT, which the foreign key and a short row count prove right or wrong. When it is
        wrong, the transaction is rolled back and the group sorted out against what the reader
        sees. That is exact: earlier groups are committed before this one starts, only this
        writer inserts events, a completion is committed before its id is ever sent to a client,
        and completions are never deleted.
        """
        results, new = _sort_out(group, known=None, stored_before=set())
        try:
            await self._insert(new, all_new=True)
        except (_NotAllNew, sqlite3.IntegrityError):
            known, stored_before = await _known_and_stored(
                self._db.reader,
                {event.completion_id for batch in group for _, event in batch.valid},
                [event.event_id for batch in group for _, event in batch.valid],
            )
            results, new = _sort_out(group, known, stored_before)
            await self._insert(new, all_new=False)
        return results

    async def _insert(self, new: dict[str, tuple[wire.Event, float]], all_new: bool) -> None:
        if not new:
            return
        finals = sorted({event.completion_id for event, _ in new.values() if event.final})
        async with self._db.transaction() as db:
            cursor = await db.executemany(
                "INSERT OR IGNORE INTO events"
                " (event_id, completion_id, kind, payload, client_ts, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [event_row(e, received_at) for e, received_at in new.values()],
            )
            # executemany's rowcount sums the rows really inserted; ignored duplicates add 0.
            inserted = cursor.rowcount
            await cursor.close()
            if all_new and inserted != len(new):
                raise _NotAllNew
            if finals:
                await db.execute(
                    "UPDATE completions SET final_seen = 1"
                    " WHERE completion_id IN (SELECT value FROM json_each(?))"
                    " AND final_seen = 0 AND finalized_at IS NULL",
                    (json.dumps(finals),),
                )


class _NotAllNew(Exception):
    """Some event of the group was stored before: sort the group out against the database."""


def _sort_out(
    group: list[Batch], known: set[str] | None, stored_before: set[str]
) -> tuple[list[wire.EventsResponse], dict[str, tuple[wire.Event, float]]]:
    """Each batch's response, and the group's events to store by id (with when they came).

    `known` None takes every completion as known. The first copy of an event id is the one
    stored; later copies, in this group or stored before it, are duplicates.
    """
    results: list[wire.EventsResponse] = []
    new: dict[str, tuple[wire.Event, float]] = {}
    for batch in group:
        refused = list(batch.refused)
        stored = duplicates = 0
        for index, event in batch.valid:
            if known is not None and event.completion_id not in known:
                reason = "unknown completion_id"
                refused.append(wire.RefusedEvent(index=index, event_id=event.event_id, reason=reason))
            elif event.event_id in stored_before or event.event_id in new:
                duplicates += 1
            else:
                new[event.event_id] = (event, batch.received_at)
                stored += 1
        refused.sort(key=lambda r: r.index)
        results.append(wire.EventsResponse(stored=stored, duplicates=duplicates, refused=refused))
    return results, new


async def _known_and_stored(
    db: aiosqlite.Connection, completion_ids: set[str], event_ids: list[str]
) -> tuple[set[str], set[str]]:
    """Which of the completions exist, and which of the event ids are stored: one read."""
    rows = await db.execute_fetchall(
        "SELECT"
        " (SELECT json_group_array(completion_id) FROM completions"
        "  WHERE completion_id IN (SELECT value FROM json_each(?))),"
        " (SELECT json_group_array(event_id) FROM events WHERE event_id IN (SELECT value FROM json_each(?)))",
        (json.dumps(sorted(completion_ids)), json.dumps(event_ids)),
    )
    known, stored = rows[0]
    return set(json.loads(known)), set(json.loads(stored))
