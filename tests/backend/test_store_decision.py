"""How serving decided whether a completion was shown (wire.ServingDecision) is kept with it and
comes back on its episode, in a real SQLite file and a real PostgreSQL database (conftest.py runs
each test that takes `store` on both); a SQLite database from before the column keeps its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from raw_store import sqlite_at_step

from backend.store import Store
from backend.store.sqlite import SCHEMA_VERSION, SqliteStore
from core.config import RewardConfig
from core.wire import ServingDecision

T0 = 1_000_000.0
FEATURES = {"place_line_start": 1.0, "recent_accept_rate": 0.5, "confidence": -0.75}


async def record(store: Store, cid: str, text: str, decision: ServingDecision | None) -> None:
    await store.record_completion(
        completion_id=cid,
        user_id="u1",
        model_version="base",
        context={"prefix": "def f(x):\n    ", "suffix": "", "path": "a.py", "language": "python"},
        prompt_ids=[1, 2, 3] if decision is None or decision.called else [],
        completion_ids=[7, 8, 0] if text else [],
        token_logprobs=[-0.5, -0.25, -0.125] if text else [],
        temperature=0.7,
        text=text,
        created_at=T0,
        latency_ms=12.5,
        decision=decision,
    )


async def test_each_completion_keeps_its_decision_and_its_episode_returns_it(store: Store) -> None:
    decisions = {
        "explored": ServingDecision(rule="learned", features=FEATURES, shown=True, propensity=0.03),
        "withheld": ServingDecision(rule="learned", features=FEATURES, shown=False, propensity=0.03),
        "skipped": ServingDecision(rule="learned", features={"python": 1.0}, called=False, shown=False),
        "floors": ServingDecision(rule="floors", features=FEATURES),
        "unrecorded": None,
    }
    for cid, decision in decisions.items():
        shown = decision is None or decision.shown
        await record(store, cid, "return x" if shown else "", decision)
        if shown:  # rejected once seen: a reward, so a place in the trainer's page
            rejected = {"event_id": f"e-{cid}", "completion_id": cid, "kind": "rejected", "client_ts": T0}
            await store.add_events([{**rejected, "visible_ms": 900}], T0)
    assert await store.finalize_due(T0 + 1000, 660.0, RewardConfig(), 250.0) == len(decisions)
    page = await store.episodes_after(0, 10)
    assert {e.completion_id: e.decision for e in page.episodes} == decisions


async def test_a_database_from_before_decisions_is_brought_forward(tmp_path: Path) -> None:
    """A SQLite database at step 6 with a completion in it: step 7 adds the column, the old row's
    episode has no decision, and new rows keep theirs."""
    path = tmp_path / "old.sqlite3"
    with sqlite_at_step(path, 6) as db:
        db.execute(
            "INSERT INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
            " completion_ids, token_logprobs, temperature, text, created_at, latency_ms)"
            " VALUES ('old', 'u', 'base', '{\"prefix\": \"\"}', '[1]', '[]', '[]', 0.7, '', ?, 1.0)",
            (T0,),
        )
    store = await SqliteStore.open(path)
    try:
        new = ServingDecision(rule="learned", features=FEATURES, shown=False, propensity=0.5)
        await record(store, "new", "", new)
        assert await store.finalize_due(T0 + 1000, 660.0, RewardConfig(), 250.0) == 2
        page = await store.episodes_after(0, 10)
    finally:
        await store.close()
    assert {e.completion_id: e.decision for e in page.episodes} == {"old": None, "new": new}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchall() == [(SCHEMA_VERSION,)]
