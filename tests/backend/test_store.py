"""The store on a real SQLite file and a real PostgreSQL server (tests/backend/conftest.py runs each
test that takes `store` on both): event ingest, finalizing, the trainer's feed, checkpoints; SQLite's
schema here, PostgreSQL's migrations in test_store_postgres.py."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from old_tokens import LAST_ID_HANDED_OUT, OLD_TOKENS, assert_tokens_kept_and_metrics_allowed
from raw_store import OpenStore, edit, is_sqlite, rows, sqlite_at_step

from backend.finalize import run_finalizer
from backend.store import Store, UnknownCheckpoint
from backend.store.postgres import PostgresStore
from backend.store.sqlite import SCHEMA_VERSION, SchemaTooNew, SqliteStore
from core.config import RewardConfig, Settings

WINDOW = 660.0
MIN_VISIBLE = 250.0
REWARDS = RewardConfig()
T0 = 1_000_000.0


async def completion(
    store: Store,
    cid: str,
    text: str = "return x",
    *,
    at: float = T0,
    model: str = "base",
    user: str = "u1",
    prefix: str = "def f(x):\n    ",
    evaluation: bool = False,
) -> None:
    await store.record_completion(
        completion_id=cid,
        user_id=user,
        model_version=model,
        context={"prefix": prefix, "suffix": "", "path": "a.py", "language": "python"},
        prompt_ids=[1, 2, 3],
        completion_ids=[7, 8, 0] if text else [0],
        token_logprobs=[-0.5, -0.25, -0.125] if text else [-0.01],
        temperature=0.7,
        text=text,
        created_at=at,
        latency_ms=12.5,
        evaluation=evaluation,
    )


_n = 0


def event(cid: str, kind: str, **fields: Any) -> dict[str, Any]:
    global _n
    _n += 1
    return {"event_id": f"event-{_n:06d}", "completion_id": cid, "kind": kind, "client_ts": T0 + _n, **fields}


async def finalize(store: Store, now: float, rewards: RewardConfig = REWARDS) -> int:
    return await store.finalize_due(now, WINDOW, rewards, MIN_VISIBLE)


# --- schema ---------------------------------------------------------------------------------


async def test_open_creates_directories_uses_wal_and_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "db.sqlite3"
    store = await SqliteStore.open(path)
    await completion(store, "c1")
    await store.close()
    assert rows(store, "PRAGMA journal_mode") == [("wal",)]
    assert rows(store, "PRAGMA user_version") == [(SCHEMA_VERSION,)]

    # Reopening must not re-run steps (CREATE TABLE would fail) and must keep the data.
    again = await SqliteStore.open(path)
    try:
        assert (await again.add_events([event("c1", "shown")], T0)).stored == 1
        assert rows(again, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    finally:
        await again.close()


async def test_refuses_a_database_from_newer_code(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew):
        await SqliteStore.open(path)


async def test_a_database_before_the_metrics_role_keeps_its_tokens(tmp_path: Path) -> None:
    """A database at step 5 with tokens in it: step 6 rebuilds the tokens table, whose CHECK SQLite
    cannot change in place, with the role metrics allowed and every row and the id counter kept."""
    path = tmp_path / "db.sqlite3"
    with sqlite_at_step(path, 5) as db:
        db.executemany("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)", OLD_TOKENS)
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'tokens'", (LAST_ID_HANDED_OUT,))
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO tokens (name, role, hash, created_at) VALUES ('p', 'metrics', 'd', 0)")
    store = await SqliteStore.open(path)
    try:
        await assert_tokens_kept_and_metrics_allowed(store)
    finally:
        await store.close()
    assert rows(store, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(store, "SELECT name FROM sqlite_master WHERE tbl_name LIKE 'tokens%'") == [
        ("tokens",),
        ("sqlite_autoindex_tokens_1",),
    ]


async def test_a_metrics_token_is_stored_and_an_unknown_role_refused(store: Store) -> None:
    scraper = await store.add_token("prometheus", "metrics", "d" * 64)
    assert [(t["id"], t["role"], t["hash"]) for t in await store.tokens()] == [(scraper, "metrics", "d" * 64)]
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)):
        await store.add_token("x", "root", "e" * 64)


async def test_a_completion_id_is_recorded_once(store: Store) -> None:
    await completion(store, "c1")
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        await completion(store, "c1")


# --- events ---------------------------------------------------------------------------------


async def test_mixed_batch_stores_the_valid_refuses_the_rest_with_reasons(store: Store) -> None:
    await completion(store, "c1")
    shown = event("c1", "shown", visible_ms=0)
    accepted = event("c1", "accepted", visible_ms=700)
    malformed = {"event_id": "event-bad-1", "completion_id": "c1", "kind": "teleported", "client_ts": "x"}
    unknown = event("nobody", "shown")
    batch = [shown, malformed, accepted, unknown, dict(shown), "not an object"]

    response = await store.add_events(batch, received_at=T0 + 5)

    assert response.stored == 2
    assert response.duplicates == 1
    refused = {r.index: r for r in response.refused}
    assert sorted(refused) == [1, 3, 5]
    assert refused[1].event_id == "event-bad-1"
    assert "kind" in refused[1].reason and "client_ts" in refused[1].reason
    assert refused[3].reason == "unknown completion_id"
    assert refused[3].event_id == unknown["event_id"]
    assert refused[5].event_id is None
    stored = rows(store, "SELECT event_id, kind, received_at FROM events ORDER BY event_id")
    assert stored == [(shown["event_id"], "shown", T0 + 5), (accepted["event_id"], "accepted", T0 + 5)]


async def test_resending_a_batch_stores_nothing_new(store: Store) -> None:
    await completion(store, "c1")
    batch = [event("c1", "shown"), event("c1", "rejected", visible_ms=900)]
    first = await store.add_events(batch, T0)
    second = await store.add_events(batch, T0 + 1)
    assert (first.stored, first.duplicates) == (2, 0)
    assert (second.stored, second.duplicates, second.refused) == (0, 2, [])
    assert rows(store, "SELECT COUNT(*) FROM events") == [(2,)]


async def test_concurrent_writers_do_not_interleave_transactions(store: Store) -> None:
    await asyncio.gather(*(completion(store, f"c{i}") for i in range(10)))
    batches = [[event(f"c{i}", "shown"), event(f"c{i}", "rejected", visible_ms=900)] for i in range(10)]
    results = await asyncio.gather(
        *(store.add_events(b, T0) for b in batches), finalize(store, T0 + WINDOW), store.stats()
    )
    assert sum(r.stored for r in results[:10]) == 20
    assert rows(store, "SELECT COUNT(*) FROM events") == [(20,)]


async def test_batches_committed_together_are_answered_each_on_its_own(store: Store) -> None:
    """Concurrent batches share one transaction; duplicates and unknown completions are still
    attributed to the batch they came in, and each event id is stored once."""
    await completion(store, "c1")
    await completion(store, "c2")
    earlier = event("c1", "shown")
    assert (await store.add_events([earlier], T0)).stored == 1
    shared = event("c2", "shown")
    first = [shared, event("c2", "accepted", visible_ms=500)]
    second = [dict(shared), earlier, event("ghost", "shown"), event("c1", "rejected", visible_ms=900)]
    third = [event("c1", "survival", delay_s=30, similarity=1.0)]

    results = await asyncio.gather(*(store.add_events(b, T0 + 1) for b in (first, second, third)))

    assert [(r.stored, r.duplicates) for r in results] == [(2, 0), (1, 2), (1, 0)]
    assert [(r.index, r.reason) for r in results[1].refused] == [(2, "unknown completion_id")]
    assert rows(store, "SELECT COUNT(*) FROM events") == [(5,)]


async def test_a_group_that_fails_tells_its_senders_and_the_writer_goes_on(store: Store) -> None:
    await completion(store, "c1")
    # A write that the database refuses, whatever the path.
    if is_sqlite(store):
        edit(
            store,
            "CREATE TRIGGER no_rewrites BEFORE INSERT ON events WHEN NEW.kind = 'rewrite'"
            " BEGIN SELECT RAISE(ABORT, 'rewrites refused here'); END",
        )
    else:
        edit(store, "ALTER TABLE events ADD CONSTRAINT rewrites_refused_here CHECK (kind != 'rewrite')")
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError), match=r"rewrites.refused.here"):
        await store.add_events([event("c1", "shown"), event("c1", "rewrite", text="x")], T0)
    assert rows(store, "SELECT COUNT(*) FROM events") == [(0,)]
    assert (await store.add_events([event("c1", "shown")], T0)).stored == 1


# --- finalizing -----------------------------------------------------------------------------


async def test_a_final_event_closes_the_episode_before_its_window(store: Store) -> None:
    await completion(store, "c1", at=T0)
    await completion(store, "c2", at=T0)
    await store.add_events(
        [
            event("c1", "shown"),
            event("c1", "accepted", visible_ms=600),
            event("c1", "survival", delay_s=600, similarity=0.6, final=True),
            event("c2", "shown"),
        ],
        T0 + 1,
    )

    assert await finalize(store, T0 + 601) == 1
    assert await finalize(store, T0 + 602) == 0  # nothing is finalized twice
    assert rows(
        store, "SELECT completion_id, outcome, reward, similarity, accept_visible_ms FROM episodes"
    ) == [("c1", "accepted", pytest.approx(0.35), 0.6, 600.0)]
    assert rows(store, "SELECT completion_id FROM completions WHERE finalized_at IS NULL") == [("c2",)]


async def test_the_window_closes_at_created_at_plus_window(store: Store) -> None:
    await completion(store, "c1", at=T0)
    await store.add_events([event("c1", "shown")], T0 + 1)
    assert await finalize(store, T0 + WINDOW - 0.5) == 0
    assert await finalize(store, T0 + WINDOW) == 1
    # Shown and never resolved: treated as ignored.
    assert rows(store, "SELECT outcome, reward FROM episodes") == [("ignored", -0.25)]


async def test_abstentions_close_at_once_with_reward_zero(store: Store) -> None:
    await completion(store, "quiet", text="", at=T0)
    assert await finalize(store, T0) == 1
    page = await store.episodes_after(0, 10)
    assert [(e.completion_id, e.outcome, e.reward, e.completion_ids) for e in page.episodes] == [
        ("quiet", "abstained", 0.0, [0])
    ]


async def test_finalizer_loop_runs_until_stopped(store: Store, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, backend={"finalize_interval_s": 0.01})
    stop = asyncio.Event()
    task = asyncio.create_task(run_finalizer(store, settings, stop))
    await completion(store, "quiet", text="", at=T0)
    for _ in range(200):
        if (await store.episodes_after(0, 10)).episodes:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert [e.completion_id for e in (await store.episodes_after(0, 10)).episodes] == ["quiet"]


# --- the trainer's feed ---------------------------------------------------------------------


async def test_episode_pages_follow_seq_and_skip_untrainable_rows(store: Store) -> None:
    # Created one second apart so finalize assigns seqs in this order.
    plan = [
        ("a", [event("a", "accepted", visible_ms=400)]),  # 0.75
        ("b", []),  # never shown: no reward
        ("c", [event("c", "rejected", visible_ms=900)]),  # −0.25
        ("d", [event("d", "rejected", visible_ms=10)]),  # unseen: no reward
        ("e", [event("e", "ignored", reason="typed_over", visible_ms=900)]),  # −0.25
        ("f", []),  # trailing rows without reward must still move the cursor
        ("g", [event("g", "ignored", reason="superseded", visible_ms=5)]),
    ]
    for i, (cid, events) in enumerate(plan):
        prefix = "def f(x):\n    return se" if cid == "c" else "def f(x):\n    "
        await completion(store, cid, at=T0 + i, user=f"user-{i}", prefix=prefix)
        if events:
            await store.add_events(events, T0 + i)
    assert await finalize(store, T0 + 10 * WINDOW) == len(plan)
    seq = dict(rows(store, "SELECT completion_id, seq FROM episodes"))

    first = await store.episodes_after(0, 2)
    assert [e.completion_id for e in first.episodes] == ["a", "c"]
    assert first.next_cursor == seq["c"]
    a = first.episodes[0]
    assert (a.user_id, a.model_version, a.outcome, a.reward) == ("user-0", "base", "accepted", 0.75)
    assert (a.prompt_ids, a.completion_ids, a.token_logprobs) == ([1, 2, 3], [7, 8, 0], [-0.5, -0.25, -0.125])
    assert (a.temperature, a.text, a.created_at, a.accept_visible_ms) == (0.7, "return x", T0, 400.0)
    # Where the cursor stood, from the stored context: the confidence floors' place.
    assert [e.place for e in first.episodes] == ["line_start", "in_word"]

    second = await store.episodes_after(first.next_cursor, 2)
    assert [e.completion_id for e in second.episodes] == ["e"]
    assert second.next_cursor == seq["g"]  # past d, f and g, none of which will ever be served

    last = await store.episodes_after(second.next_cursor, 2)
    assert (last.episodes, last.next_cursor) == ([], seq["g"])

    # A later episode is picked up from the advanced cursor.
    await completion(store, "h", text="", at=T0 + 100)
    await finalize(store, T0 + 100)
    later = await store.episodes_after(last.next_cursor, 2)
    assert [e.completion_id for e in later.episodes] == ["h"]


async def test_evaluation_episodes_stay_out_of_the_trainers_pages(store: Store) -> None:
    await completion(store, "eval-1", evaluation=True)
    await completion(store, "train-1")
    await store.add_events([event(cid, "rejected", final=True) for cid in ("eval-1", "train-1")], T0 + 1)
    assert await finalize(store, T0 + 2) == 2

    page = await store.episodes_after(0, 10)
    assert [e.completion_id for e in page.episodes] == ["train-1"]
    assert page.next_cursor == 2  # stepped over: the trainer never reads it again
    # Scored all the same, and read back marked when asked for (the simulator's measure).
    everything = await store.episodes_after(0, 10, include_evaluation=True)
    assert [(e.completion_id, e.evaluation) for e in everything.episodes] == [
        ("eval-1", True),
        ("train-1", False),
    ]
    assert everything.episodes[0].reward == everything.episodes[1].reward
    # One page's worth of evaluation episodes cannot fill the trainer's page either.
    assert (await store.episodes_after(0, 1)).episodes[0].completion_id == "train-1"


async def test_episodes_carry_what_the_user_wrote_instead(store: Store) -> None:
    plan = {
        # Rejected, then the user wrote something else at the spot (two captures: the later counts).
        "rewritten": [
            event("rewritten", "rejected", visible_ms=900),
            event("rewritten", "rewrite", similarity=0.2, text="return y"),
            event("rewritten", "rewrite", similarity=0.3, text="return y + 1"),
        ],
        # Accepted, then edited: the text that survived at the last check.
        "edited": [
            event("edited", "accepted", visible_ms=900),
            event("edited", "survival", delay_s=30, similarity=0.9, text="return x"),
            event("edited", "survival", delay_s=120, similarity=0.8, text="return x2"),
        ],
        # Accepted and kept as it was: nothing to correct.
        "kept": [
            event("kept", "accepted", visible_ms=900),
            event("kept", "survival", delay_s=30, similarity=1.0, text="return x"),
        ],
        "dismissed": [event("dismissed", "rejected", visible_ms=900)],
    }
    for i, (cid, events) in enumerate(plan.items()):
        await completion(store, cid, at=T0 + i)
        await store.add_events(events, T0 + i)
    await finalize(store, T0 + 10 * WINDOW)
    page = await store.episodes_after(0, 10)
    assert {e.completion_id: e.rewrite for e in page.episodes} == {
        "rewritten": "return y + 1",
        "edited": "return x2",
        "kept": None,
        "dismissed": None,
    }


async def test_an_empty_store_keeps_the_cursor(store: Store) -> None:
    page = await store.episodes_after(7, 100)
    assert (page.episodes, page.next_cursor) == ([], 7)


# --- re-scoring -----------------------------------------------------------------------------


async def test_rescore_recomputes_stored_rewards_from_raw_events(store: Store) -> None:
    await completion(store, "fast", at=T0)
    await completion(store, "kept", at=T0)
    await store.add_events(
        [event("fast", "rejected", visible_ms=200), event("kept", "accepted", visible_ms=900, final=True)],
        T0,
    )
    await finalize(store, T0 + WINDOW)
    assert dict(rows(store, "SELECT completion_id, reward FROM episodes")) == {"fast": None, "kept": 0.75}

    # A survival check arriving after finalize is stored; re-scoring takes it into account.
    await store.add_events([event("kept", "survival", delay_s=600, similarity=0.6)], T0 + 700)
    harsher = RewardConfig(accepted=1.0, rejected=-1.0)
    assert await store.rescore(harsher, min_visible_ms=100.0) == 2
    assert rows(store, "SELECT completion_id, outcome, reward FROM episodes ORDER BY completion_id") == [
        ("fast", "rejected", -1.0),
        ("kept", "accepted", pytest.approx(0.2)),
    ]
    assert await store.rescore(harsher, min_visible_ms=100.0) == 0


# --- rows that cannot be read ---------------------------------------------------------------


def raw_event(store: Store, event_id: str, cid: str, kind: str, **fields: Any) -> None:
    """An event row written straight into the file, as an older version, a manual edit or a bug
    might leave it: nothing checks it on the way in."""
    received_at = fields.pop("received_at", T0)
    payload = {"event_id": event_id, "completion_id": cid, "kind": kind, "client_ts": T0, **fields}
    edit(
        store,
        "INSERT INTO events (event_id, completion_id, kind, payload, client_ts, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        # json.dumps writes float("nan") as NaN, which is not JSON.
        (event_id, cid, kind, json.dumps(payload), T0, received_at),
    )


async def test_bad_rows_are_set_aside_and_the_good_episodes_reach_the_trainer(store: Store) -> None:
    plan = {
        "good": [
            event("good", "accepted", visible_ms=900),
            event("good", "survival", delay_s=30, similarity=1.0),
        ],
        "partly": [event("partly", "rejected", visible_ms=900)],
        "nan-logprobs": [event("nan-logprobs", "rejected", visible_ms=900)],
        "bad-context": [event("bad-context", "rejected", visible_ms=900)],
        "blob-text": [event("blob-text", "partially_accepted", accepted_chars=3, visible_ms=900)],
        "late": [event("late", "rejected", visible_ms=900)],
        "bad-time": [event("bad-time", "rejected", visible_ms=900)],
    }
    for i, (cid, events) in enumerate(plan.items()):
        await completion(store, cid, at=T0 + i)
        await store.add_events(events, T0 + i)
    # The row (a NaN timestamp, stored as null), a NaN, a kind no version knows, a text
    # over the limit: beside one good event of the same completion.
    raw_event(store, "null-ts-0001", "partly", "accepted", visible_ms=900, client_ts=None)
    raw_event(store, "nan-ts-00001", "partly", "accepted", visible_ms=900, client_ts=float("nan"))
    raw_event(store, "unknown-kind", "partly", "teleported", received_at=float("inf"))
    raw_event(store, "long-text-01", "partly", "rewrite", similarity=0.5, text="x" * 30_000)
    # Completions: a NaN log-prob, a context cut short, a time that is no number, bytes for text.
    # PostgreSQL's types hold no text in a float column and no bytes in a text one: there, the time
    # is minus infinity (a float may be), and the text stays text (scored like any other).
    bad = [
        ("token_logprobs", "'[NaN, -0.25, -0.1]'", "nan-logprobs"),
        ("context", '\'{"prefix": "def\'', "bad-context"),
        ("created_at", "'yesterday'" if is_sqlite(store) else "'-Infinity'", "bad-time"),
    ]
    blob = is_sqlite(store)
    if blob:
        bad.append(("text", "X'00ff'", "blob-text"))
    for column, value, cid in bad:
        edit(store, f"UPDATE completions SET {column} = {value} WHERE completion_id = ?", (cid,))

    await finalize(store, T0 + 10 * WINDOW)
    # Every completion left the open set; the one that could not be scored has no episode.
    assert rows(store, "SELECT COUNT(*) FROM completions WHERE finalized_at IS NULL") == [(0,)]
    outcomes = dict(rows(store, "SELECT completion_id, outcome FROM episodes"))
    assert ("blob-text" in outcomes) != blob
    # Scored on its good event: the unreadable acceptances are not evidence of anything.
    assert outcomes["partly"] == "rejected"
    assert outcomes["good"] == "accepted"

    # The trainer's pages (two at a time) hold the good episodes; the unreadable rows are skipped
    # without a page coming back empty while good ones follow.
    cursor, pages = 0, []
    while True:
        page = await store.episodes_after(cursor, 2)
        if page.next_cursor == cursor:
            break
        pages.append([e.completion_id for e in page.episodes])
        cursor = page.next_cursor
    assert pages == [["good", "partly"], ["late"]] if blob else [["good", "partly"], ["blob-text", "late"]]

    set_aside = {(q["table"], q["key"]): q["reason"] for q in await store.quarantined()}
    assert set(set_aside) == {
        ("events", "null-ts-0001"),
        ("events", "nan-ts-00001"),
        ("events", "unknown-kind"),
        ("events", "long-text-01"),
        ("completions", "nan-logprobs"),
        ("completions", "bad-context"),
        ("completions", "bad-time"),
    } | ({("completions", "blob-text")} if blob else set())
    assert "client_ts" in set_aside[("events", "null-ts-0001")]
    assert "client_ts" in set_aside[("events", "nan-ts-00001")]
    assert "kind" in set_aside[("events", "unknown-kind")]
    assert "text" in set_aside[("events", "long-text-01")]
    assert "token_logprobs" in set_aside[("completions", "nan-logprobs")]
    assert "context" in set_aside[("completions", "bad-context")]
    assert "created_at" in set_aside[("completions", "bad-time")]
    assert "x" * 100 not in "".join(set_aside.values())  # reasons never carry what was typed
    assert await store.quarantine_counts() == {"completions": 3 + blob, "events": 4}
    # Bad events leave the events table (no later pass trips on them) with their row kept aside.
    assert rows(store, "SELECT COUNT(*) FROM events WHERE completion_id = 'partly'") == [(1,)]
    [(kept,)] = rows(store, "SELECT content FROM quarantine WHERE row_key = 'unknown-kind'")
    assert json.loads(kept)["kind"] == "teleported"

    # Later passes see nothing twice; re-scoring sets aside what arrived bad since.
    assert await finalize(store, T0 + 20 * WINDOW) == 0
    raw_event(store, "after-final", "good", "teleported")
    await store.rescore(REWARDS, MIN_VISIBLE)
    assert (await store.quarantine_counts())["events"] == 5
    again = await store.episodes_after(0, 10)
    assert [e.completion_id for e in again.episodes] == ["good", "partly"] + ["blob-text"] * (not blob) + [
        "late"
    ]

    # Retention reaches what was set aside: the rows' contents go, the record of them stays.
    await store.purge_older_than(T0 + 100 * WINDOW)
    assert rows(store, "SELECT COUNT(*), COUNT(content) FROM quarantine") == [(8 + blob, 0)]


# --- checkpoints ----------------------------------------------------------------------------


async def test_going_live_retires_the_previous_live_version(store: Store) -> None:
    assert await store.live_version() == "base"
    await store.add_checkpoint("v1", "base", "/ckpt/v1", {"loss": 1.0})
    for state in ("gated", "canary", "live"):
        await store.transition("v1", state, reason=f"to {state}", metrics={"step": state})
    assert await store.live_version() == "v1"

    await store.add_checkpoint("v2", "v1", "/ckpt/v2", {"loss": 0.5})
    await store.transition("v2", "live", reason="canary won", metrics={"accept_rate": 0.4})

    assert await store.live_version() == "v2"
    v1 = await store.checkpoint("v1")
    assert v1 is not None and v1.state == "retired"
    assert v1.metrics == {"loss": 1.0, "step": "live"}  # transition figures merge into the checkpoint's
    assert [(c.version, c.state, c.parent_version) for c in await store.checkpoints()] == [
        ("v1", "retired", "base"),
        ("v2", "live", "v1"),
    ]
    assert await store.checkpoint_path("v2") == Path("/ckpt/v2")
    history = await store.transitions("v1")
    assert [(t["from_state"], t["to_state"]) for t in history] == [
        (None, "candidate"),
        ("candidate", "gated"),
        ("gated", "canary"),
        ("canary", "live"),
        ("live", "retired"),
    ]
    assert history[0]["reason"] == "uploaded" and history[0]["metrics"] == {"loss": 1.0}
    assert history[-1]["reason"] == "superseded by v2"
    # The old live version is retired before the new one is recorded live.
    assert [(t["version"], t["to_state"]) for t in await store.transitions()][-3:] == [
        ("v2", "candidate"),
        ("v1", "retired"),
        ("v2", "live"),
    ]


async def test_checkpoint_errors(store: Store) -> None:
    assert await store.checkpoint("v9") is None
    with pytest.raises(UnknownCheckpoint):
        await store.transition("v9", "live", reason="no such version")
    await store.add_checkpoint("v1", "base", "/ckpt/v1", {})
    with pytest.raises(ValueError, match="unknown checkpoint state"):
        await store.transition("v1", "promoted", reason="typo")
    assert (await store.checkpoint("v1")).state == "candidate"  # type: ignore[union-attr]


async def test_version_names_are_monotonic_and_never_reused(open_store_here: OpenStore) -> None:
    store = await open_store_here()
    assert [await store.next_version() for _ in range(2)] == ["v1", "v2"]
    await store.add_checkpoint("v3", "v2", "/ckpt/v3", {})  # named by hand
    assert await store.next_version() == "v4"
    await store.close()
    store = await open_store_here()
    try:
        assert await store.next_version() == "v5"
    finally:
        await store.close()


# --- admin figures --------------------------------------------------------------------------


async def test_stats_overall_and_per_model(store: Store) -> None:
    await completion(store, "a", model="base")
    await completion(store, "b", model="base")
    await completion(store, "q", text="", model="base")
    await completion(store, "c", model="v1")
    await completion(store, "open", model="v1", at=T0 + 10 * WINDOW)  # not finalized yet
    await store.add_events(
        [
            event("a", "accepted", visible_ms=900),
            event("b", "rejected", visible_ms=900),
            event("c", "partially_accepted", accepted_chars=4, visible_ms=900),
            event("c", "survival", delay_s=30, similarity=0.6),
        ],
        T0,
    )
    await finalize(store, T0 + WINDOW)

    stats = await store.stats()
    assert {k: stats[k] for k in ("served", "shown", "abstained", "finalized", "trainable", "rated")} == {
        "served": 5,
        "shown": 4,
        "abstained": 1,
        "finalized": 4,
        "trainable": 4,
        "rated": 3,
    }
    assert stats["accepted"] == 2
    assert stats["accept_rate"] == pytest.approx(2 / 3)
    assert stats["mean_reward"] == pytest.approx((0.75 - 0.25 + 0.0 + 0.35) / 4)
    assert stats["outcomes"] == {"abstained": 1, "accepted": 1, "partially_accepted": 1, "rejected": 1}
    base, v1 = stats["per_version"]["base"], stats["per_version"]["v1"]
    assert (base["served"], base["accepted"], base["accept_rate"]) == (3, 1, 0.5)
    assert base["mean_reward"] == pytest.approx((0.75 - 0.25 + 0.0) / 3)
    assert (v1["served"], v1["finalized"], v1["accept_rate"]) == (2, 1, 1.0)
    assert v1["mean_reward"] == pytest.approx(0.35)


async def test_stats_of_an_empty_store(store: Store) -> None:
    stats = await store.stats()
    assert (stats["served"], stats["accept_rate"], stats["mean_reward"], stats["per_version"]) == (
        0,
        None,
        None,
        {},
    )


async def test_canary_arms_count_each_person_once(store: Store) -> None:
    """The canary's arm: per episode as before, and per person (each person's mean is one value)."""
    for n in range(8):  # one heavy user, all accepted
        await completion(store, f"h{n}", user="heavy")
    for user in ("p1", "p2"):  # two light users, each one rejection
        await completion(store, user, user=user)
    await completion(store, "other", user="p3", model="v1")  # another version: not in the arm
    await store.add_events(
        [event(f"h{n}", "accepted", visible_ms=900) for n in range(8)]
        + [event(cid, "rejected", visible_ms=900) for cid in ("p1", "p2", "other")],
        T0,
    )
    await finalize(store, T0 + WINDOW)

    arm = await store.arm("base", T0)
    assert (arm.reward.n, arm.accepted.n, arm.arc.n) == (10, 10, 10)
    assert arm.accepted.mean == pytest.approx(0.8)
    assert arm.reward.mean == pytest.approx((8 * 0.75 - 2 * 0.25) / 10)
    people = arm.people
    assert (people.reward.n, people.accepted.n, people.arc.n) == (3, 3, 3)
    assert people.accepted.mean == pytest.approx(1 / 3)
    assert people.reward.mean == pytest.approx((0.75 - 0.25 - 0.25) / 3)
    assert people.reward.variance == pytest.approx(1 / 3)  # means 0.75, -0.25, -0.25
    assert people.arc.mean == pytest.approx(len("return x") / 3)
    assert arm.summary()["people"] == 3
    # Outside the window, nobody.
    assert (await store.arm("base", T0 + 1)).people.reward.n == 0


@pytest.mark.parametrize("implementation", [SqliteStore, PostgresStore])
def test_each_store_implements_the_interface(implementation: type) -> None:
    """Every method of backend/store/interface.py's Store, with its parameters."""
    methods = [name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_")]
    assert len(methods) > 25
    for name in methods:
        ours, theirs = (
            inspect.signature(getattr(implementation, name)),
            inspect.signature(getattr(Store, name)),
        )
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ], name


# SQL as the store writes it, in capitals and in context: English words alone (select, update) pass.
_SQL = re.compile(r"\b(SELECT \S+ FROM|INSERT (OR \w+ )?INTO|DELETE FROM|UPDATE \w+ SET|CREATE TABLE|PRAGMA)")


def test_outside_the_store_the_backend_sees_only_the_interface() -> None:
    """No SQL, no database driver and no module of the SQLite store outside backend/store/: the rest
    of the backend runs on any Store (benchmarks, which measure SQLite itself, excepted)."""
    backend = Path(__file__).parents[2] / "backend"
    found = []
    for path in sorted(backend.rglob("*.py")):
        if "store" in path.relative_to(backend).parts or path.name.startswith("bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.search(node.value):
                    found.append(f"{path.name}: SQL {node.value[:40]!r}")
                continue
            for module in modules:
                top = module.split(".")[0]
                inside_store = module.startswith("backend.store.") and module != "backend.store.interface"
                if top in ("sqlite3", "aiosqlite") or inside_store:
                    found.append(f"{path.name}: imports {module}")
    assert found == []
