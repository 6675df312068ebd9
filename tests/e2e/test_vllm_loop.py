"""The whole loop on the vLLM engine (serving.engine = "vllm"), with a real vLLM server on this CPU.

The journey of tests/e2e/test_whole_loop.py (a real LSP client, the language server, the backend, a
trainer cycle), on a backend that starts and owns a vLLM server (backend/vllm_server.py) from the
vLLM environment (`make vllm-env`): the completion is decoded by vLLM; the trainer's adapter is
loaded into the server at run time and tried as a canary on real traffic from several people
(completions decoded by vLLM under both versions, in shared batches); the canary promotes it; the
editor's next completion is served by it. Skipped without a vLLM environment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RunningBackend, stop_backend
from test_whole_loop import live_version, travel
from vllm_support import NO_VLLM, TEMPERATURE, small_cache_env, vllm_python_path

from backend.engine import Generation
from bench.tokens import people
from core import processes
from tests.backend.backend_traffic import drive
from tests.backend.test_vllm_engine import TOLERANCE, Reference

# Half the people get the candidate; it is promoted once both arms have a few finalized episodes
# with nothing significantly worse (a horizon this short decides nothing statistically: it is the
# path through the canary that is under test, on vLLM).
CANARY = {
    "FLYWHEEL_CANARY__SHARE": "0.5",
    "FLYWHEEL_CANARY__MIN_EPISODES": "3",
    "FLYWHEEL_CANARY__MAX_EPISODES": "3",
    "FLYWHEEL_CANARY__INTERVAL_S": "0.2",
}
PEOPLE = 12


@pytest.fixture
def vllm_backend(tiny_model_dir: Path, tmp_path: Path) -> Iterator[RunningBackend]:
    python = vllm_python_path()
    if python is None:
        pytest.skip(NO_VLLM)
    data_dir = tmp_path / "state"
    process, url, env = processes.start_backend(
        tiny_model_dir,
        data_dir,
        timeout_s=400,  # the vLLM server's start (about 40 s here, more on a busy machine)
        FLYWHEEL_SERVING__ENGINE="vllm",
        FLYWHEEL_SERVING__VLLM_PYTHON=str(python),
        FLYWHEEL_SERVING__VLLM_DTYPE="float32",
        FLYWHEEL_BACKEND__FINALIZE_INTERVAL_S="0.2",
        FLYWHEEL_BACKEND__TOKEN="",
        **CANARY,
        **small_cache_env(),
    )
    running = RunningBackend(url, data_dir, env, process, data_dir / "backend.log")
    yield running
    stop_backend(running)


def state_of(backend: RunningBackend, version: str) -> str:
    listed = httpx.get(f"{backend.url}/v1/checkpoints", headers=backend.admin).json()
    return {c["version"]: c["state"] for c in listed}[version]


def canary_promotes(backend: RunningBackend, trainer_output: str, timeout_s: float = 120) -> None:
    """The trainer's v1 is loaded into vLLM as the canary; traffic from several people, decoded by
    vLLM under v1 and under base, gives both arms their episodes; the canary promotes v1."""
    assert state_of(backend, "v1") == "canary", trainer_output
    crowd = people(backend.url, backend.admin, PEOPLE, "vllm-loop")
    served: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    seed = 0
    while state_of(backend, "v1") == "canary":
        assert time.monotonic() < deadline, f"v1 still a canary after {timeout_s} s; served {served}"
        counts = asyncio.run(drive(backend.url, 8, lambda version: 0.5, crowd, editors=4, seed=seed))
        for version, n in counts.items():
            served[version] = served.get(version, 0) + n
        seed += 1
        time.sleep(0.5)  # the finalizer's and the canary's ticks
    assert served.get("v1", 0) > 0 and served.get("base", 0) > 0, served
    assert state_of(backend, "v1") == "live"
    assert live_version(backend) == "v1"


def stored_episodes(backend: RunningBackend) -> list[dict]:
    episodes: list[dict] = []
    cursor = 0
    while True:
        params = {"cursor": cursor, "include_evaluation": "true"}
        page = httpx.get(f"{backend.url}/v1/episodes", params=params, headers=backend.admin).json()
        if not page["episodes"]:
            return episodes
        episodes += page["episodes"]
        cursor = page["next_cursor"]


def stored_logprobs_are_the_models_own(backend: RunningBackend, model_dir: Path) -> None:
    """The trainer's episodes, as the store gives them, recomputed with transformers + peft: the
    log-probs vLLM recorded under base and under v1 are log_softmax(logits / T) at each token."""
    episodes = [e for e in stored_episodes(backend) if e["completion_ids"]]
    assert {e["model_version"] for e in episodes} >= {"base", "v1"}
    assert {e["temperature"] for e in episodes} == {TEMPERATURE}
    generations = [
        Generation(e["model_version"], e["prompt_ids"], e["completion_ids"], e["token_logprobs"], "")
        for e in episodes
    ]
    reference = Reference(model_dir, {"v1": backend.data_dir / "checkpoints" / "v1"})
    assert reference.worst(generations) < TOLERANCE


async def test_completion_travels_the_loop_on_vllm(
    vllm_backend: RunningBackend, tmp_path: Path, tiny_model_dir: Path
) -> None:
    await travel(vllm_backend, tmp_path, canary_promotes)
    stored_logprobs_are_the_models_own(vllm_backend, tiny_model_dir)
    # Decoded by vLLM throughout: the backend's log names the server it started, and no model
    # process of the in-process engine ever ran.
    log = vllm_backend.log()
    assert "vLLM server" in log and "model process" not in log
