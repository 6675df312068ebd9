"""Versioned schema: numbered SQL files in migrations/, applied in order, recorded in a table.

`schema_migrations` holds one row per step applied. A step is applied in its own transaction
together with its row, under a transaction-level advisory lock, so backends that start at once
against a new or older database apply each step exactly once (the others wait, then find it
recorded). Never edit a released file; add the next number, and every existing database is
brought forward on the next start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from psycopg import AsyncConnection

from backend.store.postgres.locks import MIGRATE, lock_key

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Step:
    number: int
    name: str
    sql: str


def steps(folder: Path = MIGRATIONS_DIR) -> list[Step]:
    """The migration files in order; their numbers must run 1, 2, 3, … without gaps."""
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append(Step(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    found.sort(key=lambda step: step.number)
    numbers = [step.number for step in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {numbers}")
    return found


SCHEMA_VERSION = len(steps())


class SchemaTooNew(RuntimeError):
    """The database was written by a newer Flywheel; migrating backwards is not possible."""


async def migrate(conn: AsyncConnection, folder: Path = MIGRATIONS_DIR) -> int:
    """Apply the steps this database lacks, each atomically. Returns the resulting version.

    `conn` must be in autocommit mode so that each step's transaction is its own.
    """
    todo = steps(folder)
    current = 0
    for step in todo:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(MIGRATE))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            row = await cursor.fetchone()
            current = int(row[0]) if row else 0
            if current > len(todo):
                raise SchemaTooNew(f"database schema v{current} is newer than this code's v{len(todo)}")
            if step.number <= current:
                continue
            # No parameters: psycopg sends the file as one simple query, its statements in order.
            await conn.execute(step.sql.encode())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (step.number, step.name)
            )
            current = step.number
    return current
