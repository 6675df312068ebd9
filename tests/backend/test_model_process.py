"""The model runs in a process of its own: when it dies, a new one serves the same versions."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
from backend_traffic import PREFIXES, upload
from conftest import make_adapter, start_backend, stop_backend

from core import processes
from core.processes import stop_process


def model_process(backend_pid: int) -> psutil.Process:
    children = [
        child
        for child in psutil.Process(backend_pid).children()
        if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline())
    ]
    assert len(children) == 1, [child.cmdline() for child in children]
    return children[0]


def test_a_model_process_that_dies_is_replaced_serving_the_same_version(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    server = start_backend(tiny_model_dir, tmp_path / "state", FLYWHEEL_CANARY__SHARE="0")
    body = {"context": {"prefix": PREFIXES[0]}}
    try:
        version = upload(server.url, adapter, str(tiny_model_dir), **server.admin).json()["version"]
        first = httpx.post(f"{server.url}/v1/complete", json=body, headers=server.client, timeout=60)
        assert first.json()["model_version"] == version
        dead = model_process(server.process.pid)
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait(timeout=10)

        statuses = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = httpx.post(f"{server.url}/v1/complete", json=body, headers=server.client, timeout=60)
            statuses.append(response.status_code)
            if response.status_code == 200:
                break
            time.sleep(0.2)
        assert statuses[-1] == 200, statuses
        # Nothing but "unavailable, ask again" while the new process loads.
        assert set(statuses) <= {200, 503}, statuses
        assert response.json()["model_version"] == version
        assert model_process(server.process.pid).pid != dead.pid
        assert httpx.get(f"{server.url}/healthz").json()["live_version"] == version
    finally:
        stop_backend(server)
    assert "the model process exited" in server.log_path.read_text()


def test_a_model_that_cannot_load_stops_the_backend_with_the_reason(tmp_path: Path) -> None:
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    data = tmp_path / "state"
    data.mkdir()
    env = processes.backend_env(not_a_model, data, processes.free_port())
    backend = processes.spawn_backend(env, data / "backend.log")
    try:
        code = backend.wait(timeout=120)
    finally:
        stop_process(backend)
    log = (data / "backend.log").read_text()
    assert code != 0
    assert f"the model {not_a_model} failed to load" in log
