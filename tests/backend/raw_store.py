"""What is really in a store's database, read and written past the store: plain sqlite3 on the
SQLite file, plain psycopg on the PostgreSQL database. SQL is written with `?` placeholders; the
same statement runs on both where the dialects agree."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from backend.store import Store
from backend.store.sqlite import SqliteStore

# Opens a test's store, again and again on the same file or database (conftest.py's open_store_here).
OpenStore = Callable[[], Coroutine[Any, Any, Store]]


def sqlite_at_step(path: Path, step: int) -> sqlite3.Connection:
    """A SQLite database as the store left it after its first `step` schema steps, open for the
    test to fill with rows of that time (a context manager: committed on leaving it)."""
    from backend.store.sqlite.schema import MIGRATIONS

    db = sqlite3.connect(path)
    for statements in MIGRATIONS[:step]:
        for statement in statements:
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {step}")
    return db


def is_sqlite(store: Store) -> bool:
    return isinstance(store, SqliteStore)


def rows(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            return db.execute(sql, params).fetchall()
    import psycopg

    with psycopg.connect(store.url) as conn:  # type: ignore[attr-defined]
        return conn.execute(sql.replace("?", "%s"), params).fetchall()  # type: ignore[arg-type]


def edit(store: Store, sql: str, params: tuple[Any, ...] = ()) -> None:
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            db.execute(sql, params)
        return
    import psycopg

    with psycopg.connect(store.url) as conn:  # type: ignore[attr-defined]
        conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
