"""The PostgreSQL database: a pool of connections, the schema brought up to date, and leases.

Each write is one transaction on a pooled connection; PostgreSQL's MVCC lets readers see only
committed data while writes run, so nothing here needs SQLite's single-writer lock. What must
happen in order across backends (episode seqs, registry transitions) takes a transaction-level
advisory lock inside its transaction (locks.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from backend.store.postgres.locks import Leases, lock_key
from backend.store.postgres.schema import migrate

# PostgreSQL aborts one of two transactions that wait on each other (or, under a stricter level,
# that conflict); the loser may simply run again.
_RETRIED = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_TRIES = 3

T = TypeVar("T")


class Database:
    def __init__(self, url: str, pool: AsyncConnectionPool) -> None:
        self.url = url
        self.pool = pool
        self.leases = Leases(url)

    @classmethod
    async def open(cls, url: str, pool_size: int = 8) -> Database:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn)
        pool = AsyncConnectionPool(
            url, min_size=1, max_size=max(pool_size, 1), kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True)
        return cls(url, pool)

    async def close(self) -> None:
        await self.leases.close()
        await self.pool.close()

    async def fetch(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read, on whichever pooled connection is free."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    @asynccontextmanager
    async def transaction(self, lock: str | None = None) -> AsyncIterator[psycopg.AsyncConnection]:
        """One write transaction: committed on exit, rolled back if the body raises. With `lock`,
        under that transaction-level advisory lock: one such transaction at a time, cluster-wide."""
        async with self.pool.connection() as conn, conn.transaction():
            if lock is not None:
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(lock))
            yield conn

    async def retrying(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()` (which opens its own transaction), run again when PostgreSQL chose it as the
        loser of a deadlock: each try is whole or absent."""
        for attempt in range(_TRIES):
            try:
                return await work()
            except _RETRIED:
                if attempt == _TRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")
