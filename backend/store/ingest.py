"""Writing what happens: served completions and the outcome events the language server reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiosqlite
from pydantic import ValidationError

from backend import wire
from backend.store.database import Database

# Well under SQLite's bound-parameter limit, and a batch is at most MAX_EVENTS_PER_BATCH anyway.
_IN_CHUNK = 500


class IngestMixin:
    _db: Database

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
        )
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
                " completion_ids, token_logprobs, temperature, text, created_at, latency_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    async def add_events(self, raw: list[Any], received_at: float) -> wire.EventsResponse:
        """Store a batch of raw event dicts in one transaction; each is judged on its own.

        A malformed event or one for an unknown completion is refused with its reason while the
        rest are stored. An event id seen before (in this batch or earlier) counts as a duplicate
        and is stored once, so a client may safely resend a batch it is unsure about.
        """
        refused: list[wire.RefusedEvent] = []
        valid: list[tuple[int, wire.Event]] = []
        for index, item in enumerate(raw):
            try:
                valid.append((index, wire.Event.model_validate(item)))
            except ValidationError as error:
                refused.append(wire.RefusedEvent(index=index, event_id=_raw_id(item), reason=_why(error)))

        stored = 0
        accepted: list[wire.Event] = []
        async with self._db.transaction() as db:
            known = await _known_completions(db, {event.completion_id for _, event in valid})
            for index, event in valid:
                if event.completion_id in known:
                    accepted.append(event)
                else:
                    refused.append(
                        wire.RefusedEvent(
                            index=index, event_id=event.event_id, reason="unknown completion_id"
                        )
                    )
            if accepted:
                cursor = await db.executemany(
                    "INSERT OR IGNORE INTO events (event_id, completion_id, kind, payload, client_ts,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            e.event_id,
                            e.completion_id,
                            e.kind.value,
                            e.model_dump_json(exclude_none=True),
                            e.client_ts,
                            received_at,
                        )
                        for e in accepted
                    ],
                )
                # executemany's rowcount sums the rows really inserted; ignored duplicates add 0.
                stored = cursor.rowcount
                await cursor.close()
            finals = {(e.completion_id,) for e in accepted if e.final}
            if finals:
                await db.executemany(
                    "UPDATE completions SET final_seen = 1"
                    " WHERE completion_id = ? AND final_seen = 0 AND finalized_at IS NULL",
                    sorted(finals),
                )
        refused.sort(key=lambda r: r.index)
        return wire.EventsResponse(stored=stored, duplicates=len(accepted) - stored, refused=refused)


async def _known_completions(db: aiosqlite.Connection, ids: set[str]) -> set[str]:
    known: set[str] = set()
    ordered = sorted(ids)
    for start in range(0, len(ordered), _IN_CHUNK):
        chunk = ordered[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = await db.execute_fetchall(
            f"SELECT completion_id FROM completions WHERE completion_id IN ({marks})", chunk
        )
        known.update(row[0] for row in rows)
    return known


def _raw_id(item: Any) -> str | None:
    event_id = item.get("event_id") if isinstance(item, dict) else None
    return event_id if isinstance(event_id, str) else None


def _why(error: ValidationError) -> str:
    """pydantic's report in one line: 'field: message; field: message'."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in detail["loc"]) or "event"
        parts.append(f"{where}: {detail['msg']}")
    return "; ".join(parts)[:500]
