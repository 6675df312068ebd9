"""`flywheel up`: a configured model that cannot be had stops it with the model's name and the reason;
with --allow-fallback it serves the bootstrapped model, serves the dashboard behind the admin token
it made, stops cleanly on Ctrl-C."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import backend_env, free_port

from core.local_tokens import ADMIN, CLIENT, authorization, read_token, token_path


def read_until(process: subprocess.Popen[str], marker: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never printed; output so far:\n" + "\n".join(lines))


def test_up_with_allow_fallback_serves_the_default_model_when_the_configured_one_is_missing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "state"
    # The bootstrapped default is already there, so `up` must not train a new one.
    shutil.copytree(tiny_model_dir, data_dir / "models" / "bootstrap")
    port = free_port()
    # The trainer polls the backend every 0.2 s here (10 s by default), for the quiet check below.
    # The environment names another port: --port wins, for the backend and the trainer alike.
    env = backend_env(tmp_path / "no-such-model", data_dir, free_port(), FLYWHEEL_TRAINER__POLL_S="0.2")
    process = subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "up", "--allow-fallback", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_until(process, "Press Ctrl-C to stop", timeout_s=180)
        fallback = [line for line in lines if "is not available" in line]
        assert len(fallback) == 1 and "no-such-model" in fallback[0]
        url = f"http://127.0.0.1:{port}"
        assert any(f"{url}/admin" in line for line in lines)
        # Closed by default: `up` says where the admin token it made is, and the dashboard wants it.
        assert any(str(token_path(data_dir, ADMIN)) in line for line in lines)
        with httpx.Client(base_url=url, timeout=10) as browser:
            assert browser.get("/admin").headers.get("location") == "/admin/login"
            login = browser.post("/admin/login", data={"token": read_token(data_dir, ADMIN)})
            assert login.status_code == 303, login.text
            page = browser.get("/admin")
            assert page.status_code == 200 and "live version" in page.text
        assert httpx.get(f"{url}/v1/model", timeout=10).status_code == 401
        client = authorization(read_token(data_dir, CLIENT))
        model = httpx.get(f"{url}/v1/model", headers=client, timeout=10).raise_for_status().json()
        assert model["base_model"] == str(data_dir / "models" / "bootstrap")
        # Once the trainer is up (it imports torch first), some ten polls.
        lines += read_until(process, "trainer polling", timeout_s=180)
        time.sleep(2)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.terminate()  # stops its children too; a kill would leave them running
            process.communicate(timeout=60)
            raise
    assert process.returncode == 0, output
    # The trainer's routine polls printed nothing (httpx logs every request at INFO).
    printed = "\n".join([*lines, output])
    assert "HTTP Request:" not in printed and '"GET /v1/' not in printed, printed
    # Both children are gone: nothing answers on the port any more.
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        still_up = True
    except httpx.TransportError:
        still_up = False
    assert not still_up


def refused(model: str, tmp_path: Path, timeout_s: float = 120) -> tuple[str, Path, int]:
    """`flywheel up` serving `model` (no --allow-fallback): its stderr, data dir and port, once it
    has exited non-zero."""
    data_dir = tmp_path / "state"
    port = free_port()
    up = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "up"],
        env=backend_env(model, data_dir, port),  # type: ignore[arg-type]
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert up.returncode != 0, up.stdout + up.stderr
    return up.stderr, data_dir, port


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing said"
    return lines[-1]


def test_up_refuses_a_missing_model_directory_rather_than_fall_back(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    stderr, data_dir, _ = refused(str(missing), tmp_path)
    line = last_line(stderr)
    assert line.startswith(f"flywheel: model '{missing}' cannot be served: no such directory"), stderr
    assert "--allow-fallback" in line
    # Nothing was bootstrapped in its place.
    assert not (data_dir / "models" / "bootstrap").exists()


def test_up_refuses_a_hub_id_it_cannot_fetch(tmp_path: Path) -> None:
    # Offline (conftest), with a cache that holds nothing: the id cannot be had here.
    stderr, _, _ = refused("flywheel-tests/no-such-model", tmp_path)
    line = last_line(stderr)
    assert line.startswith("flywheel: model 'flywheel-tests/no-such-model' cannot be served: "), stderr
    assert len(line) < 500


def test_up_stops_with_the_reason_when_the_backend_cannot_load_the_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Weights that look present but do not load: the backend exits while starting, and `up` says
    which model and what its loader said, in its last line, rather than serving another model."""
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    stderr, _, port = refused(str(broken), tmp_path, timeout_s=180)
    line = last_line(stderr)
    assert line.startswith(f"flywheel: model '{broken}' cannot be served: "), stderr
    assert "safetensors" in line.lower() or "header" in line.lower(), line
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        answered = True
    except httpx.TransportError:
        answered = False
    assert not answered


def vllm_python() -> Path:
    """The vLLM environment the backend would start a server from (`make vllm-env`)."""
    from backend.vllm_server import vllm_python as configured
    from core.config import load_settings

    return configured(load_settings().serving)


def test_up_on_vllm_refuses_without_the_vllm_environment(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-venv" / "bin" / "python"
    data_dir = tmp_path / "state"
    env = backend_env(tiny_model_dir, data_dir, free_port(), FLYWHEEL_SERVING__VLLM_PYTHON=str(missing))
    up = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "up", "--engine", "vllm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode != 0
    line = last_line(up.stderr)
    assert line.startswith(f"flywheel: model '{tiny_model_dir}' cannot be served: "), line
    assert "no vLLM environment at" in line, line
    assert str(missing) in line


def test_up_on_vllm_stops_when_its_server_is_never_healthy(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A real vLLM server that is not healthy in time: `up` names the model and why, and leaves no
    server behind."""
    if not vllm_python().exists():
        pytest.skip(f"no vLLM environment at {vllm_python()} (make vllm-env)")
    model = tmp_path / "model"  # a path of this test's own, to find its server among processes
    shutil.copytree(tiny_model_dir, model)
    data_dir = tmp_path / "state"
    env = backend_env(model, data_dir, free_port(), FLYWHEEL_SERVING__VLLM_START_TIMEOUT_S="3")
    up = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "up", "--engine", "vllm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode != 0
    line = last_line(up.stderr)
    assert line.startswith(f"flywheel: model '{model}' cannot be served: "), line
    assert "not healthy within 3 s" in line, line
    time.sleep(1)
    servers = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [s for s in servers.splitlines() if "vllm" in s and str(model) in s]


def test_vllm_root_cause_is_the_first_error_of_the_servers_last_run(tmp_path: Path) -> None:
    """What `up` says when the vLLM server it started failed: the root cause, not the error that
    only reports it ("see root cause above"), and nothing from an earlier run in the same log."""
    from flywheel.model_check import vllm_root_cause

    log = tmp_path / "vllm-server.log"
    log.write_text(
        "(APIServer pid=1) INFO 12-04 18:00:00 [api_utils.py:286] non-default args: {'port': 1}\n"
        "(APIServer pid=1) ERROR 12-04 18:00:05 [x.py:1] KeyError: 'from an earlier run'\n"
        "(APIServer pid=2) INFO 12-04 18:49:50 [api_utils.py:286] non-default args: {'port': 2}\n"
        "(VllmWorker-0 pid=3) ERROR 12-04 18:50:52 [executor.py:953] Traceback (most recent call last):\n"
        "(VllmWorker-0 pid=3) ERROR 12-04 18:50:52 [executor.py:953]     raise ValueError(\n"
        "(VllmWorker-0 pid=3) ERROR 12-04 18:50:52 [executor.py:953] ValueError: Available memory"
        " on node 0 (19.48/23.54 GiB) on startup is less than desired CPU memory utilization\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n"
    )
    assert vllm_root_cause(log) == (
        "ValueError: Available memory on node 0 (19.48/23.54 GiB) on startup is less than desired CPU"
        " memory utilization"
    )
    assert vllm_root_cause(tmp_path / "absent.log") is None
