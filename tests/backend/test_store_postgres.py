"""What only the PostgreSQL store has, on a real server: numbered migrations applied once under
an advisory lock, and several backends (here, several stores) on one database at the same time."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from old_tokens import LAST_ID_HANDED_OUT, OLD_TOKENS, assert_tokens_kept_and_metrics_allowed

from backend.store.postgres import SCHEMA_VERSION, PostgresStore, SchemaTooNew
from backend.store.postgres.schema import MIGRATIONS_DIR, migrate, steps
from core.config import RewardConfig
from core.wire import ServingDecision

T0 = 1_000_000.0
_names = itertools.count(1)


@pytest.fixture
def empty_database(postgres_server: Any) -> str:
    """A database with nothing in it, not even the schema: its URL."""
    name = f"empty_{next(_names)}"
    postgres_server.execute(f"CREATE DATABASE {name}")
    return postgres_server.url(name)


@pytest.fixture
async def two(postgres_server: Any) -> Any:
    """Two stores on one migrated database, as two backends would open it."""
    name = f"shared_{next(_names)}"
    postgres_server.execute(f"CREATE DATABASE {name} TEMPLATE flywheel_template")
    stores = [await PostgresStore.open(postgres_server.url(name)) for _ in range(2)]
    yield stores
    for store in stores:
        await store.close()


async def database_at_step(url: str, step: int, tmp_path: Path) -> None:
    """The empty database at `url` migrated through `step` only, as the release of that step left it."""
    before = tmp_path / f"steps-to-{step}"
    before.mkdir()
    for each in steps()[:step]:
        shutil.copy(MIGRATIONS_DIR / f"{each.number:04d}_{each.name}.sql", before)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert await migrate(conn, before) == step


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode() if not params else sql, params).fetchall()  # type: ignore[arg-type]


async def completion(store: PostgresStore, cid: str, at: float = T0, text: str = "return x") -> None:
    await store.record_completion(
        completion_id=cid,
        user_id="u1",
        model_version="base",
        context={"prefix": "def f(x):\n    ", "language": "python"},
        prompt_ids=[1, 2],
        completion_ids=[7, 0],
        token_logprobs=[-0.5, -0.1],
        temperature=0.7,
        text=text,
        created_at=at,
        latency_ms=3.0,
    )


def shown(cid: str, n: int, final: bool = False) -> dict[str, Any]:
    return {
        "event_id": f"event-{cid}-{n:04d}",
        "completion_id": cid,
        "kind": "rejected" if final else "shown",
        "client_ts": T0 + n,
        "visible_ms": 900,
        "final": final,
    }


# --- migrations -----------------------------------------------------------------------------


async def test_migrations_are_numbered_files_applied_once_and_recorded(empty_database: str) -> None:
    assert [step.number for step in steps()] == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION >= 2
    store = await PostgresStore.open(empty_database)
    await completion(store, "c1")
    await store.close()
    recorded = query(empty_database, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert recorded == [(step.number, step.name) for step in steps()]
    # Opening again runs no step twice (ALTER TABLE ADD COLUMN would fail) and keeps the rows.
    again = await PostgresStore.open(empty_database)
    try:
        assert (await again.add_events([shown("c1", 1)], T0)).stored == 1
    finally:
        await again.close()
    assert len(query(empty_database, "SELECT * FROM schema_migrations")) == SCHEMA_VERSION


async def test_backends_starting_at_once_migrate_once(empty_database: str) -> None:
    """Four backends open one new database together: the advisory lock has each step applied by
    one of them while the others wait, then find it recorded."""
    stores = await asyncio.gather(*(PostgresStore.open(empty_database, pool_size=1) for _ in range(4)))
    await asyncio.gather(*(store.close() for store in stores))
    assert len(query(empty_database, "SELECT * FROM schema_migrations")) == SCHEMA_VERSION


async def test_an_older_database_is_brought_forward_with_its_rows(
    empty_database: str, tmp_path: Path
) -> None:
    """A database of the first step, with a completion in it, as the first release left it; the
    next start applies the later steps to it (the language comes from the stored context)."""
    await database_at_step(empty_database, 1, tmp_path)
    with psycopg.connect(empty_database) as conn:
        for cid, context in (("c1", '{"prefix": "", "language": "go"}'), ("c2", "not json")):
            conn.execute(
                "INSERT INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
                " completion_ids, token_logprobs, temperature, text, created_at, latency_ms)"
                " VALUES (%s, 'u', 'base', %s, '[]', '[]', '[]', 0.7, 'x', %s, 1.0)",
                (cid, context, T0),
            )
    store = await PostgresStore.open(empty_database)
    try:
        slices = await store.breakdown(0.0)
    finally:
        await store.close()
    assert [(s["client"], s["language"], s["served"]) for s in slices] == [("lsp", "", 1), ("lsp", "go", 1)]


async def test_a_database_before_the_metrics_role_keeps_its_tokens(
    empty_database: str, tmp_path: Path
) -> None:
    """A database of steps 1 and 2 with tokens in it: 0003 allows the role metrics and keeps every
    row and the id sequence."""
    await database_at_step(empty_database, 2, tmp_path)
    with psycopg.connect(empty_database) as conn:
        conn.cursor().executemany(
            "INSERT INTO tokens OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s)", OLD_TOKENS
        )
    with pytest.raises(psycopg.errors.CheckViolation), psycopg.connect(empty_database) as conn:
        conn.execute("INSERT INTO tokens (name, role, hash, created_at) VALUES ('p', 'metrics', 'd', 0)")
    with psycopg.connect(empty_database) as conn:
        # After the refused insert above, which took an id from the sequence too.
        conn.execute("SELECT setval(pg_get_serial_sequence('tokens', 'id'), %s)", (LAST_ID_HANDED_OUT,))
    store = await PostgresStore.open(empty_database)
    try:
        await assert_tokens_kept_and_metrics_allowed(store)
    finally:
        await store.close()


async def test_a_database_from_before_decisions_is_brought_forward(
    empty_database: str, tmp_path: Path
) -> None:
    """A database of steps 1-3 with a completion in it: 0004 adds the decision column, the old
    row's episode has none, and a new row keeps its own."""
    await database_at_step(empty_database, 3, tmp_path)
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "INSERT INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
            " completion_ids, token_logprobs, temperature, text, created_at, latency_ms)"
            " VALUES ('old', 'u', 'base', '{\"prefix\": \"\"}', '[1]', '[]', '[]', 0.7, '', %s, 1.0)",
            (T0,),
        )
    store = await PostgresStore.open(empty_database)
    try:
        new = ServingDecision(rule="learned", features={"confidence": -0.5}, shown=False, propensity=0.5)
        await store.record_completion(
            completion_id="new",
            user_id="u1",
            model_version="base",
            context={"prefix": "def f(x):\n    ", "language": "python"},
            prompt_ids=[1, 2],
            completion_ids=[],
            token_logprobs=[],
            temperature=0.7,
            text="",
            created_at=T0,
            latency_ms=3.0,
            decision=new,
        )
        assert await store.finalize_due(T0 + 1000, 660.0, RewardConfig(), 250.0) == 2
        page = await store.episodes_after(0, 10)
    finally:
        await store.close()
    assert {e.completion_id: e.decision for e in page.episodes} == {"old": None, "new": new}
    assert query(empty_database, "SELECT max(version) FROM schema_migrations") == [(SCHEMA_VERSION,)]


async def test_refuses_a_database_from_newer_code(empty_database: str) -> None:
    await (await PostgresStore.open(empty_database)).close()
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, 'future')", (SCHEMA_VERSION + 1,)
        )
    with pytest.raises(SchemaTooNew):
        await PostgresStore.open(empty_database)


# --- several backends on one database -------------------------------------------------------


async def test_a_pass_runs_in_one_backend_at_a_time_and_a_dead_one_lets_go(two: Any) -> None:
    store, other = two
    async with store.exclusive("finalize") as mine:
        async with other.exclusive("finalize") as theirs, store.exclusive("finalize") as again:
            # Held here: neither the other backend nor a second pass of this one runs it.
            assert (mine, theirs, again) == (True, False, False)
        async with other.exclusive("retention") as retention:
            assert retention  # another pass is another lock
    async with other.exclusive("finalize") as theirs:
        assert theirs
        # The holder's connection dies (its backend was killed): the lock goes with it.
        query(store.url, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'")
        async with store.exclusive("finalize", wait=True) as mine:
            assert mine


async def test_two_backends_store_each_event_once_and_finalize_each_completion_once(two: Any) -> None:
    store, other = two
    cids = [f"c{i:03d}" for i in range(60)]
    for i, cid in enumerate(cids):
        await completion(store, cid, at=T0 + i)
    batches = [[shown(cid, 1), shown(cid, 2, final=True)] for cid in cids]
    # Every batch sent to both backends at once, as a client that resends through the other one.
    answers = await asyncio.gather(
        *(s.add_events(batch, T0 + 1) for batch in batches for s in (store, other))
    )
    assert sum(a.stored for a in answers) == 120
    assert sum(a.duplicates for a in answers) == 120
    assert query(store.url, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events") == [(120, 120)]

    closed = await asyncio.gather(
        *(s.finalize_due(T0 + 30, 660.0, RewardConfig(), 250.0) for s in (store, other, store, other))
    )
    assert sum(closed) == 60
    seqs = query(store.url, "SELECT completion_id FROM episodes ORDER BY seq")
    assert sorted(cid for (cid,) in seqs) == cids
    page = await other.episodes_after(0, 100)
    assert len(page.episodes) == 60
