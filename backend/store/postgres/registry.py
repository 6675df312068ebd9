"""Checkpoint bookkeeping: each version's state, and every transition with its reasons and figures.

As backend/store/sqlite/registry.py; each write runs under the registry's transaction-level
advisory lock, so backends that move versions at once do so one after the other, and the one
live version of the unique index is never fought over.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg

from backend.store.interface import LIVE, RETIRED, Entered, Transition, UnknownCheckpoint
from backend.store.postgres.database import Database
from backend.store.postgres.locks import REGISTRY
from backend.store.rows import check_state, checkpoint_info, entered_of, transitions_of
from core import wire


class RegistryMixin:
    _db: Database

    async def next_version(self) -> str:
        """Reserve the next version name: "v1", "v2", ... never handed out twice."""
        async with self._db.transaction(lock=REGISTRY) as conn:
            while True:
                row = await (await conn.execute("SELECT nextval('version_numbers')")).fetchone()
                assert row is not None
                version = f"v{row[0]}"
                # A version added under an explicit name must not be handed out again.
                taken = await conn.execute("SELECT 1 FROM checkpoints WHERE version = %s", (version,))
                if await taken.fetchone() is None:
                    return version

    async def add_checkpoint(
        self,
        version: str,
        parent_version: str | None,
        path: Path | str,
        metrics: dict[str, Any] | None = None,
        state: str = "candidate",
        reason: str = "uploaded",
        created_at: float | None = None,
    ) -> None:
        """Register a checkpoint and record its first transition (from nothing to `state`)."""
        check_state(state)
        at = time.time() if created_at is None else created_at
        metrics_json = json.dumps(metrics or {})
        async with self._db.transaction(lock=REGISTRY) as conn:
            if state == LIVE:
                await _retire_live(conn, version, at)
            await conn.execute(
                "INSERT INTO checkpoints (version, parent_version, state, path, created_at, metrics)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (version, parent_version, state, str(path), at, metrics_json),
            )
            await _record(conn, version, None, state, reason, metrics_json, at)

    async def transition(
        self, version: str, to_state: str, reason: str, metrics: dict[str, Any] | None = None
    ) -> None:
        """Move a version to `to_state` and record why; going live retires the previous live one.
        `metrics` are recorded with the transition and merged into the checkpoint's own."""
        check_state(to_state)
        at = time.time()
        async with self._db.transaction(lock=REGISTRY) as conn:
            cursor = await conn.execute(
                "SELECT state, metrics FROM checkpoints WHERE version = %s", (version,)
            )
            row = await cursor.fetchone()
            if row is None:
                raise UnknownCheckpoint(version)
            from_state, old_metrics = row
            if to_state == LIVE:
                await _retire_live(conn, version, at)
            merged = {**json.loads(old_metrics), **(metrics or {})}
            await conn.execute(
                "UPDATE checkpoints SET state = %s, metrics = %s WHERE version = %s",
                (to_state, json.dumps(merged), version),
            )
            await _record(conn, version, from_state, to_state, reason, json.dumps(metrics or {}), at)

    async def live_version(self) -> str:
        rows = await self._db.fetch("SELECT version FROM checkpoints WHERE state = %s", (LIVE,))
        return rows[0][0] if rows else wire.BASE_VERSION

    async def versions_in(self, state: str) -> list[str]:
        rows = await self._db.fetch(
            "SELECT version FROM checkpoints WHERE state = %s ORDER BY added", (state,)
        )
        return [row[0] for row in rows]

    async def entered(self, version: str, state: str) -> Entered | None:
        rows = await self._db.fetch(
            "SELECT reason, metrics, at FROM checkpoint_transitions WHERE version = %s AND to_state = %s"
            " ORDER BY id DESC LIMIT 1",
            (version, state),
        )
        if not rows:
            return None
        return entered_of(rows[0])

    async def checkpoint(self, version: str) -> wire.CheckpointInfo | None:
        rows = await self._db.fetch(
            "SELECT version, state, parent_version, created_at, metrics FROM checkpoints WHERE version = %s",
            (version,),
        )
        return checkpoint_info(rows[0]) if rows else None

    async def checkpoint_path(self, version: str) -> Path | None:
        rows = await self._db.fetch("SELECT path FROM checkpoints WHERE version = %s", (version,))
        return Path(rows[0][0]) if rows else None

    async def checkpoints(self) -> list[wire.CheckpointInfo]:
        rows = await self._db.fetch(
            "SELECT version, state, parent_version, created_at, metrics FROM checkpoints ORDER BY added"
        )
        return [checkpoint_info(row) for row in rows]

    async def transitions(self, version: str | None = None) -> list[Transition]:
        sql = "SELECT id, version, from_state, to_state, reason, metrics, at FROM checkpoint_transitions"
        params: tuple[str, ...] = ()
        if version is not None:
            sql += " WHERE version = %s"
            params = (version,)
        rows = await self._db.fetch(sql + " ORDER BY id", params)
        return transitions_of(rows)


async def _retire_live(conn: psycopg.AsyncConnection, successor: str, at: float) -> None:
    cursor = await conn.execute(
        "UPDATE checkpoints SET state = %s WHERE state = %s AND version != %s RETURNING version",
        (RETIRED, LIVE, successor),
    )
    for (previous,) in await cursor.fetchall():
        await _record(conn, previous, LIVE, RETIRED, f"superseded by {successor}", "{}", at)


async def _record(
    conn: psycopg.AsyncConnection,
    version: str,
    from_state: str | None,
    to_state: str,
    reason: str,
    metrics_json: str,
    at: float,
) -> None:
    await conn.execute(
        "INSERT INTO checkpoint_transitions (version, from_state, to_state, reason, metrics, at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (version, from_state, to_state, reason, metrics_json, at),
    )
