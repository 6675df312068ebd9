"""`make gpu-check`: the loop at a real model's size on a CUDA machine, in one run of a few minutes.

On the Qwen2.5-Coder-0.5B-shaped model (bench/model_shapes.py, random weights: speed depends on the
shape), one backend serving through a vLLM server on the GPU (serving.engine = "vllm", the `vllm`
package in its own environment, made by the Makefile target) and the trainer on the GPU in bfloat16
(trainer/policy.py picks bf16 on CUDA), it prints:
- serving latency p50/p95 and tokens/s with 1 and with 32 concurrent clients (over HTTP, as
  `flywheel bench backend` measures);
- the trainer's PG update tokens/s (bench/trainer.py's throughput);
- turnaround: from the last of a batch of episodes finalizing to the candidate the continuous
  trainer made from them serving (uploaded, loaded into vLLM, answering a completion).

Without a CUDA device it refuses at once, one line: "no CUDA device: ...". `--dry-run` runs the same
path on this machine's CPU (vLLM's CPU build, the trainer in float32) with a small model and small
sizes: a check of the script, not figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

BUDGET_S = 8 * 60


class NoCuda(SystemExit):
    pass


def cuda_device() -> str:
    """The CUDA device's name; NoCuda (one line, exit 1) when there is none."""
    import torch

    if not torch.cuda.is_available():
        built = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", built without CUDA")
        raise NoCuda(
            f"no CUDA device: torch.cuda.is_available() is False ({built}); make gpu-check needs a GPU"
        )
    return torch.cuda.get_device_name(0)


def _latency(run: Any) -> dict[str, float]:
    import numpy as np

    wall = max(run.ends)
    return {
        "p50_ms": float(np.percentile(run.latencies, 50)),
        "p95_ms": float(np.percentile(run.latencies, 95)),
        "req_per_s": run.rate,
        "tokens_per_s": sum(run.tokens) / wall,
        "requests": len(run.latencies),
    }


def serving(url: str, client: dict[str, str], sequential: int, per_client: int) -> dict[str, Any]:
    from bench.backend_load import completion_clients

    asyncio.run(completion_clients(url, client, 4, 2))  # warm-up (CUDA graphs, caches)
    one = _latency(asyncio.run(completion_clients(url, client, 1, sequential)))
    many = _latency(asyncio.run(completion_clients(url, client, 32, per_client)))
    return {"one_client": one, "thirty_two_clients": many}


def turnaround(
    url: str, env: dict[str, str], data_dir: Path, episodes: int, timeout_s: float
) -> dict[str, Any]:
    """A continuous trainer beside the backend; `episodes` final outcomes; the time from the last
    of them to the candidate's first completion."""
    from bench.tokens import local_headers, people
    from bench.trainer import traffic
    from core.local_tokens import ADMIN, CLIENT
    from core.processes import stop_process

    client = local_headers(data_dir, CLIENT)
    users = people(url, local_headers(data_dir, ADMIN), 16, "gpu-check")
    trainer_env = dict(
        env,
        FLYWHEEL_BACKEND__URL=url,
        FLYWHEEL_TRAINER__MIN_EPISODES=str(episodes),
        FLYWHEEL_TRAINER__POLL_S="1",
    )
    with open(data_dir / "trainer.log", "wb") as log:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "trainer"],
            env=trainer_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        shown = 0
        # Until enough were shown to be episodes (the model may abstain on some).
        while shown < episodes:
            shown += asyncio.run(traffic(url, episodes, lambda body: True, users))
        finalized = time.perf_counter()
        version = None
        with httpx.Client(base_url=url, headers=client, timeout=60) as http:
            while version is None:
                if time.perf_counter() - finalized > timeout_s:
                    raise SystemExit(f"no candidate within {timeout_s:.0f} s; see {data_dir / 'trainer.log'}")
                if trainer.poll() is not None:
                    raise SystemExit(f"the trainer exited; see {data_dir / 'trainer.log'}")
                listed = http.get("/v1/checkpoints").raise_for_status().json()
                version = listed[0]["version"] if listed else None
                time.sleep(0.2)
            uploaded = time.perf_counter() - finalized
            state = listed[0]["state"]
            if state == "rejected":  # by the eval gate: it never serves
                return {"version": version, "episodes": episodes, "to_upload_s": uploaded, "state": state}
            while True:
                body = {"context": {"prefix": "def main():\n    ", "path": "a.py"}}
                if http.post("/v1/complete", json=body).raise_for_status().json()["model_version"] == version:
                    break
        serving_s = time.perf_counter() - finalized
    finally:
        stop_process(trainer)
    return {
        "version": version,
        "episodes": episodes,
        "to_upload_s": uploaded,
        "state": state,
        "to_serving_s": serving_s,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.model_shapes import build_model
    from bench.tokens import NO_CONFIGURED_TOKEN, local_headers
    from bench.trainer import throughput
    from core.config import load_settings
    from core.local_tokens import CLIENT
    from core.processes import start_backend, stop_process

    started = time.perf_counter()
    device = "cpu (dry run)" if args.dry_run else cuda_device()
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="fw-gpu-check-") as tmp:
        work = Path(tmp)
        model = args.model or str(build_model("qwen2.5-coder-0.5b", work / "model"))
        # Every backend and trainer this run starts serves through vLLM from the given environment.
        vllm = {
            "FLYWHEEL_SERVING__ENGINE": "vllm",
            "FLYWHEEL_SERVING__VLLM_PYTHON": args.vllm_python,
            "FLYWHEEL_CANARY__SHARE": "0",  # the candidate serves everyone once loaded: turnaround
            "HF_HUB_OFFLINE": "1",
            **NO_CONFIGURED_TOKEN,
        }
        if args.dry_run:
            vllm.update(FLYWHEEL_SERVING__VLLM_DTYPE="float32", VLLM_CPU_KVCACHE_SPACE="1")
        data_dir = work / "state"
        print(f"gpu-check on {device}: model {model}; vLLM from {args.vllm_python}", flush=True)
        process, url, env = start_backend(model, data_dir, timeout_s=600, **vllm)
        try:
            ready_s = time.perf_counter() - started
            print(f"backend and vLLM server ready after {ready_s:.0f} s", flush=True)
            client = local_headers(data_dir, CLIENT)
            figures: dict[str, Any] = {"device": device, "model": model, "ready_s": ready_s}
            figures["serving"] = serving(url, client, args.sequential, args.per_client)
            _print_serving(figures["serving"])
            figures["trainer"] = throughput(settings, model, args.train_episodes)
            figures["turnaround"] = turnaround(url, env, data_dir, args.episodes, args.turnaround_timeout_s)
            t = figures["turnaround"]
            serving_s = (
                f"serving {t['to_serving_s']:.1f} s" if "to_serving_s" in t else "rejected by its gate"
            )
            print(
                f"turnaround: last of {t['episodes']} episodes finalized -> {t['version']} uploaded"
                f" {t['to_upload_s']:.1f} s, {serving_s}",
                flush=True,
            )
        finally:
            stop_process(process)
    figures["wall_s"] = time.perf_counter() - started
    budget = "" if figures["wall_s"] <= BUDGET_S else f" (over the {BUDGET_S // 60}-minute budget)"
    print(f"gpu-check done in {figures['wall_s']:.0f} s{budget}")
    return figures


def _print_serving(s: dict[str, Any]) -> None:
    for name, key in (("1 client  ", "one_client"), ("32 clients", "thirty_two_clients")):
        f = s[key]
        print(
            f"serving, {name}: p50 {f['p50_ms']:.0f} ms, p95 {f['p95_ms']:.0f} ms,"
            f" {f['req_per_s']:.1f} req/s, {f['tokens_per_s']:.0f} tokens/s",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="the same path on the CPU, small sizes")
    parser.add_argument("--model", help="model directory (default: the 0.5B-shaped random model, built)")
    parser.add_argument(
        "--vllm-python",
        help="the vLLM environment's Python (default .venv-vllm-gpu/bin/python; dry run: .venv-vllm's)",
    )
    parser.add_argument("--sequential", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=8, help="requests per client at 32 clients")
    parser.add_argument("--train-episodes", type=int, default=128)
    parser.add_argument("--episodes", type=int, default=64, help="episodes the turnaround's cycle trains on")
    parser.add_argument("--turnaround-timeout-s", type=float, default=240)
    args = parser.parse_args(argv)
    if args.dry_run:
        # Sizes for a check of the path, whatever was asked: the CPU is no place for figures.
        args.sequential, args.per_client, args.train_episodes, args.episodes = 4, 1, 4, 4
    else:
        cuda_device()  # before anything is built or started
    if args.vllm_python is None:
        cpu = os.environ.get("FLYWHEEL_SERVING__VLLM_PYTHON", ".venv-vllm/bin/python")
        args.vllm_python = cpu if args.dry_run else ".venv-vllm-gpu/bin/python"
    args.vllm_python = str(Path(args.vllm_python).absolute())  # not resolve(): a venv's python is a link
    if not Path(args.vllm_python).exists():
        raise SystemExit(f"no vLLM environment at {args.vllm_python} (make gpu-check makes one)")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
