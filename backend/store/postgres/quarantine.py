"""Rows that cannot be read, set aside with their reason so that every pass goes on with the rest.

The same rules as backend/store/sqlite/quarantine.py (read its docstring): an events row is moved
into `quarantine` whole; a completions row stays where it is and is recorded, and the trainer's
feed leaves it out. PostgreSQL's column types refuse more at the door than SQLite's (no text in a
time column), but the JSON columns are text and a hand edit or an older version can leave
anything there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from backend.store.interface import COMPLETIONS, EVENTS, SetAside, reason_of
from backend.store.postgres.database import Database
from backend.store.rows import EVENT_COLUMNS, set_aside_event


@dataclass(frozen=True)
class Unreadable:
    """One row that failed to load, and why. `key`: its event_id or completion_id."""

    table: str
    key: str
    reason: str

    @classmethod
    def of(cls, table: str, key: str, error: Exception) -> Unreadable:
        return cls(table, key, reason_of(error))


async def put_aside(conn: psycopg.AsyncConnection, rows: Sequence[Unreadable], now: float) -> None:
    """Record `rows` in the quarantine table, moving the events rows there; inside the caller's
    transaction. A row set aside before keeps its first record."""
    events = [row for row in rows if row.table == EVENTS]
    if events:
        cursor = await conn.execute(
            f"DELETE FROM events WHERE event_id = ANY(%s) RETURNING {', '.join(EVENT_COLUMNS)}",
            ([row.key for row in events],),
        )
        # Only the rows this transaction deleted: one moved aside meanwhile by another pass is gone.
        contents = {
            values[0]: dict(zip(EVENT_COLUMNS, values, strict=True)) for values in await cursor.fetchall()
        }
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO quarantine (tbl, row_key, reason, content, stored_at, at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tbl, row_key) DO NOTHING",
                [
                    set_aside_event(row.key, row.reason, contents[row.key], now)
                    for row in events
                    if row.key in contents
                ],
            )
    completions = [row for row in rows if row.table == COMPLETIONS]
    if completions:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO quarantine (tbl, row_key, reason, stored_at, at)"
                " SELECT %s, %s, %s, CASE WHEN created_at BETWEEN -1e308 AND 1e308 THEN created_at END, %s"
                " FROM completions WHERE completion_id = %s ON CONFLICT (tbl, row_key) DO NOTHING",
                [(COMPLETIONS, row.key, row.reason, now, row.key) for row in completions],
            )


class QuarantineMixin:
    _db: Database

    async def set_aside(self, rows: Sequence[Unreadable]) -> None:
        """Set `rows` aside in a transaction of their own (for the passes that only read)."""
        if rows:
            async with self._db.transaction() as conn:
                await put_aside(conn, rows, time.time())

    async def quarantine_counts(self) -> dict[str, int]:
        rows = await self._db.fetch("SELECT tbl, COUNT(*) FROM quarantine GROUP BY tbl ORDER BY tbl")
        return {table: count for table, count in rows}

    async def quarantined(self, limit: int = 20) -> list[SetAside]:
        rows = await self._db.fetch(
            "SELECT tbl, row_key, reason, at FROM quarantine ORDER BY id DESC LIMIT %s", (limit,)
        )
        return [SetAside(table=t, key=k, reason=r, at=at) for t, k, r, at in rows]
