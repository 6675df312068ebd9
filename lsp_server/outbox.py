"""A durable queue of outcome events: written to SQLite first, deleted only once the backend has
confirmed them, so a crash, a restart or a backend outage loses nothing.

The backend is idempotent on event_id, so sending a row twice (a restart after a send whose answer
was lost, two editor windows sharing the file) is harmless.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
)
"""


class Outbox:
    def __init__(self, path: Path | str, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        # Rows dropped by this process to keep the outbox bounded.
        self.dropped = 0
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: each add is durable on its own, no transaction left open between events.
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._count = self.pending()
        self._adds_since_count = 0
        self._recount_every = max(1, min(1000, max_rows // 10))

    def add(self, event: dict[str, Any]) -> None:
        self.add_many([event])

    def add_many(self, events: Sequence[dict[str, Any]]) -> None:
        """Store events in one transaction (one commit for a burst of events)."""
        if not events:
            return
        rows = [(e["event_id"], json.dumps(e, separators=(",", ":"))) for e in events]
        self._db.execute("BEGIN")
        try:
            cursor = self._db.executemany("INSERT OR IGNORE INTO events (event_id, body) VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._count += cursor.rowcount
        self._adds_since_count += len(rows) - 1
        self._enforce_bound()

    def peek(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest `limit` events, with the row ids to pass to `remove` once delivered."""
        rows = self._db.execute("SELECT id, body FROM events ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(row_id, json.loads(body)) for row_id, body in rows]

    def remove(self, row_ids: Sequence[int]) -> None:
        if not row_ids:
            return
        self._db.execute("BEGIN")
        try:
            cursor = self._db.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in row_ids])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._count = max(self._count - cursor.rowcount, 0)

    def pending(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def _enforce_bound(self) -> None:
        # The running count is cheap but misses rows other processes (editor windows) wrote:
        # count for real when it says full, and every so often anyway.
        self._adds_since_count += 1
        if self._count <= self.max_rows and self._adds_since_count < self._recount_every:
            return
        self._count, self._adds_since_count = self.pending(), 0
        excess = self._count - self.max_rows
        if excess <= 0:
            return
        self._db.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)", (excess,)
        )
        self._count -= excess
        self.dropped += excess
        logger.warning(
            "event outbox full (%d rows): dropped the %d oldest events (%d so far)",
            self.max_rows,
            excess,
            self.dropped,
        )
