"""The store's figures per client kind and language (issue 21), on SQLite and PostgreSQL (the `store`
fixture, tests/conftest.py), and SQLite's migration of older rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_store import sqlite_at_step

from backend.store import Store
from backend.store.sqlite import SqliteStore
from core import wire
from core.config import RewardConfig

T0 = 1_000_000.0
REWARDS = RewardConfig()


async def served(store: Store, cid: str, client: str, language: str, text: str, at: float) -> None:
    await store.record_completion(
        completion_id=cid,
        user_id="u1",
        model_version="base",
        context={"prefix": "x = ", "suffix": "", "path": "a", "language": language},
        prompt_ids=[1, 2],
        completion_ids=[5, 0] if text else [0],
        token_logprobs=[-0.5, -0.1] if text else [-0.1],
        temperature=0.7,
        text=text,
        created_at=at,
        latency_ms=3.0,
        client=client,
        language=language,
    )


def event(n: int, cid: str, kind: str, **fields: object) -> dict[str, object]:
    return {"event_id": f"event-{n:06d}", "completion_id": cid, "kind": kind, "client_ts": T0, **fields}


async def test_breakdown_by_client_and_language_within_a_range(store: Store) -> None:
    await served(store, "t1", "tabby", "python", "return 1", T0)
    await served(store, "t2", "tabby", "python", "pass", T0 + 1)
    await served(store, "t3", "tabby", "rust", "", T0 + 2)
    await served(store, "o1", "openai", "python", "x", T0 + 3)
    await served(store, "late", "tabby", "python", "y", T0 + 100)
    valid, refused = wire.judge_events(
        [
            event(1, "t1", "shown"),
            event(2, "t1", "accepted", final=True),
            event(3, "t2", "shown"),
            event(4, "t2", "rejected", final=True),
        ]
    )
    assert not refused
    await store.store_events(valid, [], received_at=T0 + 5)
    await store.finalize_due(T0 + 10_000, 660.0, REWARDS, 250.0)

    slices = await store.breakdown(T0, T0 + 50)
    by_key = {(s["client"], s["language"]): s for s in slices}
    assert list(by_key) == [("openai", "python"), ("tabby", "python"), ("tabby", "rust")]
    tabby = by_key["tabby", "python"]
    # The late one is outside the range; t1 accepted whole (no survival check: s = 1), t2 dismissed.
    assert (tabby["served"], tabby["shown"], tabby["finalized"], tabby["rated"], tabby["accepted"]) == (
        2,
        2,
        2,
        2,
        1,
    )
    assert tabby["reward_sum"] == pytest.approx(REWARDS.accepted + REWARDS.rejected)
    assert tabby["arc_sum"] == pytest.approx(len("return 1"))
    # The abstention is served and trainable, never shown nor rated.
    rust = by_key["tabby", "rust"]
    assert (rust["served"], rust["shown"], rust["trainable"], rust["rated"]) == (1, 0, 1, 0)
    # No outcome events: the OpenAI completion's episode is kept but has no reward (no_feedback).
    openai = by_key["openai", "python"]
    assert (openai["served"], openai["finalized"], openai["trainable"], openai["rated"]) == (1, 1, 0, 0)

    assert [s["served"] for s in await store.breakdown(T0 + 50)] == [1]
    series = await store.series(T0, 10.0, until=T0 + 50)
    assert sum(point["served"] for point in series) == 4


async def test_rows_from_before_client_kinds_count_as_the_language_servers(tmp_path: Path) -> None:
    """A database written before migration 5: its completions are the language server's, in the
    language their context names."""
    path = tmp_path / "old.sqlite3"
    with sqlite_at_step(path, 4) as db:
        db.execute(
            "INSERT INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
            " completion_ids, token_logprobs, temperature, text, created_at, latency_ms)"
            " VALUES ('c1', 'u', 'base', '{\"prefix\": \"\", \"language\": \"go\"}', '[]', '[]', '[]',"
            " 0.7, 'x', ?, 1.0), ('c2', 'u', 'base', 'not json', '[]', '[]', '[]', 0.7, 'x', ?, 1.0)",
            (T0, T0),
        )
    store = await SqliteStore.open(path)
    try:
        slices = await store.breakdown(0.0)
    finally:
        await store.close()
    assert [(s["client"], s["language"], s["served"]) for s in slices] == [("lsp", "", 1), ("lsp", "go", 1)]
