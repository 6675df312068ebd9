"""The backend's store: the interface the rest of the backend uses, and the store behind it.

Outside this package the backend names only what is exported here: `Store` (the interface,
`interface.py`), its result types, and `open_store`. The stores are SQLite (`sqlite/`, the embedded
default) and PostgreSQL (`postgres/`, for several backends); nothing of SQL, a driver or a row
crosses the interface.
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

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

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
    """The store the settings name, opened and its schema brought up to date: PostgreSQL when
    `store.url` names one ("postgresql://…"), else SQLite at `settings.database_path`."""
    # Imported here: a backend on one store need not load the other's driver.
    url = settings.store.url
    if url:
        if not url.startswith(POSTGRES_SCHEMES):
            raise ValueError(f"store.url: expected a postgresql:// URL, got {url.split(':')[0]}:…")
        from backend.store.postgres import PostgresStore

        return await PostgresStore.open(url, settings.store.pool_size)
    from backend.store.sqlite import SqliteStore

    return await SqliteStore.open(settings.database_path)
