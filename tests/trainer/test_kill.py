"""A trainer process killed (SIGKILL) in the middle of an update, against a real backend process:
nothing half-written reaches the backend, and the restarted trainer resumes and publishes a valid
checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from conftest import RunningBackend, start_backend, stop_backend
from safetensors.torch import load as load_safetensors

from core.local_tokens import authorization
from core.wire import TOKENS_PATH
from trainer.state import load_state

USERS = ["ana", "ben", "chen", "dev"]


def people(backend: RunningBackend, names: list[str]) -> list[dict[str, str]]:
    """A client token each: the backend tells people apart by token, and the trainer caps each
    person's share of an update."""
    made = [
        httpx.post(
            f"{backend.url}{TOKENS_PATH}", json={"name": name}, headers=backend.admin
        ).raise_for_status()
        for name in names
    ]
    return [authorization(response.json()["token"]) for response in made]


def make_episodes(backend: RunningBackend, n: int) -> None:
    """Completions from the real policy, accepted or rejected at a human pace by four users."""
    users = people(backend, USERS)
    with httpx.Client(base_url=backend.url, timeout=60) as http:
        for i in range(n):
            user = users[i % len(users)]
            context = {"prefix": f"def handler_{i}(request):\n    value = ", "suffix": "\n", "path": "app.py"}
            body = (
                http.post("/v1/complete", json={"context": context}, headers=user).raise_for_status().json()
            )
            if not body["text"]:
                continue  # an abstention finalizes when its window closes
            kind = "accepted" if i % 2 else "rejected"
            event = {
                "event_id": uuid.uuid4().hex,
                "completion_id": body["completion_id"],
                "kind": kind,
                "client_ts": time.time(),
                "visible_ms": 1500.0,
                "final": True,
            }
            assert http.post("/v1/events", json={"events": [event]}, headers=user).json()["stored"] == 1


def wait_for_episodes(backend: RunningBackend, n: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        page = (
            httpx.get(
                f"{backend.url}/v1/episodes", params={"cursor": 0, "limit": 1000}, headers=backend.admin
            )
            .raise_for_status()
            .json()
        )
        if len(page["episodes"]) >= n:
            return len(page["episodes"])
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} episodes finalized")


def start_trainer(backend: RunningBackend, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "trainer", "--once"],
            env=dict(backend.env, FLYWHEEL_BACKEND__URL=backend.url, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_trainer_killed_mid_update_resumes_and_publishes(tiny_model_dir: Path, tmp_path: Path) -> None:
    backend = start_backend(
        tiny_model_dir,
        tmp_path / "state",
        FLYWHEEL_EPISODES__WINDOW_S="1",
        # Promote on upload: this test is about the trainer, not the canary.
        FLYWHEEL_CANARY__SHARE="0",
    )
    try:
        make_episodes(backend, 32)
        total = wait_for_episodes(backend, 24)
        trainer_dir = backend.data_dir / "trainer"

        # Long enough an update that the kill lands inside it.
        log_path = tmp_path / "trainer-killed.log"
        trainer = start_trainer(backend, log_path, FLYWHEEL_TRAINER__EPOCHS="500")
        deadline = time.monotonic() + 180
        while b"training pg on" not in log_path.read_bytes():
            assert trainer.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait()

        assert httpx.get(f"{backend.url}/v1/checkpoints", headers=backend.client).json() == []
        assert load_state(trainer_dir).cursor == 0
        candidates = trainer_dir / "candidates"
        assert not candidates.exists() or all(p.name.startswith(".") for p in candidates.iterdir())

        resumed = start_trainer(backend, tmp_path / "trainer-resumed.log")
        assert resumed.wait(timeout=300) == 0, (tmp_path / "trainer-resumed.log").read_text()

        [checkpoint] = httpx.get(f"{backend.url}/v1/checkpoints", headers=backend.client).json()
        assert checkpoint["version"] == "v1" and checkpoint["state"] == "live", checkpoint
        assert httpx.get(f"{backend.url}/v1/model", headers=backend.client).json()["live_version"] == "v1"
        state = load_state(trainer_dir)
        assert state.cursor >= total and state.last_version == "v1" and state.pending_candidate is None
        # What the backend serves is exactly the adapter the trainer saved, and it is whole.
        served = httpx.get(
            f"{backend.url}/v1/checkpoints/v1/files/adapter_model.safetensors", headers=backend.admin
        ).content
        assert served == (trainer_dir / "adapters" / "v1" / "adapter_model.safetensors").read_bytes()
        assert any("lora_B" in name for name in load_safetensors(served))
        # Nothing the killed run left behind survives the resumed one.
        assert not candidates.exists() or list(candidates.iterdir()) == []
        assert checkpoint["metrics"]["episodes"] > 0
    finally:
        stop_backend(backend)
