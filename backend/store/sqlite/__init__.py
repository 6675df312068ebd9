"""The store on SQLite: one file, WAL mode, one writer connection and one reader (aiosqlite).

`SqliteStore` implements backend/store/interface.py's `Store`, one concern per module: ingest
(completions, events; group commit), episodes (finalize, the trainer's feed, re-scoring), registry
(checkpoints), stats and outcomes (the dashboard, the canary's arms), upkeep (retention, tokens,
settings), quarantine (rows that could not be read). Schema steps live in `schema`; the file, its
pragmas and its connections in `database`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from backend.store.sqlite.database import Database
from backend.store.sqlite.episodes import EpisodesMixin
from backend.store.sqlite.ingest import EventWriter, IngestMixin
from backend.store.sqlite.outcomes import OutcomesMixin
from backend.store.sqlite.quarantine import QuarantineMixin
from backend.store.sqlite.registry import RegistryMixin
from backend.store.sqlite.schema import SCHEMA_VERSION, SchemaTooNew
from backend.store.sqlite.stats import StatsMixin
from backend.store.sqlite.upkeep import UpkeepMixin

__all__ = ["SCHEMA_VERSION", "SchemaTooNew", "SqliteStore"]


class SqliteStore(
    IngestMixin, EpisodesMixin, RegistryMixin, StatsMixin, OutcomesMixin, UpkeepMixin, QuarantineMixin
):
    def __init__(self, db: Database) -> None:
        self._db = db
        self._event_writer = EventWriter(db)

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open (creating directories and file as needed) and bring the schema up to date."""
        return cls(await Database.open(Path(path)))

    async def close(self) -> None:
        await self._event_writer.flush()
        await self._db.close()

    @property
    def path(self) -> Path:
        return self._db.path

    @asynccontextmanager
    async def exclusive(self, name: str, wait: bool = False) -> AsyncIterator[bool]:
        """Always this process's: one backend owns a SQLite file."""
        yield True
