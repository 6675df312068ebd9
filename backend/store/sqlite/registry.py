"""Checkpoint bookkeeping: each version's state, and every transition with its reasons and figures.

The state machine itself (what may follow what) belongs to backend/checkpoints.py; this module
records states and keeps the one invariant the database can: at most one version is live.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiosqlite

from backend.store.interface import (
    LIVE,
    RETIRED,
    Entered,
    Transition,
    UnknownCheckpoint,
)
from backend.store.rows import check_state, checkpoint_info, entered_of, transitions_of
from backend.store.sqlite.database import Database
from core import wire


class RegistryMixin:
    _db: Database

    async def next_version(self) -> str:
        """Reserve the next version name: "v1", "v2", ... never handed out twice."""
        async with self._db.transaction() as db:
            while True:
                cursor = await db.execute("INSERT INTO version_numbers DEFAULT VALUES")
                version = f"v{cursor.lastrowid}"
                await cursor.close()
                # A version added under an explicit name must not be handed out again.
                taken = await db.execute_fetchall("SELECT 1 FROM checkpoints WHERE version = ?", (version,))
                if not taken:
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
        async with self._db.transaction() as db:
            if state == LIVE:
                await _retire_live(db, version, at)
            await db.execute(
                "INSERT INTO checkpoints (version, parent_version, state, path, created_at, metrics)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (version, parent_version, state, str(path), at, metrics_json),
            )
            await _record(db, version, None, state, reason, metrics_json, at)

    async def transition(
        self, version: str, to_state: str, reason: str, metrics: dict[str, Any] | None = None
    ) -> None:
        """Move a version to `to_state` and record why; going live retires the previous live one.

        `metrics` are recorded with the transition and merged into the checkpoint's own metrics,
        so CheckpointInfo shows the latest figures (gate results, canary comparison).
        """
        check_state(to_state)
        at = time.time()
        async with self._db.transaction() as db:
            rows = await db.execute_fetchall(
                "SELECT state, metrics FROM checkpoints WHERE version = ?", (version,)
            )
            if not rows:
                raise UnknownCheckpoint(version)
            from_state, old_metrics = rows[0]
            if to_state == LIVE:
                await _retire_live(db, version, at)
            merged = {**json.loads(old_metrics), **(metrics or {})}
            await db.execute(
                "UPDATE checkpoints SET state = ?, metrics = ? WHERE version = ?",
                (to_state, json.dumps(merged), version),
            )
            await _record(db, version, from_state, to_state, reason, json.dumps(metrics or {}), at)

    async def live_version(self) -> str:
        rows = await self._db.reader.execute_fetchall(
            "SELECT version FROM checkpoints WHERE state = ?", (LIVE,)
        )
        return rows[0][0] if rows else wire.BASE_VERSION

    async def versions_in(self, state: str) -> list[str]:
        rows = await self._db.reader.execute_fetchall(
            "SELECT version FROM checkpoints WHERE state = ? ORDER BY rowid", (state,)
        )
        return [row[0] for row in rows]

    async def entered(self, version: str, state: str) -> Entered | None:
        """The latest transition of `version` into `state` (reason, metrics, at), if any."""
        rows = await self._db.reader.execute_fetchall(
            "SELECT reason, metrics, at FROM checkpoint_transitions WHERE version = ? AND to_state = ?"
            " ORDER BY id DESC LIMIT 1",
            (version, state),
        )
        if not rows:
            return None
        return entered_of(rows[0])

    async def checkpoint(self, version: str) -> wire.CheckpointInfo | None:
        rows = await self._db.reader.execute_fetchall(
            "SELECT version, state, parent_version, created_at, metrics FROM checkpoints WHERE version = ?",
            (version,),
        )
        return checkpoint_info(rows[0]) if rows else None

    async def checkpoint_path(self, version: str) -> Path | None:
        rows = await self._db.reader.execute_fetchall(
            "SELECT path FROM checkpoints WHERE version = ?", (version,)
        )
        return Path(rows[0][0]) if rows else None

    async def checkpoints(self) -> list[wire.CheckpointInfo]:
        """All checkpoints in the order they were added."""
        rows = await self._db.reader.execute_fetchall(
            "SELECT version, state, parent_version, created_at, metrics FROM checkpoints ORDER BY rowid"
        )
        return [checkpoint_info(row) for row in rows]

    async def transitions(self, version: str | None = None) -> list[Transition]:
        """Transition history, oldest first: id, version, from_state, to_state, reason, metrics, at."""
        sql = "SELECT id, version, from_state, to_state, reason, metrics, at FROM checkpoint_transitions"
        params: tuple[str, ...] = ()
        if version is not None:
            sql += " WHERE version = ?"
            params = (version,)
        rows = await self._db.reader.execute_fetchall(sql + " ORDER BY id", params)
        return transitions_of(rows)


async def _retire_live(db: aiosqlite.Connection, successor: str, at: float) -> None:
    rows = await db.execute_fetchall(
        "SELECT version FROM checkpoints WHERE state = ? AND version != ?", (LIVE, successor)
    )
    for (previous,) in rows:
        await db.execute("UPDATE checkpoints SET state = ? WHERE version = ?", (RETIRED, previous))
        await _record(db, previous, LIVE, RETIRED, f"superseded by {successor}", "{}", at)


async def _record(
    db: aiosqlite.Connection,
    version: str,
    from_state: str | None,
    to_state: str,
    reason: str,
    metrics_json: str,
    at: float,
) -> None:
    await db.execute(
        "INSERT INTO checkpoint_transitions (version, from_state, to_state, reason, metrics, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (version, from_state, to_state, reason, metrics_json, at),
    )
