"""`flywheel bench serving`: the two serving engines side by side on one model, in one run.

For each engine (serving.engine = "inprocess", Flywheel's own continuous batching over
transformers; "vllm", a vLLM OpenAI server the backend starts) a real `flywheel backend` is started
on loopback on the same model directory, and measured over HTTP as `flywheel bench backend` does
(bench/backend_load.py's clients, bench/backend_requests.py's prompts):
- completion latency p50/p95 with 1 client, and throughput (requests and tokens a second) with 16;
- a hot swap under the 16 clients' load: from the upload of a new adapter version to its install
  (the upload's answer) and to the first completion it serves, and the requests that failed
  meanwhile (the target is none);
- how long the backend took to be ready (the vLLM server's start included).
Then the trainer's update tokens/s on the same model (bench/trainer.py's throughput), once: the
trainer is the same whichever engine serves.

The default model is a randomly initialised one of Qwen2.5-Coder-0.5B's shape (bench/model_shapes.py),
built on first use: speed depends on a model's shape, not its weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.backend_load import ClientRun, completion_clients
from bench.backend_requests import PREFIXES
from bench.rows import Reference, Target, row
from bench.tokens import NO_CONFIGURED_TOKEN, local_headers
from core.config import Settings
from core.local_tokens import ADMIN, CLIENT
from core.processes import start_backend, stop_process
from core.wire import ADAPTER_FILES

ENGINES = ("inprocess", "vllm")
SHAPE = "qwen2.5-coder-0.5b"


def default_model(settings: Settings) -> Path:
    """The 0.5B-shaped random model under the data directory, built the first time (~30 s)."""
    from bench.model_shapes import build_model

    path = settings.state_dir / "models" / f"{SHAPE}-random"
    if not (path / "config.json").is_file():
        print(f"building the {SHAPE}-shaped model (random weights) at {path}")
        build_model(SHAPE, path)
    return path


def make_adapter(model: str, output: Path, settings: Settings) -> Path:
    """An adapter of the trainer's shape (rank, target modules) with non-zero weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = settings.trainer
    torch.manual_seed(0)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    peft_model.save_pretrained(output)
    return output


# A 0.5B model on a busy CPU takes minutes to answer 16 clients at once: no request gives up sooner.
REQUEST_TIMEOUT_S = 900


def _clients(run: ClientRun) -> dict[str, Any]:
    wall = max(run.ends) if run.ends else 0.0
    return {
        "p50_ms": float(np.percentile(run.latencies, 50)),
        "p95_ms": float(np.percentile(run.latencies, 95)),
        "requests": len(run.latencies),
        "mean_tokens": float(np.mean(run.tokens)),
        "req_per_s": run.rate,
        "tokens_per_s": sum(run.tokens) / wall if wall else 0.0,
    }


async def swap_under_load(
    url: str, client: dict[str, str], admin: dict[str, str], adapter: Path, base_model: str, swaps: int
) -> dict[str, Any]:
    """16 clients complete while `swaps` uploads land; per swap, the upload's time (written,
    installed, live) and the time to the first completion served by the new version; and every
    request that failed (a status other than 200, or no answer) over the whole run."""
    stop = asyncio.Event()
    served: list[tuple[float, str]] = []  # (end, version) of each answered request
    failures: list[str] = []
    requests = 0

    async def one(number: int, http: aiohttp.ClientSession) -> None:
        nonlocal requests
        turn = 0
        while not stop.is_set():
            body = {"context": {"prefix": PREFIXES[(number + turn) % len(PREFIXES)]}}
            turn += 1
            requests += 1
            try:
                async with http.post(f"{url}/v1/complete", json=body, headers=client) as response:
                    if response.status != 200:
                        failures.append(f"{response.status}: {(await response.text())[:200]}")
                        continue
                    answer = await response.json()
            except (TimeoutError, aiohttp.ClientError) as error:
                failures.append(repr(error))
                continue
            served.append((time.perf_counter(), answer["model_version"]))

    files = {name: (adapter / name).read_bytes() for name in ADAPTER_FILES}
    swapped: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20), timeout=timeout) as http:
        traffic = [asyncio.create_task(one(n, http)) for n in range(16)]
        for _ in range(swaps):
            await asyncio.sleep(2.0)
            form = aiohttp.FormData()
            form.add_field("metadata", json.dumps({"base_model": base_model, "parent_version": "base"}))
            for name, data in files.items():
                form.add_field(name, data, filename=name)
            started = time.perf_counter()
            async with http.post(f"{url}/v1/checkpoints", data=form, headers=admin) as response:
                response.raise_for_status()
                version = (await response.json())["version"]
            installed = time.perf_counter()
            while not any(end > started and v == version for end, v in served):
                if all(task.done() for task in traffic):
                    raise RuntimeError("the clients stopped before the new version served")
                await asyncio.sleep(0.01)
            first = min(end for end, v in served if end > started and v == version)
            swapped.append(
                {
                    "version": version,
                    "install_ms": (installed - started) * 1000,
                    "serving_ms": (first - started) * 1000,
                }
            )
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*traffic)
    return {
        "swaps": swapped,
        "install_ms": float(np.mean([s["install_ms"] for s in swapped])),
        "to_serving_ms": float(np.mean([s["serving_ms"] for s in swapped])),
        "requests": requests,
        "failed": len(failures),
        "failures": failures[:10],
    }


def _vllm_on_cpu() -> dict[str, str]:
    """Without CUDA, vLLM's CPU build as the in-process engine runs there: float32 (the weights are
    stored in bfloat16), and a KV cache of a fixed size (by default it reserves most of the
    machine's memory, and refuses to start when others use it)."""
    import torch

    if torch.cuda.is_available():
        return {}
    return {
        "FLYWHEEL_SERVING__VLLM_DTYPE": os.environ.get("FLYWHEEL_SERVING__VLLM_DTYPE", "float32"),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    }


def measure_engine(
    engine: str, model: str, adapter: Path, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """One engine's figures, from a backend of its own (a fresh data directory)."""
    state = work / engine
    started = time.perf_counter()
    process, url, _ = start_backend(
        model,
        state,
        timeout_s=900,
        **(_vllm_on_cpu() if engine == "vllm" else {}),
        FLYWHEEL_SERVING__ENGINE=engine,
        FLYWHEEL_MODEL__MAX_NEW_TOKENS=str(args.max_new_tokens),
        FLYWHEEL_CANARY__SHARE="0",  # an upload goes live at once: the swap is the figure
        HF_HUB_OFFLINE="1",
        **NO_CONFIGURED_TOKEN,
    )
    ready_s = time.perf_counter() - started
    try:
        client, admin = local_headers(state, CLIENT), local_headers(state, ADMIN)
        asyncio.run(completion_clients(url, client, 4, 1, REQUEST_TIMEOUT_S))  # warm-up
        one = _clients(asyncio.run(completion_clients(url, client, 1, args.sequential, REQUEST_TIMEOUT_S)))
        many = _clients(asyncio.run(completion_clients(url, client, 16, args.per_client, REQUEST_TIMEOUT_S)))
        swap = asyncio.run(swap_under_load(url, client, admin, adapter, model, args.swaps))
    finally:
        stop_process(process)
    figures = {"ready_s": ready_s, "one_client": one, "sixteen_clients": many, "hot_swap": swap}
    print(
        f"{engine:>9}: ready {ready_s:.0f} s; 1 client p50 {one['p50_ms']:.0f} / p95 {one['p95_ms']:.0f} ms,"
        f" {one['tokens_per_s']:.1f} tokens/s; 16 clients {many['req_per_s']:.2f} req/s,"
        f" {many['tokens_per_s']:.1f} tokens/s (p50 {many['p50_ms']:.0f} ms); hot swap: installed in"
        f" {swap['install_ms']:.0f} ms, serving after {swap['to_serving_ms']:.0f} ms,"
        f" {swap['failed']} of {swap['requests']} requests failed",
        flush=True,
    )
    for failure in swap["failures"]:
        print(f"           failed: {failure}")
    return figures


def print_side_by_side(figures: dict[str, Any]) -> None:
    engines = [e for e in ENGINES if e in figures["engines"]]
    lines = [
        ("ready (backend + model)", "s", lambda f: f["ready_s"]),
        ("1 client, p50", "ms", lambda f: f["one_client"]["p50_ms"]),
        ("1 client, p95", "ms", lambda f: f["one_client"]["p95_ms"]),
        ("1 client, tokens/s", "", lambda f: f["one_client"]["tokens_per_s"]),
        ("16 clients, req/s", "", lambda f: f["sixteen_clients"]["req_per_s"]),
        ("16 clients, tokens/s", "", lambda f: f["sixteen_clients"]["tokens_per_s"]),
        ("16 clients, p50", "ms", lambda f: f["sixteen_clients"]["p50_ms"]),
        ("hot swap, installed", "ms", lambda f: f["hot_swap"]["install_ms"]),
        ("hot swap, serving", "ms", lambda f: f["hot_swap"]["to_serving_ms"]),
        ("hot swap, failed requests", "", lambda f: f["hot_swap"]["failed"]),
    ]
    print(f"\n{'model ' + figures['model']:<40}" + "".join(f"{e:>14}" for e in engines))
    for name, unit, value in lines:
        label = f"{name} ({unit})" if unit else name
        print(f"{label:<40}" + "".join(f"{value(figures['engines'][e]):>14.1f}" for e in engines))
    if "trainer" in figures:
        t = figures["trainer"]
        print(f"{'trainer pg update (tokens/s)':<40}{t['pg_tokens_per_s']:>14.1f}  (either engine)")


# A smoke run: every part runs once, with few requests.
QUICK = [
    "--sequential",
    "4",
    "--per-client",
    "1",
    "--swaps",
    "1",
    "--train-episodes",
    "8",
    "--max-new-tokens",
    "16",
]


def run(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="flywheel bench serving", description=__doc__)
    parser.add_argument("--model", help=f"model directory (default: a {SHAPE}-shaped random one, built)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: inprocess,vllm")
    parser.add_argument("--sequential", type=int, default=32, help="requests sent by the single client")
    parser.add_argument("--per-client", type=int, default=4, help="requests per client at 16 clients")
    parser.add_argument("--swaps", type=int, default=3, help="hot swaps timed under load")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="each completion's token cap")
    parser.add_argument(
        "--train-episodes", type=int, default=32, help="episodes of the trainer's update (0: none)"
    )
    args = parser.parse_args(list(argv))
    engines = [e for e in args.engines.split(",") if e]
    if unknown := set(engines) - set(ENGINES):
        parser.error(f"unknown engine(s) {sorted(unknown)}; choose from {list(ENGINES)}")
    model = args.model or str(default_model(settings))
    print(
        f"model {model}; at most {args.max_new_tokens} new tokens a completion;"
        f" load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    figures: dict[str, Any] = {
        "model": model,
        "max_new_tokens": args.max_new_tokens,
        "load_average": list(os.getloadavg()),
        "engines": {},
    }
    with tempfile.TemporaryDirectory(prefix="fw-bench-serving-") as tmp:
        work = Path(tmp)
        adapter = make_adapter(model, work / "adapter", settings)
        for engine in engines:
            figures["engines"][engine] = measure_engine(engine, model, adapter, args, work)
    if args.train_episodes:
        from bench.trainer import throughput

        figures["trainer"] = throughput(settings, model, args.train_episodes)
    figures["load_average_after"] = list(os.getloadavg())
    print_side_by_side(figures)
    return figures


def summary(f: dict[str, Any]) -> list[dict[str, Any]]:
    """Per engine: latency, throughput against its own single client, the swap (no failures)."""
    rows: list[dict[str, Any]] = []
    for engine, e in f["engines"].items():
        one, many, swap = e["one_client"], e["sixteen_clients"], e["hot_swap"]
        suite = f"serving ({engine})"
        rows += [
            row(suite, "completion latency, 1 client, p50", one["p50_ms"], "ms"),
            row(suite, "completion latency, 1 client, p95", one["p95_ms"], "ms"),
            row(
                suite,
                "throughput, 16 concurrent clients",
                many["tokens_per_s"],
                "tokens/s",
                reference=Reference("1 client, sequential", one["tokens_per_s"], "tokens/s"),
            ),
            row(suite, "hot swap, upload to installed", swap["install_ms"], "ms"),
            row(suite, "hot swap, upload to first completion served", swap["to_serving_ms"], "ms"),
            row(suite, "hot swap, failed requests", swap["failed"], "requests", Target("<=", 0)),
        ]
    if "trainer" in f:
        t = f["trainer"]
        raw = Reference("raw forward+backward, same batches", t["raw_tokens_per_s"], "tokens/s")
        rows.append(
            row("serving (trainer)", "pg update, same model", t["pg_tokens_per_s"], "tokens/s", reference=raw)
        )
    return rows
