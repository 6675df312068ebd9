"""The background passes on a real SQLite file and a real PostgreSQL server: a pass that keeps
failing makes the backend unready (and says which and why) until it works again."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

from raw_store import edit, is_sqlite, rows

from backend.finalize import run_finalizer
from backend.lifecycle import PINNED, Lifecycle
from backend.passes import CANARY, FINALIZE, RETENTION, Passes, PassHealth, repeat
from backend.retention import run_retention
from backend.store import Store
from core.config import Settings


async def abstention(store: Store, cid: str, at: float) -> None:
    await store.record_completion(
        completion_id=cid,
        user_id="u1",
        model_version="base",
        context={"prefix": "x = ", "suffix": ""},
        prompt_ids=[1, 2],
        completion_ids=[0],
        token_logprobs=[-0.01],
        temperature=0.7,
        text="",
        created_at=at,
        latency_ms=5.0,
    )


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_readiness_turns_after_the_configured_failures_in_a_row() -> None:
    passes = Passes(stuck_after=3, names=(FINALIZE,))
    outcomes = iter([False, False, True, False, False, False, True])

    async def job() -> None:
        if not next(outcomes):
            raise OSError("disk I/O error")

    seen = []
    for _ in range(7):
        stop = asyncio.Event()
        stop.set()
        await repeat(job, passes[FINALIZE], 0.0, stop, last_pass=True)
        seen.append(passes.readiness(None)[0])
    # Two failures are weather; the third in a row is a stuck loop; one success mends it.
    assert seen == [True, True, True, True, True, False, True]
    report = passes.report()[FINALIZE]
    assert (report["failures"], report["consecutive_failures"], report["runs"]) == (5, 0, 7)
    assert report["last_error"] == "OSError: disk I/O error"
    assert passes.readiness("model process exited")[1]["problems"] == [
        "model unavailable: model process exited"
    ]


async def test_passes_that_keep_failing_make_the_backend_unready_until_they_work(
    store: Store, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        backend={"finalize_interval_s": 0.01, "retention_interval_s": 0.01, "stuck_after_failures": 3},
        canary={"interval_s": 0.01},
    )
    passes = Passes(settings.backend.stuck_after_failures)
    # Finalized long ago: retention has work to do.
    await abstention(store, "old", at=1000.0)
    await store.finalize_due(2000.0, 660.0, settings.rewards, settings.episodes.min_visible_ms)
    # Each pass made to fail on every run: the finalizer's writes, retention's purge, and the
    # canary's first read (a setting no JSON parser reads).
    # (On PostgreSQL, constraints that no new row meets.)
    refuse = (
        [
            "CREATE TRIGGER no_episodes BEFORE INSERT ON episodes"
            " BEGIN SELECT RAISE(ABORT, 'episodes refused'); END",
            "CREATE TRIGGER no_purge BEFORE UPDATE OF purged_at ON completions"
            " BEGIN SELECT RAISE(ABORT, 'purge refused'); END",
        ]
        if is_sqlite(store)
        else [
            "ALTER TABLE episodes ADD CONSTRAINT episodes_refused CHECK (false) NOT VALID",
            "ALTER TABLE completions ADD CONSTRAINT purge_refused CHECK (purged_at IS NULL) NOT VALID",
        ]
    )
    for statement in refuse:
        edit(store, statement)
    edit(store, f"INSERT INTO backend_settings (key, value) VALUES ('{PINNED}', '{{not json')")
    await abstention(store, "quiet", at=time.time())
    # The lifecycle's verdicts never reach the model process: the pinned setting fails them first.
    lifecycle = Lifecycle(settings, store, completions=None)  # type: ignore[arg-type]
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_finalizer(store, settings, stop, passes[FINALIZE])),
        asyncio.create_task(lifecycle.run(stop, passes[CANARY])),
        asyncio.create_task(run_retention(store, settings, stop, passes[RETENTION])),
    ]
    try:
        await until(lambda: len(passes.stuck()) == 3)
        ready, body = passes.readiness(None)
        assert not ready and body["status"] == "not ready"
        problems = "\n".join(body["problems"])
        assert "finalize pass failed" in problems and re.search("episodes.refused", problems)
        assert "retention pass failed" in problems and re.search("purge.refused", problems)
        assert "canary pass failed" in problems and "JSONDecodeError" in problems
        assert body["passes"][FINALIZE]["last_success"] is None

        allow = (
            ["DROP TRIGGER no_episodes", "DROP TRIGGER no_purge"]
            if is_sqlite(store)
            else [
                "ALTER TABLE episodes DROP CONSTRAINT episodes_refused",
                "ALTER TABLE completions DROP CONSTRAINT purge_refused",
            ]
        )
        for statement in [*allow, "DELETE FROM backend_settings"]:
            # From a thread: ALTER TABLE waits for the passes' open transactions, which finish only
            # while this loop runs (a blocking call here deadlocked on PostgreSQL under load).
            await asyncio.to_thread(edit, store, statement)
        await until(lambda: not passes.stuck())
        assert passes.readiness(None)[0]
        assert all(h["consecutive_failures"] == 0 and h["failures"] >= 3 for h in passes.report().values())
        # The new episode is closed, the old one's context purged (so no longer served to train on).
        assert [e.completion_id for e in (await store.episodes_after(0, 10)).episodes] == ["quiet"]
        purged = rows(store, "SELECT purged_at IS NOT NULL FROM completions WHERE completion_id = 'old'")
        assert purged in ([(1,)], [(True,)])
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def test_a_pass_health_without_a_registry_still_counts() -> None:
    health = PassHealth("retention", stuck_after=1)
    health.failed(ValueError("x"))
    assert health.stuck and health.report()["last_error"] == "x"
    health.succeeded(now=5.0)
    assert not health.stuck and health.last_success == 5.0
