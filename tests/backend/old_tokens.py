"""Tokens as a database of the version before the metrics role has them, and what both stores'
migration must make of them (test_store.py on SQLite, test_store_postgres.py on PostgreSQL)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from backend.store import Store

T0 = 1_000_000.0
# Tokens as a database before the metrics role has them: id, name, role, hash, created_at, revoked_at.
# One is revoked, id 3 is missing, and the table's id counter stands at LAST_ID_HANDED_OUT (ids 5..9
# handed out once, in inserts that rolled back): no id may be handed out twice.
OLD_TOKENS = [
    (1, "local admin", "admin", "a" * 64, T0, None),
    (2, "alice", "client", "b" * 64, T0 + 1, T0 + 2),
    (4, "bob", "client", "c" * 64, T0 + 3, None),
]
LAST_ID_HANDED_OUT = 9
COLUMNS = ("id", "name", "role", "hash", "created_at", "revoked_at")


async def assert_tokens_kept_and_metrics_allowed(store: Store) -> None:
    """The rows as they were, then a metrics token beside them with the next id; other roles still refused."""
    kept = await store.tokens(include_revoked=True)
    assert [tuple(t[c] for c in COLUMNS) for t in kept] == OLD_TOKENS  # type: ignore[literal-required]
    assert [t["id"] for t in await store.tokens()] == [1, 4]
    scraper = await store.add_token("prometheus", "metrics", "d" * 64)
    assert scraper == LAST_ID_HANDED_OUT + 1
    assert [(t["id"], t["role"]) for t in await store.tokens()] == [
        (1, "admin"),
        (4, "client"),
        (10, "metrics"),
    ]
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)):
        await store.add_token("x", "root", "e" * 64)
