"""Issue 23 on a real backend: bad rows written straight into its SQLite file are set aside while the
good episodes reach the trainer, and a pass that keeps failing turns /readyz (and the dashboard)."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningBackend, start_backend, stop_backend

from core.local_tokens import ADMIN, read_token
from trainer.client import BackendClient


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBackend]:
    running = start_backend(tiny_model_dir, tmp_path_factory.mktemp("loop") / "state")
    yield running
    stop_backend(running)


def database(server: RunningBackend) -> sqlite3.Connection:
    # Beside the running backend, as an admin's sqlite3 shell would be.
    return sqlite3.connect(server.data_dir / "flywheel.sqlite3", timeout=10, isolation_level=None)


def served(server: RunningBackend, prefix: str) -> str:
    response = httpx.post(
        f"{server.url}/v1/complete",
        json={"context": {"prefix": prefix, "path": "a.py"}},
        headers=server.client,
        timeout=60,
    )
    response.raise_for_status()
    return response.json()["completion_id"]


def dismiss(server: RunningBackend, completion_id: str) -> None:
    """The user saw the suggestion and dismissed it: a trainable episode, closed at once."""
    event = {
        "event_id": uuid.uuid4().hex,
        "completion_id": completion_id,
        "kind": "rejected",
        "client_ts": time.time(),
        "visible_ms": 900,
        "final": True,
    }
    answer = httpx.post(f"{server.url}/v1/events", json={"events": [event]}, headers=server.client)
    assert answer.json()["stored"] == 1, answer.text


def raw_event(db: sqlite3.Connection, completion_id: str, kind: str, **fields: Any) -> str:
    event_id = uuid.uuid4().hex
    received_at = fields.pop("received_at", time.time())
    payload = {"event_id": event_id, "completion_id": completion_id, "kind": kind, "client_ts": 1.0, **fields}
    db.execute(
        "INSERT INTO events (event_id, completion_id, kind, payload, client_ts, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        # json.dumps writes float("nan") as NaN, which is not JSON.
        (event_id, completion_id, kind, json.dumps(payload), 1.0, received_at),
    )
    return event_id


def raw_completion(
    db: sqlite3.Connection, completion_id: str, created_at: float, logprobs: str = "[-0.5, -0.1]"
) -> None:
    db.execute(
        "INSERT INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
        " completion_ids, token_logprobs, temperature, text, created_at, latency_ms)"
        " VALUES (?, 'u', 'base', '{\"prefix\": \"x = \"}', '[1, 2]', '[3, 0]', ?, 0.7, 'y', ?, 'slow')",
        (completion_id, logprobs, created_at),
    )


def eventually(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def trained_on(server: RunningBackend) -> dict[str, str]:
    """The outcome of each episode the trainer's own client pulls (two a page), from the start."""
    with BackendClient(server.url, read_token(server.data_dir, ADMIN)) as client:
        episodes, _ = client.all_episodes(0, page_size=2)
    return {episode.completion_id: episode.outcome for episode in episodes}


def test_bad_rows_are_set_aside_and_the_good_episodes_reach_the_trainer(server: RunningBackend) -> None:
    fresh = served(server, "def add(a, b):\n    return ")
    with database(server) as db:
        # Rows as an older version, a hand edit or a bug may leave them. A completion of its own
        # (its window open) with the event (a NaN timestamp, stored as null) and one of a
        # kind no version knows, received at an impossible time.
        raw_completion(db, "older", created_at=time.time())
        raw_event(db, "older", "accepted", visible_ms=900, client_ts=None)
        raw_event(db, "older", "teleported", received_at=float("inf"))
        # A completion stored with a NaN log-prob, served long ago: due now, its episode unreadable.
        raw_completion(db, "nan-logprob", created_at=time.time() - 3600, logprobs="[NaN, -0.1]")
        raw_event(db, "nan-logprob", "rejected", visible_ms=900)
    # The users dismiss both (events through the API): final, so they close at once.
    dismiss(server, fresh)
    dismiss(server, "older")

    def dashboard() -> dict[str, Any]:
        return httpx.get(f"{server.url}/admin/data.json", headers=server.admin).json()

    # The old completion closes on the finalize pass's clock, the dismissed ones at once: the
    # trainer may see those before the unreadable one has been finalized, read and set aside.
    def all_read() -> dict[str, str]:
        pulled = trained_on(server)
        set_aside = dashboard()["quarantine"]["counts"] == {"completions": 1, "events": 2}
        return pulled if {fresh, "older"} <= set(pulled) and set_aside else {}

    pulled = eventually(all_read)
    assert {fresh, "older"} <= set(pulled) and "nan-logprob" not in pulled
    # Scored on the events that could be read: the unreadable acceptance is no evidence.
    assert pulled["older"] == "rejected"

    data = dashboard()
    assert data["quarantine"]["counts"] == {"completions": 1, "events": 2}
    reasons = {row["key"]: row["reason"] for row in data["quarantine"]["latest"]}
    assert "token_logprobs" in reasons["nan-logprob"]
    assert sorted(reason.split(":")[0] for reason in reasons.values()) == [
        "client_ts",
        "kind",
        "token_logprobs.0",
    ]
    assert all(not health["stuck"] for health in data["passes"].values())
    with server.dashboard() as browser:
        page = browser.get("/admin").text
    assert 'id="quarantine"' in page and "3 stored rows set aside" in page
    assert 'id="stuck-passes"' not in page
    metrics = httpx.get(f"{server.url}/metrics", headers=server.admin).text
    assert 'flywheel_quarantined_rows{table="events"} 2.0' in metrics
    assert 'flywheel_quarantined_rows{table="completions"} 1.0' in metrics
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_a_pass_that_keeps_failing_turns_readiness_until_it_works(server: RunningBackend) -> None:
    with database(server) as db:
        db.execute(
            "CREATE TRIGGER no_episodes BEFORE INSERT ON episodes"
            " BEGIN SELECT RAISE(ABORT, 'episodes refused here'); END"
        )
    try:
        waiting = served(server, "class Point:\n    def __init__(self, x, y):\n        ")
        dismiss(server, waiting)
        # No token: a load balancer or an operator's curl asks too.
        ready = eventually(lambda: httpx.get(f"{server.url}/readyz").status_code == 503)
        assert ready, "finalize failed on every pass, yet /readyz stayed 200"
        body = httpx.get(f"{server.url}/readyz").json()
        assert body["status"] == "not ready"
        assert any("finalize pass failed" in p and "episodes refused here" in p for p in body["problems"])
        # Alive all the while: the model serves, and a supervisor must not restart for this.
        health = httpx.get(f"{server.url}/healthz")
        assert health.status_code == 200 and health.json()["passes"]["finalize"]["stuck"]
        assert served(server, "x = ")
        with server.dashboard() as browser:
            page = browser.get("/admin").text
        assert 'id="stuck-finalize"' in page and "episodes refused here" in page
        metrics = httpx.get(f"{server.url}/metrics", headers=server.admin).text
        assert 'flywheel_pass_stuck{pass="finalize"} 1.0' in metrics
    finally:
        with database(server) as db:
            db.execute("DROP TRIGGER IF EXISTS no_episodes")

    assert eventually(lambda: httpx.get(f"{server.url}/readyz").status_code == 200)
    assert eventually(lambda: waiting in trained_on(server))
    assert not httpx.get(f"{server.url}/healthz").json()["passes"]["finalize"]["stuck"]
