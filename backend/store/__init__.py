"""The backend's store: the interface the rest of the backend uses, and the store behind it.

Outside this package the backend names only what is exported here: `Store` (the interface,
`interface.py`), its result types, and `open_store`. Today's store is SQLite (`sqlite/`); nothing
of SQL, aiosqlite or SQLite's rows crosses the interface, so a PostgreSQL store can stand beside it.
"""

from __future__ import annotations

from backend.store.interface import (
    COMPLETIONS,
    EVENTS,
    LIVE,
    RETIRED,
    STATES,
    ArmFigures,
    Entered,
    Moments,
    Purged,
    SeriesPoint,
    SetAside,
    Slice,
    Stats,
    Store,
    TokenRecord,
    Transition,
    UnknownCheckpoint,
    VersionStats,
    reason_of,
)
from core.config import Settings

__all__ = [
    "COMPLETIONS",
    "EVENTS",
    "LIVE",
    "RETIRED",
    "STATES",
    "ArmFigures",
    "Entered",
    "Moments",
    "Purged",
    "SeriesPoint",
    "SetAside",
    "Slice",
    "Stats",
    "Store",
    "TokenRecord",
    "Transition",
    "UnknownCheckpoint",
    "VersionStats",
    "open_store",
    "reason_of",
]


async def open_store(settings: Settings) -> Store:
    """The store the settings name, opened and its schema brought up to date: SQLite at
    `settings.database_path` (a later setting will name a PostgreSQL database instead)."""
    # Imported here: a backend on another store need not load SQLite's driver.
    from backend.store.sqlite import SqliteStore

    return await SqliteStore.open(settings.database_path)
