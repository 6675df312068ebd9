"""`flywheel trainer --once` under `torchrun --nproc_per_node 2` (gloo, CPU) against a real backend,
and its adapter against the one-process trainer's on the same episodes from the same start: a live
adapter both download (a fresh adapter's random draw would differ between the runs).

Tolerance: the two runs do the same maths in another order (each rank's rows are padded to their own
width, the ranks' gradients are added by gloo, the reference log-probs are computed in other
batches), so float32 rounding differs, and AdamW's first steps (update ≈ lr · sign(gradient)) can
amplify a rounding difference in a near-zero gradient to a whole step of that element. The test
asks that no adapter element differs by more than 1% of the largest change the update made and
that the changes agree as vectors (cosine > 0.9999). Measured: differences up to 1e-5 of the
largest change (1.5e-8 against 1.9e-3), cosine 1.000000, on 25 episodes, minibatches of 5, two
epochs. Ranks that step on their own gradients without summing them miss both by far (checked:
difference 2.6e-3 against a change of 2.2e-3, cosine 0.77).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import torch
from conftest import make_adapter
from safetensors.torch import load

from core.processes import free_port
from core.wire import ADAPTER_FILES, BASE_VERSION

pytestmark = pytest.mark.timeout(240)

EPISODES = 24
PREFIXES = ["def add(a, b):\n    return ", "import os\nprint(os.", "for i in range(", "class P:\n    def "]


def torchrun() -> list[str]:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def make_episodes(url: str, client: dict[str, str], admin: dict[str, str]) -> int:
    """Completions with a final accept or reject each, until EPISODES were shown; waits until the
    backend finalized them into episodes."""
    shown = 0
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(EPISODES * 4):
            context = {"prefix": PREFIXES[i % len(PREFIXES)] + "x" * (i % 3), "path": "a.py"}
            response = http.post("/v1/complete", json={"context": context}, headers=client)
            body = response.raise_for_status().json()
            if not body["text"]:
                continue
            event = dict(
                event_id=uuid.uuid4().hex,
                completion_id=body["completion_id"],
                kind="accepted" if shown % 3 else "rejected",
                client_ts=1.0,
                visible_ms=900.0,
                final=True,
            )
            http.post("/v1/events", json={"events": [event]}, headers=client).raise_for_status()
            shown += 1
            if shown == EPISODES:
                break
        for _ in range(300):
            page = http.get("/v1/episodes", params={"cursor": 0, "limit": 1000}, headers=admin)
            if len(page.raise_for_status().json()["episodes"]) >= shown:
                return shown
            time.sleep(0.1)
    raise AssertionError("the backend did not finalize the episodes")


def versions(backend) -> set[str]:
    listed = httpx.get(f"{backend.url}/v1/checkpoints", headers=backend.client).raise_for_status().json()
    return {c["version"] for c in listed}


def train_once(command: list[str], backend, data_dir: Path) -> str:
    """One `flywheel trainer --once`; the version it uploaded (promoted at once: canary share 0)."""
    before = versions(backend)
    env = dict(
        os.environ,
        FLYWHEEL_DATA_DIR=str(data_dir),
        FLYWHEEL_BACKEND__URL=backend.url,
        FLYWHEEL_BACKEND__TOKEN=backend.admin["authorization"].removeprefix("Bearer "),
        FLYWHEEL_TRAINER__DEVICE="cpu",
        # The update is compared; the gate and the floors (rank 0's alone) only cost time here.
        FLYWHEEL_TRAINER__GATE__ENABLED="false",
        FLYWHEEL_TRAINER__LEARN_FLOOR="false",
        FLYWHEEL_TRAINER__BATCH_SIZE="5",
        FLYWHEEL_TRAINER__EPOCHS="2",
        OMP_NUM_THREADS="1",
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    [uploaded] = versions(backend) - before
    return uploaded


def adapter(backend, version: str) -> dict[str, torch.Tensor]:
    response = httpx.get(
        f"{backend.url}/v1/checkpoints/{version}/files/adapter_model.safetensors", headers=backend.admin
    )
    return load(response.raise_for_status().content)


def upload_live(backend, model_dir: Path, tmp_path: Path) -> str:
    """A random non-zero adapter uploaded as a checkpoint, live at once (canary share 0)."""
    adapter = make_adapter(model_dir, tmp_path / "start", seed=3)
    files = {name: (name, (adapter / name).read_bytes()) for name in ADAPTER_FILES}
    meta = {"base_model": str(model_dir), "parent_version": BASE_VERSION, "metrics": {}, "gate": None}
    answer = httpx.post(
        f"{backend.url}/v1/checkpoints",
        data={"metadata": json.dumps(meta)},
        files=files,
        headers=backend.admin,
        timeout=120,
    )
    return answer.raise_for_status().json()["version"]


def test_two_processes_update_as_one(backend, tiny_model_dir: Path, tmp_path: Path) -> None:
    start = upload_live(backend, tiny_model_dir, tmp_path)
    shown = make_episodes(backend.url, backend.client, backend.admin)
    trainer = ["-m", "flywheel.cli", "trainer", "--once"]
    rendezvous = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    two = train_once([*torchrun(), "--nproc_per_node", "2", *rendezvous, *trainer], backend, tmp_path / "two")
    # Back to the starting version, so the one-process trainer starts where the two did, on the
    # same page of episodes.
    rolled = httpx.post(f"{backend.url}/v1/admin/checkpoints/{two}/rollback", headers=backend.admin)
    assert rolled.raise_for_status().json()["live"] == start
    one = train_once([sys.executable, *trainer], backend, tmp_path / "one")

    before, on_two, on_one = adapter(backend, start), adapter(backend, two), adapter(backend, one)
    assert on_two.keys() == on_one.keys() == before.keys() and before
    moved_two = torch.cat([(on_two[k] - before[k]).flatten() for k in sorted(before)])
    moved_one = torch.cat([(on_one[k] - before[k]).flatten() for k in sorted(before)])
    largest = moved_one.abs().max()
    assert largest > 0, "the update did not move the adapter"
    worst = max(float((on_two[k] - on_one[k]).abs().max()) for k in on_two)
    cosine = float(torch.nn.functional.cosine_similarity(moved_two, moved_one, dim=0))
    print(f"{shown} episodes: change {float(largest):.3g}, difference {worst:.3g}, cosine {cosine:.6f}")
    assert worst <= 0.01 * largest, (worst, float(largest))
    assert cosine > 0.9999, cosine
    # Only rank 0 talked to the backend: one upload per run.
    assert versions(backend) == {start, one, two}
