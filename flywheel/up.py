"""`flywheel up`: the whole service on one machine — backend and trainer as two processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from core.config import Settings
from core.local_tokens import ADMIN, CLIENT, tokens_dir
from core.processes import wait_healthy
from flywheel.model_check import (
    StderrTail,
    engine_unavailable_reason,
    model_unavailable_reason,
    vllm_root_cause,
)

HEALTH_TIMEOUT_S = 600.0


def resolve_model(settings: Settings, bootstrap_budget_s: float, allow_fallback: bool = False) -> str:
    """The model to serve: the configured one, else the bootstrapped default. A configured model
    that cannot be had stops `up` (SystemExit), unless `allow_fallback` (demos) serves the default."""
    if settings.model.name:
        reason = model_unavailable_reason(settings.model.name)
        if reason is None:
            return settings.model.name
        if not allow_fallback:
            raise SystemExit(cannot_serve(settings.model.name, reason, FALLBACK_HINT))
        print(
            f"flywheel: model {settings.model.name!r} is not available ({reason}); "
            f"using the bootstrapped default model at {settings.default_model_dir}",
            flush=True,
        )
    default = settings.default_model_dir
    if not (default / "config.json").is_file():
        from trainer.bootstrap import main as bootstrap

        print(f"flywheel: no default model yet; training one at {default} (first run only)", flush=True)
        code = bootstrap(
            output=default,
            corpus=[],
            budget_s=bootstrap_budget_s,
            size="small",
            include_stdlib=True,
            force=False,
        )
        if code != 0:
            raise SystemExit(code)
    return str(default)


def cannot_serve(model: str, reason: str, hint: str = "") -> str:
    return f"flywheel: model {model!r} cannot be served: {reason}{hint}"


FALLBACK_HINT = " (set model.name to one that can, or pass --allow-fallback to serve the bootstrapped model)"


def _spawn(command: str, env: dict[str, str], stderr: int | None = None) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only us, and we stop the children once, in order.
    return subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", command], env=env, start_new_session=True, stderr=stderr
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def why(settings: Settings, backend_log: StderrTail) -> str:
    """Why the backend stopped while starting: its last error, and where it started a vLLM server,
    the server's first (its root cause: the backend's error only reports that the server failed)."""
    reason = backend_log.reason()
    if settings.serving.engine == "vllm" and not settings.serving.vllm_urls:
        server_log = settings.state_dir / "vllm-server.log"
        if root := vllm_root_cause(server_log):
            return f"its vLLM server failed: {root} (log: {server_log})"
    return reason


def engine_line(settings: Settings) -> str:
    """Which engine decodes, and where: `up`'s banner."""
    serving = settings.serving
    if serving.engine != "vllm":
        return "in-process (transformers, continuous batching)"
    if serving.vllm_urls:
        return f"vLLM at {', '.join(serving.vllm_urls)}"
    return f"vLLM, a server of the backend's (log: {settings.state_dir / 'vllm-server.log'})"


def up(settings: Settings, bootstrap_budget_s: float, allow_fallback: bool = False) -> int:
    model = resolve_model(settings, bootstrap_budget_s, allow_fallback)
    if reason := engine_unavailable_reason(settings.serving):
        raise SystemExit(cannot_serve(model, reason))
    env = dict(os.environ, FLYWHEEL_MODEL__NAME=model, FLYWHEEL_DATA_DIR=str(settings.state_dir))
    url = settings.backend.base_url
    processes: list[subprocess.Popen[bytes]] = []
    # SIGTERM (from a service manager) stops us the same way Ctrl-C does. SIGINT too, explicitly: a
    # process started in the background by a shell (`nohup`, `&`) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler, so Ctrl-C (or a test's SIGINT) did nothing.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        backend = _spawn("backend", env, stderr=subprocess.PIPE)
        processes.append(backend)
        # Its log still reaches the terminal; kept too, to say why it stopped while loading the model.
        log = StderrTail(backend)
        try:
            # A vLLM server of the backend's may take its own start timeout to load the model.
            vllm_start_s = settings.serving.vllm_start_timeout_s if settings.serving.engine == "vllm" else 0
            wait_healthy(url, backend, None, HEALTH_TIMEOUT_S + vllm_start_s)
        except RuntimeError as error:
            # Killed by wait_healthy (never answered), or exited on its own (its log says why).
            timed_out = backend.wait() == -signal.SIGKILL
            raise SystemExit(cannot_serve(model, str(error) if timed_out else why(settings, log))) from None
        processes.append(_spawn("trainer", env))
        tokens = tokens_dir(settings.state_dir)
        print(
            f"\nFlywheel is up.\n  dashboard: {url}/admin (log in with the admin token: "
            f"cat {tokens / ADMIN})\n  model:     {model}\n"
            f"  engine:    {engine_line(settings)}\n"
            f"  data:      {settings.state_dir}\n"
            f"  editors:   start `flywheel lsp` (stdio); on this machine it finds {tokens / CLIENT},\n"
            "             elsewhere give it a token of its own: flywheel token create --name NAME\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        failed = [p for p in processes if p.returncode not in (None, 0)]
        print("flywheel: a service stopped; shutting the other down", flush=True)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\nflywheel: stopping", flush=True)
        return 0
    finally:
        _stop(processes)
