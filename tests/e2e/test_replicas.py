"""Two backends against one PostgreSQL, on loopback: simulated editors spread completions and events
over both, one trainer cycle uploads a candidate through one of them, and that backend is killed
with SIGKILL while the canary is being judged. Every acknowledged event is stored once, the other
backend keeps serving and takes over the passes, and the canary reaches one verdict, recorded once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from conftest import RunningBackend, backend_env, free_port

from bench.backend_requests import PREFIXES
from bench.tokens import people
from core import processes

CANARY_ENV = dict(
    FLYWHEEL_CANARY__SHARE="0.5",
    FLYWHEEL_CANARY__MIN_EPISODES="16",
    FLYWHEEL_CANARY__EFFECT_SIZE="0.5",
    FLYWHEEL_CANARY__INTERVAL_S="0.3",
    FLYWHEEL_CANARY__MAX_EPISODES="100000",
)
# The canary's users accept nine suggestions in ten, the live version's one in ten: a verdict
# (promotion) within a few dozen episodes per arm.
ACCEPT = {"base": 0.1}
CANARY_ACCEPT = 0.9
PEOPLE = 40


@dataclass
class Editors:
    """Simulated editors behind a load balancer: each request goes to the next backend in turn,
    and to the other one when that one does not answer (which is then taken out of rotation)."""

    urls: list[str]
    crowd: list[dict[str, str]]
    dead: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)  # every event id sent
    acknowledged: set[str] = field(default_factory=set)  # event ids in batches answered 200
    reported_stored: int = 0
    served: Counter[tuple[str, str]] = field(default_factory=Counter)  # (backend, version)
    turn: itertools.count[int] = field(default_factory=itertools.count)

    async def post(self, http: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str]) -> Any:
        start = next(self.turn)
        for i in range(len(self.urls)):
            url = self.urls[(start + i) % len(self.urls)]
            if url in self.dead:
                continue
            try:
                response = await http.post(f"{url}{path}", json=body, headers=headers)
            except httpx.TransportError:
                self.dead.add(url)
                continue
            response.raise_for_status()
            return url, response.json()
        raise AssertionError("no backend answered")

    async def round(self, http: httpx.AsyncClient, rng: random.Random, canary: str | None) -> None:
        person = rng.choice(self.crowd)
        context = {"prefix": rng.choice(PREFIXES), "path": "a.py"}
        url, body = await self.post(http, "/v1/complete", {"context": context}, person)
        self.served[url, body["model_version"]] += 1
        if not body["text"]:
            return
        rate = CANARY_ACCEPT if body["model_version"] == canary else ACCEPT.get(body["model_version"], 0.1)
        event = {"completion_id": body["completion_id"], "client_ts": time.time(), "visible_ms": 1500.0}
        events = [
            dict(event, event_id=uuid.uuid4().hex, kind="shown"),
            dict(
                event,
                event_id=uuid.uuid4().hex,
                kind="accepted" if rng.random() < rate else "rejected",
                final=True,
            ),
        ]
        self.sent.update(e["event_id"] for e in events)
        # Events go through whichever backend is next: not necessarily the one that served.
        _, answer = await self.post(http, "/v1/events", {"events": events}, person)
        assert answer["refused"] == [] and answer["stored"] + answer["duplicates"] == 2, answer
        self.acknowledged.update(e["event_id"] for e in events)
        self.reported_stored += answer["stored"]

    async def drive(self, rounds: int, canary: str | None, seed: int, editors: int = 8) -> None:
        rng = random.Random(seed)
        left = rounds

        async def editor(http: httpx.AsyncClient) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await self.round(http, rng, canary)

        async with httpx.AsyncClient(timeout=60) as http:
            await asyncio.gather(*(editor(http) for _ in range(editors)))


def start_backends(model_dir: Path, root: Path, env: dict[str, str]) -> list[RunningBackend]:
    """Both started at once (each loads its model while the other does), then waited for."""
    started = []
    for name in ("a", "b"):
        port = free_port()
        full = backend_env(model_dir, root / name, port, **env)
        log_path = root / name / "backend.log"
        started.append(
            RunningBackend(
                f"http://127.0.0.1:{port}",
                root / name,
                full,
                processes.spawn_backend(full, log_path),
                log_path,
            )
        )
    for backend in started:
        processes.wait_healthy(backend.url, backend.process, backend.log_path, timeout_s=180)
    return started


def model(backend: RunningBackend, headers: dict[str, str]) -> dict[str, Any]:
    return httpx.get(f"{backend.url}/v1/model", headers=headers, timeout=30).raise_for_status().json()


def until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_two_backends_one_database_one_killed(
    postgres_server: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    postgres_server.execute("CREATE DATABASE replicas")
    url = postgres_server.url("replicas")
    shared = tmp_path / "shared-checkpoints"
    env = dict(
        FLYWHEEL_STORE__URL=url,
        FLYWHEEL_CHECKPOINTS__DIR=str(shared),
        FLYWHEEL_CHECKPOINTS__POLL_S="0.3",
        FLYWHEEL_EPISODES__WINDOW_S="1",
        **CANARY_ENV,
    )
    a, b = start_backends(tiny_model_dir, tmp_path, env)
    try:
        # a made the tokens (the first to start on an empty database); they open both backends.
        admin = a.admin if (a.data_dir / "tokens").exists() else b.admin
        owner = a if (a.data_dir / "tokens").exists() else b
        crowd = people(owner.url, admin, PEOPLE)
        editors = Editors([a.url, b.url], crowd)

        # Phase 1: traffic over both backends, then one trainer cycle through a.
        asyncio.run(editors.drive(24, None, seed=1))
        assert {backend for backend, _ in editors.served} == {a.url, b.url}
        trainer = subprocess.run(
            [sys.executable, "-m", "flywheel.cli", "trainer", "--once"],
            env=dict(
                owner.env,
                FLYWHEEL_BACKEND__URL=a.url,
                FLYWHEEL_TRAINER__GATE__ENABLED="false",
                FLYWHEEL_TRAINER__LEARN_FLOOR="false",
            ),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert trainer.returncode == 0, trainer.stdout[-3000:] + trainer.stderr[-3000:]
        # The candidate went in through a; b serves it as the canary within seconds.
        until(lambda: model(b, admin)["canary_version"] == "v1", 10, "b never served the canary")
        assert model(a, admin)["canary_version"] == "v1"
        assert (shared / "v1" / "adapter_model.safetensors").is_file()

        # Phase 2: traffic until the canary is judged; a is killed once the first round is in.
        asyncio.run(editors.drive(24, "v1", seed=2))
        os.kill(a.process.pid, signal.SIGKILL)
        a.process.wait()
        served_before = sum(n for (backend, _), n in editors.served.items() if backend == b.url)
        deadline = time.monotonic() + 120
        seed = 3
        while model(b, admin)["canary_version"] is not None:
            assert time.monotonic() < deadline, "no verdict"
            asyncio.run(editors.drive(16, "v1", seed=seed))
            seed += 1
        assert a.url in editors.dead
        # b kept serving after a died.
        assert sum(n for (backend, _), n in editors.served.items() if backend == b.url) > served_before
        assert httpx.get(f"{b.url}/readyz", timeout=30).status_code == 200

        with psycopg.connect(url) as conn:
            stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
            verdicts = conn.execute(
                "SELECT to_state FROM checkpoint_transitions WHERE version = 'v1' AND from_state = 'canary'"
            ).fetchall()
            episodes = conn.execute("SELECT COUNT(*), COUNT(DISTINCT completion_id) FROM episodes").fetchone()
        # Every acknowledged event is there, once (event_id is the key); none that was never sent.
        assert editors.acknowledged <= stored <= editors.sent
        assert editors.reported_stored <= len(stored)
        # One verdict, recorded once; b serves its outcome.
        assert len(verdicts) == 1, verdicts
        assert verdicts[0][0] == "live"
        assert model(b, admin)["live_version"] == "v1"
        assert episodes is not None and episodes[0] == episodes[1]
    finally:
        for backend in (a, b):
            processes.stop_process(backend.process, timeout_s=20)
