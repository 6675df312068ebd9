"""Advisory locks: how backends that share one PostgreSQL database take turns.

Every key is a pair (Flywheel's namespace, a number per job), so Flywheel's locks never collide
with another application's on the same server. Transaction-level locks (pg_advisory_xact_lock)
serialize writes that must commit in order (episode seqs, registry transitions, migrations);
session-level try-locks (`Leases`) let one backend run a background pass while the others skip it.
A lock held by a backend that dies goes with its connection: no lease to expire, no election.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import psycopg

log = logging.getLogger(__name__)

NAMESPACE = 0x466C7977  # "Flyw"
MIGRATE = "migrate"
EPISODES = "episodes"  # inserting episodes: seqs commit in the order they were drawn
REGISTRY = "registry"  # checkpoint transitions
_KEYS = {MIGRATE: 1, EPISODES: 2, REGISTRY: 3}
# A waiting backend tries again this often rather than blocking its one lock connection, which
# also releases the locks it holds.
_RETRY_S = 0.05


def lock_key(name: str) -> tuple[int, int]:
    """The advisory lock pair for `name`: a fixed number for the store's own, a stable hash else."""
    if name in _KEYS:
        return NAMESPACE, _KEYS[name]
    # Stable across processes and versions (Python's hash() is salted per process).
    return NAMESPACE, 1000 + int.from_bytes(name.encode()[:16].ljust(16, b"\0"), "big") % 1_000_000_000


class Leases:
    """Session-level advisory locks on one connection of their own, by name.

    PostgreSQL's locks are re-entrant within a session, so a lock taken here is also kept under
    an asyncio lock: one holder per name in this process, one process per name in the cluster.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection | None = None
        self._local: dict[str, asyncio.Lock] = {}
        self._talk = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, name: str, wait: bool) -> AsyncIterator[bool]:
        local = self._local.setdefault(name, asyncio.Lock())
        if local.locked() and not wait:
            yield False
            return
        async with local:
            got = await self._try(name)
            while wait and not got:
                await asyncio.sleep(_RETRY_S)
                got = await self._try(name)
            try:
                yield got
            finally:
                if got:
                    await asyncio.shield(self._release(name))

    async def _try(self, name: str) -> bool:
        async with self._talk:
            conn = await self._connection()
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", lock_key(name))
            row = await cursor.fetchone()
            return bool(row and row[0])

    async def _release(self, name: str) -> None:
        async with self._talk:
            if self._conn is None or self._conn.broken or self._conn.closed:
                return  # the session ended, and its locks with it
            try:
                await self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", lock_key(name))
            except psycopg.OperationalError:
                log.warning("lost the lock connection while releasing %s; its locks went with it", name)
                await self._drop()

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.broken or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
        self._conn = None

    async def close(self) -> None:
        async with self._talk:
            await self._drop()
