"""A backend process of its own on loopback, for the benchmarks, the simulator and the tests.

`flywheel up` supervises its backend itself (flywheel/up.py); this is for tools that need a
private backend: its own port, data directory and settings, and a log file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def backend_env(model: str | Path, data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    """This environment plus a private backend's settings; a flywheel.toml never applies."""
    return dict(
        os.environ,
        FLYWHEEL_DATA_DIR=str(data_dir),
        FLYWHEEL_MODEL__NAME=str(model),
        FLYWHEEL_BACKEND__PORT=str(port),
        FLYWHEEL_CONFIG=str(data_dir / "absent.toml"),
        **extra,
    )


def spawn_backend(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`flywheel backend` with `env`, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "backend"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log_path: Path | None, timeout_s: float = 300
) -> None:
    """Until `GET /healthz` answers; RuntimeError (the process killed) if it exits or never does.
    With `log_path` (a backend whose output goes to a file) the error carries the log's tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if log_path is None:
                raise RuntimeError(f"the backend exited with code {process.returncode} while starting")
            raise RuntimeError(f"the backend exited early:\n{log_path.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    where = f"; see {log_path}" if log_path else ""
    raise RuntimeError(f"the backend did not answer at {url} within {timeout_s:.0f} s{where}")


def start_backend(
    model: str | Path, data_dir: Path, timeout_s: float = 300, **extra: str
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """A healthy backend serving `model` from `data_dir`: its process, URL and environment."""
    port = free_port()
    env = backend_env(model, data_dir, port, **extra)
    log_path = data_dir / "backend.log"
    process = spawn_backend(env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, log_path, timeout_s)
    return process, url, env


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`: a benchmark or simulation
    that failed half-way must not leave a backend behind."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
