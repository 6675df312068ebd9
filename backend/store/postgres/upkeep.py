"""Housekeeping: retention, hashed access tokens, small backend settings (as sqlite/upkeep.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from backend.store.interface import Purged, TokenRecord
from backend.store.postgres.database import Database

# Rows purged per transaction: bounds how long retention holds its row locks.
_PURGE_CHUNK = 2000


class UpkeepMixin:
    _db: Database

    async def purge_older_than(self, cutoff: float) -> Purged:
        """Delete events and completion contexts from before `cutoff`; keep episodes and aggregates
        (see the Store interface). Only finalized completions are purged."""
        events = completions = 0
        while True:
            async with self._db.transaction() as conn:
                cursor = await conn.execute(
                    "UPDATE completions SET context = '{}', prompt_ids = '[]', completion_ids = '[]',"
                    " token_logprobs = '[]', purged_at = %s WHERE completion_id IN ("
                    " SELECT completion_id FROM completions WHERE created_at < %s"
                    " AND finalized_at IS NOT NULL AND purged_at IS NULL LIMIT %s FOR UPDATE SKIP LOCKED)"
                    " RETURNING completion_id",
                    (time.time(), cutoff, _PURGE_CHUNK),
                )
                ids = [row[0] for row in await cursor.fetchall()]
                if ids:
                    deleted = await conn.execute("DELETE FROM events WHERE completion_id = ANY(%s)", (ids,))
                    events += max(deleted.rowcount, 0)
            completions += len(ids)
            if len(ids) < _PURGE_CHUNK:
                break
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE quarantine SET content = NULL"
                " WHERE content IS NOT NULL AND COALESCE(stored_at, at) < %s",
                (cutoff,),
            )
        return Purged(events=events, completions=completions)

    async def add_token(self, name: str, role: str, token_hash: str) -> int:
        rows = await self._db.fetch(
            "INSERT INTO tokens (name, role, hash, created_at) VALUES (%s, %s, %s, %s) RETURNING id",
            (name, role, token_hash, time.time()),
        )
        return int(rows[0][0])

    async def revoke_token(self, token_id: int) -> bool:
        rows = await self._db.fetch(
            "UPDATE tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL RETURNING id",
            (time.time(), token_id),
        )
        return bool(rows)

    async def tokens(self, include_revoked: bool = False) -> list[TokenRecord]:
        sql = "SELECT id, name, role, hash, created_at, revoked_at FROM tokens"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        rows = await self._db.fetch(sql + " ORDER BY id")
        return [
            TokenRecord(id=id_, name=name, role=role, hash=digest, created_at=created, revoked_at=revoked)
            for id_, name, role, digest, created, revoked in rows
        ]

    async def get_setting(self, key: str) -> Any:
        rows = await self._db.fetch("SELECT value FROM backend_settings WHERE key = %s", (key,))
        return json.loads(rows[0][0]) if rows else None

    async def set_setting(self, key: str, value: Any) -> None:
        async with self._db.transaction() as conn:
            if value is None:
                await conn.execute("DELETE FROM backend_settings WHERE key = %s", (key,))
            else:
                await conn.execute(
                    "INSERT INTO backend_settings (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )
