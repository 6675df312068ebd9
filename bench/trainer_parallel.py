"""The PG update's tokens/s on one process and on N under torchrun, on the same episodes.

`flywheel bench trainer --only parallel --processes 2` runs this module twice, alone and under
`torchrun --nproc_per_node 2` (gloo on CPU, NCCL on GPUs), and reports both. Each run times one
`train_on_episodes` over the same synthetic episodes (bench/trainer.py's), after a warm-up update
on a few of them; rank 0 prints the figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from core.config import Settings
from core.processes import free_port

MARK = "PARALLEL "


def measure(model_dir: str, n: int) -> dict[str, Any] | None:
    """This process's part of the timed update; the figures on rank 0, None on the others."""
    from transformers import AutoTokenizer

    from bench.trainer import synthetic_episodes
    from trainer.distributed import join, leave
    from trainer.objectives.pg import PGConfig
    from trainer.policy import load_policy
    from trainer.update import train_on_episodes

    cfg = Settings().trainer
    world = join(cfg.device)
    try:
        policy = load_policy(model_dir, None, cfg, world.device)
        episodes = synthetic_episodes(policy, AutoTokenizer.from_pretrained(model_dir), n)
        tokens = sum(len(e.prompt_ids) + len(e.completion_ids) for e in episodes)
        common = dict(learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, measure_kl_after=False)
        # Replay off: its windows come from the standard library, read from disk by every rank.
        config = PGConfig(replay_coef=0.0)
        train_on_episodes(policy, episodes[: cfg.batch_size], config, epochs=1, world=world, **common)
        started = time.perf_counter()
        train_on_episodes(policy, episodes, config, epochs=1, world=world, **common)
        elapsed = time.perf_counter() - started
    finally:
        leave(world)
    if not world.is_main:
        return None
    return {
        "processes": world.size,
        "device": str(world.device),
        "threads_per_process": torch.get_num_threads(),
        "episodes": n,
        "batch_size": cfg.batch_size,
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
    }


def run_parallel(model_dir: str, n: int, processes: int) -> dict[str, Any]:
    """One process, then `processes` under torchrun; the same episodes, threads split evenly."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    figures: dict[str, Any] = {}
    for count in (1, processes):
        launcher = [sys.executable]
        if count > 1:
            found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
            launcher = [found] if found else [sys.executable, "-m", "torch.distributed.run"]
            launcher += ["--nproc_per_node", str(count), "--master_addr", "127.0.0.1"]
            launcher += ["--master_port", str(free_port())]
        # The same threads per process in both runs: the second run adds processes, not threads.
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        done = subprocess.run(
            [*launcher, "-m", "bench.trainer_parallel", model_dir, str(n)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{count} process(es) failed:\n{done.stderr[-4000:]}")
        figures[str(count)] = json.loads(lines[-1].removeprefix(MARK))
        print(
            f"pg update, {count} process(es) x {threads} thread(s):"
            f" {figures[str(count)]['tokens_per_s']:10.0f} tokens/s"
        )
    figures["speedup"] = figures[str(processes)]["tokens_per_s"] / figures["1"]["tokens_per_s"]
    print(f"speed-up with {processes} processes: {figures['speedup']:.2f}x")
    return figures


if __name__ == "__main__":
    measured = measure(sys.argv[1], int(sys.argv[2]))
    if measured is not None:
        print(MARK + json.dumps(measured), flush=True)
