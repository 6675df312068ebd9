"""Real vLLM servers for the tests (backend/vllm_engine.py), on loopback, from the vLLM environment.

The environment is `make vllm-env` (or FLYWHEEL_VLLM_PYTHON / FLYWHEEL_SERVING__VLLM_PYTHON naming
its Python); without one, the tests that need vLLM are skipped with that reason. A server takes about
35 s to start on a 2-core CPU, so a test session shares one per model.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from backend.vllm_server import OwnedServer, vllm_python
from core.config import ServingConfig

T = TypeVar("T")
TEMPERATURE = 0.7
NO_VLLM = "no vLLM environment (make vllm-env, or FLYWHEEL_VLLM_PYTHON=path/to/its/python)"


def vllm_python_path() -> Path | None:
    """The vLLM environment's Python, if there is one."""
    named = os.environ.get("FLYWHEEL_VLLM_PYTHON") or os.environ.get("FLYWHEEL_SERVING__VLLM_PYTHON")
    path = Path(named) if named else vllm_python(ServingConfig())
    return path if path.exists() else None


needs_vllm = pytest.mark.skipif(vllm_python_path() is None, reason=NO_VLLM)


def serving(**overrides: Any) -> ServingConfig:
    """Settings for test servers: room for a few small adapters, and the default dtype, which is
    float32 on vLLM's CPU build (exact log-probs; the exactness tests hold it to that)."""
    python = vllm_python_path()
    settings: dict[str, Any] = {
        "vllm_python": str(python or ".venv-vllm/bin/python"),
        "vllm_max_loras": 4,
        "vllm_start_timeout_s": 400,
        "vllm_health_interval_s": 0.2,
    }
    return ServingConfig(**{**settings, **overrides})


def small_cache_env() -> dict[str, str]:
    """vLLM's CPU KV cache at 1 GiB (its default is sized for a server, not a test box)."""
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}


class LoopThread:
    """One event loop in a thread, for engines that outlive a test (their HTTP clients and tasks
    belong to the loop that started them)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-loop")
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(model_dir: Path, log_path: Path) -> OwnedServer:
    """A vLLM server for `model_dir` with Flywheel's flags, as the engine starts its own."""
    # Each request logged, with its abort: the abort test reads them.
    settings = serving(vllm_args=["--enable-log-requests"])
    server = OwnedServer(str(model_dir), settings, TEMPERATURE, 4, log_path)
    server.env.update(small_cache_env())
    asyncio.run(server.start())
    return server
