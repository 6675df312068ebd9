"""The backend's store: the only code that opens Flywheel's SQLite database.

`Store` gathers one concern per module: ingest (completions, events), episodes (finalize, the
trainer's feed, re-scoring), registry (checkpoints), stats and outcomes (the dashboard, the
canary's test), upkeep (retention, tokens, settings), quarantine (rows that could not be read).
Schema steps live in `schema`; the file and its connections in `database`.
"""

from __future__ import annotations

from pathlib import Path

from backend.store.database import Database
from backend.store.episodes import EpisodesMixin
from backend.store.ingest import EventWriter, IngestMixin
from backend.store.outcomes import ArmFigures, Moments, OutcomesMixin
from backend.store.quarantine import QuarantineMixin
from backend.store.registry import STATES, RegistryMixin, UnknownCheckpoint
from backend.store.schema import SCHEMA_VERSION, SchemaTooNew
from backend.store.stats import StatsMixin
from backend.store.upkeep import UpkeepMixin

__all__ = ["SCHEMA_VERSION", "STATES", "ArmFigures", "Moments", "SchemaTooNew", "Store", "UnknownCheckpoint"]


class Store(
    IngestMixin, EpisodesMixin, RegistryMixin, StatsMixin, OutcomesMixin, UpkeepMixin, QuarantineMixin
):
    def __init__(self, db: Database) -> None:
        self._db = db
        self._event_writer = EventWriter(db)

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating directories and file as needed) and bring the schema up to date."""
        return cls(await Database.open(Path(path)))

    async def close(self) -> None:
        await self._event_writer.flush()
        await self._db.close()

    @property
    def path(self) -> Path:
        return self._db.path
