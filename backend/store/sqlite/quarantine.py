"""Rows that cannot be read, set aside with their reason so that every pass goes on with the rest.

A stored row may fail to load however it got there: written by an older version whose checks were
looser, edited by hand, or left by a bug. Finalizing, the trainer's feed and re-scoring read many
rows at a time, and one unreadable row must cost that row, never the pass (issue 23: one event
with a NaN timestamp stopped every finalize pass, and with it all learning). The smallest unit
that fails is set aside:

- an events row is moved into `quarantine` whole, so no later pass trips on it again; its
  completion is scored on its other events;
- a completions row stays where it is (its episode and events refer to it) and is recorded: the
  trainer's feed leaves it out, and one that cannot even be scored is closed without an episode.

The record (table, key, reason, when) stays for the dashboard and /metrics; a moved row's content
goes when retention reaches the row's own time, like the events it was one of.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from backend.store.interface import COMPLETIONS, EVENTS, SetAside, reason_of
from backend.store.rows import EVENT_COLUMNS, set_aside_event
from backend.store.sqlite.database import Database


@dataclass(frozen=True)
class Unreadable:
    """One row that failed to load, and why."""

    table: str
    key: str
    reason: str
    # The row's rowid: its key may itself be what is wrong with it.
    rowid: int

    @classmethod
    def of(cls, table: str, key: Any, rowid: int, error: Exception) -> Unreadable:
        return cls(table, key_of(key, rowid), reason_of(error), rowid)


def key_of(key: Any, rowid: int) -> str:
    """A row's key for the record: its own, or its rowid when the key is missing or not text."""
    return key if isinstance(key, str) and key else f"rowid {rowid}"


async def put_aside(db: aiosqlite.Connection, rows: Sequence[Unreadable], now: float) -> None:
    """Record `rows` in the quarantine table, moving the events rows there; inside the caller's
    write transaction. A row set aside before keeps its first record."""
    events = [row for row in rows if row.table == EVENTS]
    if events:
        marks = ",".join("?" * len(events))
        found = await db.execute_fetchall(
            f"SELECT rowid, {', '.join(EVENT_COLUMNS)} FROM events WHERE rowid IN ({marks})",
            [row.rowid for row in events],
        )
        contents = {rowid: dict(zip(EVENT_COLUMNS, values, strict=True)) for rowid, *values in found}
        await db.executemany(
            "INSERT OR IGNORE INTO quarantine (tbl, row_key, reason, content, stored_at, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                set_aside_event(row.key, row.reason, contents[row.rowid], now)
                for row in events
                if row.rowid in contents  # moved aside meanwhile by another pass
            ],
        )
        await db.executemany("DELETE FROM events WHERE rowid = ?", [(row.rowid,) for row in events])
    completions = [row for row in rows if row.table == COMPLETIONS]
    if completions:
        await db.executemany(
            "INSERT OR IGNORE INTO quarantine (tbl, row_key, reason, stored_at, at)"
            " SELECT ?, ?, ?, CASE WHEN created_at BETWEEN -1e308 AND 1e308 THEN created_at END, ?"
            " FROM completions WHERE rowid = ?",
            [(COMPLETIONS, row.key, row.reason, now, row.rowid) for row in completions],
        )


class QuarantineMixin:
    _db: Database

    async def set_aside(self, rows: Sequence[Unreadable]) -> None:
        """Set `rows` aside in a transaction of their own (for the passes that only read)."""
        if rows:
            async with self._db.transaction() as db:
                await put_aside(db, rows, time.time())

    async def quarantine_counts(self) -> dict[str, int]:
        """How many rows of each table are set aside."""
        rows = await self._db.reader.execute_fetchall(
            "SELECT tbl, COUNT(*) FROM quarantine GROUP BY tbl ORDER BY tbl"
        )
        return {table: count for table, count in rows}

    async def quarantined(self, limit: int = 20) -> list[SetAside]:
        """The latest rows set aside: table, key, reason, at."""
        rows = await self._db.reader.execute_fetchall(
            "SELECT tbl, row_key, reason, at FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [SetAside(table=t, key=k, reason=r, at=at) for t, k, r, at in rows]
