"""The SQLite file and its two connections: one writer, one reader.

WAL lets the reader see only committed data while a write is in progress, so the trainer's pulls
and the admin page never wait behind, or observe half of, an ingest or finalize transaction.
Writes go through one connection under an asyncio lock: SQLite allows one writer anyway, and the
lock keeps coroutines from interleaving statements inside each other's transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from backend.store.sqlite.schema import migrate

BUSY_TIMEOUT_MS = 5000
WAL_CHECKPOINT_PAGES = 10_000


class Database:
    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self.reader = reader
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await writer.execute("PRAGMA journal_mode = WAL")
            # Checkpoints are where WAL mode syncs to disk; every 1,000 pages (the default) they
            # cost ingestion half its rate. 10,000 pages bounds the WAL at about 40 MB.
            await writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            await migrate(writer)
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        await reader.execute("PRAGMA query_only = ON")
        return cls(path, writer, reader)

    async def close(self) -> None:
        async with self._lock:
            await self.reader.close()
            await self._writer.close()

    async def write_one(self, sql: str, parameters: tuple[object, ...]) -> None:
        """One statement, its own transaction: one hand-off to the writer's thread instead of the
        three of BEGIN, the statement and COMMIT (each completion served is one such row)."""
        async with self._lock:
            # execute_fetchall runs and finishes the statement on the writer's thread in one call.
            await self._writer.execute_fetchall(sql, parameters)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: committed on exit, rolled back if the body raises."""
        async with self._lock:
            # IMMEDIATE takes the write lock up front instead of failing on upgrade later.
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                # Shielded so a cancelled request still leaves the connection outside a transaction.
                await asyncio.shield(self._writer.execute("ROLLBACK"))
                raise
            await asyncio.shield(self._writer.execute("COMMIT"))


async def _connect(path: Path) -> aiosqlite.Connection:
    # Autocommit mode: transactions are explicit (Database.transaction), never implied by Python.
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await db.execute("PRAGMA foreign_keys = ON")
    return db
