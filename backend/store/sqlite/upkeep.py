"""Housekeeping: retention, hashed access tokens, and a few small backend settings (pinned version)."""

from __future__ import annotations

import json
import time
from typing import Any

from backend.store.interface import Purged, TokenRecord
from backend.store.sqlite.database import Database

# Rows purged per transaction: bounds how long retention holds the write lock.
_PURGE_CHUNK = 2000


class UpkeepMixin:
    _db: Database

    async def purge_older_than(self, cutoff: float) -> Purged:
        """Delete events and completion contexts from before `cutoff`; keep episodes and aggregates.

        Only finalized completions are purged, so no open observation window loses its events.
        The completion row stays (version, text, latency) with its context and token lists emptied,
        so per-version figures and the reward history are unchanged. Rows set aside (quarantine)
        lose their content by the same cutoff; the record that they were set aside stays.
        """
        events = completions = 0
        while True:
            async with self._db.transaction() as db:
                rows = await db.execute_fetchall(
                    "SELECT completion_id FROM completions WHERE created_at < ? AND finalized_at IS NOT NULL"
                    " AND purged_at IS NULL LIMIT ?",
                    (cutoff, _PURGE_CHUNK),
                )
                ids = [(row[0],) for row in rows]
                cursor = await db.executemany("DELETE FROM events WHERE completion_id = ?", ids)
                events += max(cursor.rowcount, 0)
                await cursor.close()
                await db.executemany(
                    "UPDATE completions SET context = '{}', prompt_ids = '[]', completion_ids = '[]',"
                    " token_logprobs = '[]', purged_at = ? WHERE completion_id = ?",
                    [(time.time(), cid) for (cid,) in ids],
                )
            completions += len(ids)
            if len(ids) < _PURGE_CHUNK:
                break
        async with self._db.transaction() as db:
            await db.execute(
                "UPDATE quarantine SET content = NULL"
                " WHERE content IS NOT NULL AND COALESCE(stored_at, at) < ?",
                (cutoff,),
            )
        return Purged(events=events, completions=completions)

    async def add_token(self, name: str, role: str, token_hash: str) -> int:
        async with self._db.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)",
                (name, role, token_hash, time.time()),
            )
            token_id = cursor.lastrowid
            await cursor.close()
        assert token_id is not None
        return token_id

    async def revoke_token(self, token_id: int) -> bool:
        async with self._db.transaction() as db:
            cursor = await db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), token_id),
            )
            changed = cursor.rowcount
            await cursor.close()
        return changed > 0

    async def tokens(self, include_revoked: bool = False) -> list[TokenRecord]:
        """id, name, role, hash, created_at, revoked_at of each token."""
        sql = "SELECT id, name, role, hash, created_at, revoked_at FROM tokens"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        rows = await self._db.reader.execute_fetchall(sql + " ORDER BY id")
        return [
            TokenRecord(id=id_, name=name, role=role, hash=digest, created_at=created, revoked_at=revoked)
            for id_, name, role, digest, created, revoked in rows
        ]

    async def get_setting(self, key: str) -> Any:
        rows = await self._db.reader.execute_fetchall(
            "SELECT value FROM backend_settings WHERE key = ?", (key,)
        )
        return json.loads(rows[0][0]) if rows else None

    async def set_setting(self, key: str, value: Any) -> None:
        async with self._db.transaction() as db:
            if value is None:
                await db.execute("DELETE FROM backend_settings WHERE key = ?", (key,))
            else:
                await db.execute(
                    "INSERT INTO backend_settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )
