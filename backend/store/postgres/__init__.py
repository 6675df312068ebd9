"""The store on PostgreSQL: a server that several backends share (psycopg 3 and its pool).

`PostgresStore` implements backend/store/interface.py's `Store` with the semantics of the SQLite
store (backend/store/sqlite/), one concern per module as there: ingest, episodes, registry,
stats and outcomes, upkeep, quarantine. Schema steps are numbered SQL files in migrations/,
applied by `schema`; the pool and the advisory locks that let backends take turns are in
`database` and `locks`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backend.store.postgres.database import Database
from backend.store.postgres.episodes import EpisodesMixin
from backend.store.postgres.ingest import EventWriter, IngestMixin
from backend.store.postgres.outcomes import OutcomesMixin
from backend.store.postgres.quarantine import QuarantineMixin
from backend.store.postgres.registry import RegistryMixin
from backend.store.postgres.schema import SCHEMA_VERSION, SchemaTooNew
from backend.store.postgres.stats import StatsMixin
from backend.store.postgres.upkeep import UpkeepMixin

__all__ = ["SCHEMA_VERSION", "PostgresStore", "SchemaTooNew"]


class PostgresStore(
    IngestMixin, EpisodesMixin, RegistryMixin, StatsMixin, OutcomesMixin, UpkeepMixin, QuarantineMixin
):
    def __init__(self, db: Database) -> None:
        self._db = db
        self._event_writer = EventWriter(db)

    @classmethod
    async def open(cls, url: str, pool_size: int = 8) -> PostgresStore:
        """Connect and bring the schema up to date (the database itself must exist)."""
        return cls(await Database.open(url, pool_size))

    async def close(self) -> None:
        await self._event_writer.flush()
        await self._db.close()

    @property
    def url(self) -> str:
        return self._db.url

    @asynccontextmanager
    async def exclusive(self, name: str, wait: bool = False) -> AsyncIterator[bool]:
        """Whether this backend holds `name` among all those on this database: a session-level
        advisory lock, held until the block ends (or this backend's connection does)."""
        async with self._db.leases.hold(name, wait) as held:
            yield held
