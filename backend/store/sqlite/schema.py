"""Versioned schema: an append-only list of migration steps, applied in order.

`PRAGMA user_version` holds how many steps a database has had. Never edit a released step; add a
new one at the end (later issues will), so every existing database can be brought forward.
"""

from __future__ import annotations

import aiosqlite

# Each step is a list of statements run in one transaction together with the user_version bump.
MIGRATIONS: list[list[str]] = [
    # 1: completions, their outcome events, scored episodes, checkpoints and their history.
    [
        """
        CREATE TABLE completions (
            completion_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            model_version TEXT NOT NULL,
            context TEXT NOT NULL,          -- JSON CompletionContext
            prompt_ids TEXT NOT NULL,       -- JSON list[int]
            completion_ids TEXT NOT NULL,   -- JSON list[int]
            token_logprobs TEXT NOT NULL,   -- JSON list[float]
            temperature REAL NOT NULL,
            text TEXT NOT NULL,
            created_at REAL NOT NULL,
            latency_ms REAL NOT NULL,
            -- Set at ingest when an event with final=True arrives, so finalizing needs no event scan.
            final_seen INTEGER NOT NULL DEFAULT 0,
            finalized_at REAL               -- NULL while the observation window is open
        )
        """,
        # Only open completions are indexed: the finalizer scans this small set every few seconds.
        """
        CREATE INDEX completions_open ON completions (created_at, final_seen)
        WHERE finalized_at IS NULL
        """,
        """
        CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            completion_id TEXT NOT NULL REFERENCES completions (completion_id),
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,          -- the whole wire.Event as JSON, for re-scoring
            client_ts REAL NOT NULL,
            received_at REAL NOT NULL
        )
        """,
        "CREATE INDEX events_by_completion ON events (completion_id)",
        """
        CREATE TABLE episodes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the trainer's cursor; never reused
            completion_id TEXT NOT NULL UNIQUE REFERENCES completions (completion_id),
            outcome TEXT NOT NULL,
            reward REAL,                            -- NULL: not trained on
            similarity REAL,
            accept_visible_ms REAL,
            finalized_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE checkpoints (
            version TEXT PRIMARY KEY,
            parent_version TEXT,
            state TEXT NOT NULL,
            path TEXT NOT NULL,
            created_at REAL NOT NULL,
            metrics TEXT NOT NULL DEFAULT '{}'
        )
        """,
        # At most one live version, enforced by the database rather than by convention.
        "CREATE UNIQUE INDEX checkpoints_one_live ON checkpoints (state) WHERE state = 'live'",
        """
        CREATE TABLE checkpoint_transitions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            version TEXT NOT NULL REFERENCES checkpoints (version),
            from_state TEXT,                -- NULL for the row that records the upload
            to_state TEXT NOT NULL,
            reason TEXT NOT NULL,
            metrics TEXT NOT NULL DEFAULT '{}',
            at REAL NOT NULL
        )
        """,
        "CREATE INDEX checkpoint_transitions_by_version ON checkpoint_transitions (version)",
        # AUTOINCREMENT never hands out a number twice, so version names are never reused.
        "CREATE TABLE version_numbers (n INTEGER PRIMARY KEY AUTOINCREMENT)",
    ],
    # 2: retention marks, indexes for time windows, hashed access tokens, small backend settings.
    [
        # Set when retention has deleted the completion's context and events; the episode stays.
        "ALTER TABLE completions ADD COLUMN purged_at REAL",
        "CREATE INDEX completions_by_time ON completions (created_at)",
        "CREATE INDEX events_by_time ON events (received_at)",
        """
        CREATE TABLE tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('client', 'admin')),
            hash TEXT NOT NULL UNIQUE,      -- sha256 of the token; the token itself is never stored
            created_at REAL NOT NULL,
            revoked_at REAL
        )
        """,
        "CREATE TABLE backend_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    # 3: rows that could not be read, set aside so that no pass stops on them (quarantine.py).
    [
        """
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tbl TEXT NOT NULL,              -- the table the row is from: events, completions
            row_key TEXT NOT NULL,          -- its key there (event_id, completion_id)
            reason TEXT NOT NULL,           -- why it could not be read; never the values themselves
            -- An events row moved here whole, as JSON; NULL for a row left where it was, and once
            -- retention has passed the row's time (stored_at).
            content TEXT,
            stored_at REAL,                 -- when the row itself was stored, when that is known
            at REAL NOT NULL,
            UNIQUE (tbl, row_key)
        )
        """,
    ],
    # 4: completions asked for as part of an evaluation: scored, never in the trainer's pages.
    ["ALTER TABLE completions ADD COLUMN evaluation INTEGER NOT NULL DEFAULT 0"],
    # 5: the kind of client that asked and the context's language, for the dashboard's figures per
    # client kind and language; kept in columns because retention purges the context. Rows before
    # this step were all the language server's.
    [
        "ALTER TABLE completions ADD COLUMN client TEXT NOT NULL DEFAULT 'lsp'",
        "ALTER TABLE completions ADD COLUMN language TEXT NOT NULL DEFAULT ''",
        """
        UPDATE completions SET language = COALESCE(json_extract(context, '$.language'), '')
        WHERE json_valid(context) AND json_type(context, '$.language') = 'text'
        """,
    ],
    # 6: tokens may have the role metrics (a scraper's: /metrics and nothing else). SQLite cannot
    # change a CHECK in place: the table is rebuilt with the same ids, hashes and times, and its
    # AUTOINCREMENT counter carried over so that no id is handed out twice.
    [
        """
        CREATE TABLE tokens_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('client', 'admin', 'metrics')),
            hash TEXT NOT NULL UNIQUE,      -- sha256 of the token; the token itself is never stored
            created_at REAL NOT NULL,
            revoked_at REAL
        )
        """,
        """
        INSERT INTO tokens_new (id, name, role, hash, created_at, revoked_at)
        SELECT id, name, role, hash, created_at, revoked_at FROM tokens ORDER BY id
        """,
        "DELETE FROM sqlite_sequence WHERE name = 'tokens_new'",
        """
        INSERT INTO sqlite_sequence (name, seq)
        SELECT 'tokens_new', seq FROM sqlite_sequence WHERE name = 'tokens'
        """,
        "DROP TABLE tokens",
        "ALTER TABLE tokens_new RENAME TO tokens",
    ],
    # 7: how serving decided whether each completion was shown (core/wire.py ServingDecision, as
    # JSON: its rule, features, called, shown, propensity), for the show policy's fit. Numbers only,
    # no code: kept beyond retention like client and language. NULL for rows before this step.
    ["ALTER TABLE completions ADD COLUMN decision TEXT"],
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer Flywheel; migrating backwards is not possible."""


async def migrate(db: aiosqlite.Connection) -> int:
    """Apply the steps this database lacks, each atomically. Returns the resulting version.

    `db` must be in autocommit mode (isolation_level=None) so the explicit transactions hold.
    """
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(f"database schema v{current} is newer than this code's v{SCHEMA_VERSION}")
    for number, step in enumerate(MIGRATIONS[current:], start=current + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in step:
                await db.execute(statement)
            # user_version lives in the database header and commits with the step.
            await db.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")
    return max(current, SCHEMA_VERSION)
