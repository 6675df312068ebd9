"""Writing what happens: served completions and the outcome events the language server reports.

Several backends may take events for the same completions at once (a client resends a batch
through another replica), so what is new is decided by the database, not by what one process
has seen: INSERT … ON CONFLICT DO NOTHING RETURNING names the rows really stored, and every
other valid event is a duplicate, or names a completion that does not exist.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from backend.store.group_commit import Batch, GroupCommit, event_row
from backend.store.postgres.database import Database
from backend.store.rows import EVENT_COLUMNS, decision_column
from core import wire

# One statement for the whole group: the rows as one JSON parameter, unpacked by the server (psycopg
# adapting six arrays element by element in Python cost more than the rest of the write together);
# only those whose completion exists (a completion is committed before its id reaches any client,
# and never deleted).
_INSERT_EVENTS = (
    "INSERT INTO events (event_id, completion_id, kind, payload, client_ts, received_at)"
    " SELECT t.event_id, t.completion_id, t.kind, t.payload, t.client_ts, t.received_at"
    " FROM json_to_recordset(%s::json) AS t (event_id text, completion_id text, kind text,"
    " payload text, client_ts float8, received_at float8)"
    " WHERE EXISTS (SELECT 1 FROM completions c WHERE c.completion_id = t.completion_id)"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


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
        async with self._db.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
                " completion_ids, token_logprobs, temperature, text, created_at, latency_ms, evaluation,"
                " client, language, decision)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
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
                    evaluation,
                    client,
                    language,
                    decision_column(decision),
                ),
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
        An event id seen before (in this batch, earlier, or through another backend) is a
        duplicate and stored once."""
        if not valid:
            return wire.EventsResponse(stored=0, duplicates=0, refused=refused)
        return await self._event_writer.write(Batch(valid, refused, received_at))


class EventWriter(GroupCommit):
    """Group commit: the batches that arrive while a transaction runs share the next one.

    A commit waits for the WAL to reach the disk; one commit for many batches pays that wait
    once, and one INSERT of unnested arrays makes the group a single round trip.
    """

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db

    async def _commit_group(self, group: list[Batch]) -> list[wire.EventsResponse]:
        return await self._db.retrying(lambda: self._commit(group))

    async def _commit(self, group: list[Batch]) -> list[wire.EventsResponse]:
        # The first copy of an event id in the group is the one offered to the database.
        offered: dict[str, tuple[wire.Event, float]] = {}
        for batch in group:
            for _, event in batch.valid:
                offered.setdefault(event.event_id, (event, batch.received_at))
        events = [event for event, _ in offered.values()]
        async with self._db.transaction() as conn:
            rows = [dict(zip(EVENT_COLUMNS, event_row(e, at), strict=True)) for e, at in offered.values()]
            cursor = await conn.execute(_INSERT_EVENTS, (json.dumps(rows),))
            inserted = {row[0] for row in await cursor.fetchall()}
            # Which of the left-over events' completions exist: those events are duplicates.
            missing = {e.completion_id for e in events if e.event_id not in inserted}
            known: set[str] = set()
            if missing:
                cursor = await conn.execute(
                    "SELECT completion_id FROM completions WHERE completion_id = ANY(%s)", (sorted(missing),)
                )
                known = {row[0] for row in await cursor.fetchall()}
            finals = sorted({e.completion_id for e in events if e.final and e.event_id in inserted})
            if finals:
                await conn.execute(
                    "UPDATE completions SET final_seen = true WHERE completion_id = ANY(%s)"
                    " AND NOT final_seen AND finalized_at IS NULL",
                    (finals,),
                )
        return _responses(group, inserted, known)


def _responses(group: list[Batch], inserted: set[str], known: set[str]) -> list[wire.EventsResponse]:
    """Each batch's answer: an event is stored by the first batch in the group that carried it,
    a duplicate when stored before (or by an earlier copy), refused when its completion is unknown."""
    results = []
    counted: set[str] = set()
    for batch in group:
        refused = list(batch.refused)
        stored = duplicates = 0
        for index, event in batch.valid:
            if event.event_id in inserted and event.event_id not in counted:
                counted.add(event.event_id)
                stored += 1
            elif event.event_id in inserted or event.completion_id in known:
                duplicates += 1
            else:
                reason = "unknown completion_id"
                refused.append(wire.RefusedEvent(index=index, event_id=event.event_id, reason=reason))
        refused.sort(key=lambda r: r.index)
        results.append(wire.EventsResponse(stored=stored, duplicates=duplicates, refused=refused))
    return results
