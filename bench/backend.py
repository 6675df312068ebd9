"""`flywheel bench backend`: serving latency and throughput, event ingestion, the cost of a hot swap.

Starts a real `flywheel backend` on loopback (a fresh data directory) and measures it over HTTP:
- completion latency p50/p95 with 1 client (sequential) and with 16 concurrent clients;
- throughput at 16 concurrent clients over 1 sequential client;
- outcome-event ingestion rate in batches of 100;
- the added latency of a hot swap: requests in flight while a checkpoint is uploaded and swapped
  in, against those that were not.

References measured in the same run, for the report's ratios (`flywheel bench backend --out`):
sequential requests each decoded again in this process with transformers alone, and the same
event rows inserted with plain sqlite3 into the same schema (bench/backend_references.py). The
load generators are in bench/backend_load.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.backend_load import ClientRun, completion_clients, ingest, swap_cost
from bench.backend_references import against_raw_decode, plain_sqlite_rate
from bench.rows import Reference, Target, row
from bench.tokens import NO_CONFIGURED_TOKEN, local_headers
from core.config import Settings
from core.local_tokens import ADMIN, CLIENT
from core.processes import start_backend, stop_process

INGEST_RUNS = 3
SERVING_RUNS = 3


def _make_adapter(model: str, output: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model), LoraConfig(r=8, lora_alpha=16))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    peft_model.save_pretrained(output)
    return output


def _latency(runs: Sequence[ClientRun]) -> dict[str, Any]:
    """Latency percentiles over every request of the runs; the median run's rate."""
    latencies = [ms for run in runs for ms in run.latencies]
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "mean_ms": float(np.mean(latencies)),
        "requests": len(latencies),
        "mean_tokens": float(np.mean([t for run in runs for t in run.tokens])),
        "req_per_s": float(np.median([run.rate for run in runs])),
        "runs_req_per_s": [run.rate for run in runs],
    }


def _percentiles(latency: dict[str, float]) -> str:
    return f"p50 {latency['p50_ms']:7.1f} ms   p95 {latency['p95_ms']:7.1f} ms"


def _serving(
    settings: Settings, model: str, url: str, client: dict[str, str], args: argparse.Namespace
) -> tuple[dict[str, Any], list[str]]:
    """Latency and throughput at 1 and 16 clients, and served against raw decoding; also the ids
    of the completions served, for the events of the ingestion run."""
    asyncio.run(completion_clients(url, client, 4, 2))  # warm-up
    # Alternating runs, medians: one client's rate moves by a third between runs (sampled lengths,
    # this machine's neighbours), so a single pair gave ratios from 2.9x to 5.0x.
    ones: list[ClientRun] = []
    manys: list[ClientRun] = []
    for _ in range(SERVING_RUNS):
        ones.append(asyncio.run(completion_clients(url, client, 1, args.sequential)))
        manys.append(asyncio.run(completion_clients(url, client, 16, args.per_client)))
    one_latency, many_latency = _latency(ones), _latency(manys)
    for name, latency in (("1 client:   ", one_latency), ("16 clients: ", many_latency)):
        print(
            f"completion, {name} {_percentiles(latency)}   {latency['req_per_s']:6.2f} req/s"
            f" (median; runs {', '.join(f'{r:.1f}' for r in latency['runs_req_per_s'])};"
            f" {latency['mean_tokens']:.1f} tokens per request)"
        )
    ratio = many_latency["req_per_s"] / one_latency["req_per_s"]
    # Sampled lengths differ run to run; the token rate shows how much of a ratio is length alone.
    token_ratio = ratio * many_latency["mean_tokens"] / one_latency["mean_tokens"]
    pairs = [m.rate / o.rate for o, m in zip(ones, manys, strict=True)]
    print(
        f"throughput 16 clients / 1 client: {ratio:.2f}x in requests (medians; pairs"
        f" {', '.join(f'{r:.2f}x' for r in pairs)}), {token_ratio:.2f}x in tokens"
    )
    raw = against_raw_decode(settings, model, url, client, args.sequential)
    print(
        f"1 client, served and then decoded in-process with transformers alone, in turn:"
        f" mean {raw['served_mean_ms']:.1f} ms vs {raw['raw_mean_ms']:.1f} ms raw"
        f" ({raw['served_mean_ms'] / raw['raw_mean_ms']:.2f}x)"
    )
    figures = {
        "one_client": one_latency,
        "sixteen_clients": many_latency,
        "throughput_ratio": ratio,
        "throughput_ratio_pairs": pairs,
        "token_throughput_ratio": token_ratio,
        "against_raw_decode": raw,
    }
    return figures, [i for run in ones + manys for i in run.ids]


def _ingestion(
    url: str, client: dict[str, str], completion_ids: list[str], batches: int, work: Path
) -> dict[str, Any]:
    """The median of three runs (each of `batches` batches), against plain sqlite3 measured alike."""
    asyncio.run(ingest(url, client, completion_ids, max(1, batches // 5)))  # warm-up
    rates = [asyncio.run(ingest(url, client, completion_ids, batches)) for _ in range(INGEST_RUNS)]
    plain = [
        plain_sqlite_rate(work / f"plain-{n}.sqlite3", completion_ids, batches) for n in range(INGEST_RUNS)
    ]
    rate, plain_rate = float(np.median(rates)), float(np.median(plain))
    print(
        f"event ingestion, batches of 100: {rate:,.0f} events/s (median; runs {_figures(rates)});"
        f" plain sqlite3, same rows: {plain_rate:,.0f} rows/s ({rate / plain_rate:.2f}x)"
    )
    return {"events_per_s": rate, "runs": rates, "plain_sqlite_rows_per_s": plain_rate, "batches": batches}


def _figures(values: Sequence[float]) -> str:
    return ", ".join(f"{value:,.0f}" for value in values)


def _print_swap(swap: dict[str, float]) -> None:
    print(
        f"hot swap: upload+swap {swap['swap_ms']:.0f} ms; requests in flight during a swap"
        f" p50 {swap['during_p50']:.1f} / p95 {swap['during_p95']:.1f} ms vs others"
        f" p50 {swap['other_p50']:.1f} / p95 {swap['other_p95']:.1f} ms;"
        f" added mean latency {swap['added_mean_ms']:+.1f} ms"
        f" ({swap['requests']:.0f} requests, 0 failed)"
    )


# `flywheel bench all --quick`: every part runs, in seconds; the figures mean little.
QUICK = ["--sequential", "4", "--per-client", "1", "--event-batches", "20", "--swaps", "1"]


def run(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    """Measures, prints the figures as it goes, and returns them."""
    parser = argparse.ArgumentParser(prog="flywheel bench backend")
    parser.add_argument(
        "--model", help="model directory or Hub id (default: the configured model, else the bootstrapped one)"
    )
    parser.add_argument("--sequential", type=int, default=64, help="requests sent by the single client")
    parser.add_argument("--per-client", type=int, default=16, help="requests per client at 16 clients")
    parser.add_argument("--event-batches", type=int, default=1000, help="event batches sent for ingestion")
    parser.add_argument("--swaps", type=int, default=5, help="checkpoint hot-swaps timed")
    args = parser.parse_args(list(argv))
    model = args.model or settings.base_model

    with tempfile.TemporaryDirectory(prefix="fw-bench-backend-") as tmp:
        data_dir = Path(tmp)
        state = data_dir / "state"
        # No canary (share 0): every upload goes live at once, and whoever asks is served alike.
        process, url, _ = start_backend(
            model, state, FLYWHEEL_CANARY__SHARE="0", HF_HUB_OFFLINE="1", **NO_CONFIGURED_TOKEN
        )
        try:
            client, admin = local_headers(state, CLIENT), local_headers(state, ADMIN)
            print(f"model {model}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            figures: dict[str, Any] = {"model": model, "load_average": list(os.getloadavg())}
            figures["serving"], ids = _serving(settings, model, url, client, args)
            figures["ingestion"] = _ingestion(url, client, ids, args.event_batches, data_dir)
            adapter = _make_adapter(model, data_dir / "adapter")
            swap = asyncio.run(swap_cost(url, client, admin, adapter, model, args.swaps))
            figures["hot_swap"] = swap
            _print_swap(swap)
            print(f"load average after: {os.getloadavg()[0]:.2f}")
        finally:
            stop_process(process)
    return figures


def summary(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows: serving against a raw decode of the same requests and against one
    sequential client, ingestion against plain SQLite inserts of the same rows."""
    serving, ingestion, swap = f["serving"], f["ingestion"], f["hot_swap"]
    one, many, raw = serving["one_client"], serving["sixteen_clients"], serving["against_raw_decode"]
    return [
        row("backend", "completion latency, 1 client, p50", one["p50_ms"], "ms"),
        row("backend", "completion latency, 1 client, p95", one["p95_ms"], "ms"),
        row("backend", "completion latency, 16 concurrent clients, p50", many["p50_ms"], "ms"),
        row("backend", "completion latency, 16 concurrent clients, p95", many["p95_ms"], "ms"),
        row(
            "backend",
            "completion latency, 1 client, mean (served and raw in turn)",
            raw["served_mean_ms"],
            "ms",
            reference=Reference("raw decode in-process, same prompts and lengths", raw["raw_mean_ms"], "ms"),
        ),
        row(
            "backend",
            "throughput, 16 concurrent clients",
            many["req_per_s"],
            "req/s",
            Target(">=", 4.0, of_ratio=True),
            Reference("1 client, sequential", one["req_per_s"], "req/s"),
        ),
        row(
            "backend",
            "event ingestion, batches of 100",
            ingestion["events_per_s"],
            "events/s",
            Target(">=", 20_000),
            Reference("plain sqlite3 inserts, same rows", ingestion["plain_sqlite_rows_per_s"], "rows/s"),
        ),
        row("backend", "hot swap, upload + swap", swap["swap_ms"], "ms"),
        row("backend", "hot swap, added latency of requests in flight", swap["added_mean_ms"], "ms"),
    ]
