"""`flywheel bench backend`: serving latency and throughput, event ingestion, the cost of a hot swap.

Starts a real `flywheel backend` on loopback (a fresh data directory) and measures it over HTTP:
- completion latency p50/p95 with 1 client (sequential) and with 16 concurrent clients;
- throughput at 16 concurrent clients over 1 sequential client;
- outcome-event ingestion rate in batches of 100;
- the added latency of a hot swap: requests in flight while a checkpoint is uploaded and swapped
  in, against those that were not.
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

import aiohttp
import httpx
import numpy as np
from uuid6 import uuid7

from backend.wire import ADAPTER_FILES
from flywheel.config import Settings
from flywheel.processes import start_backend

PREFIXES = [
    "import os\n\ndef main():\n    path = os.",
    "def add(a, b):\n    return",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
    "for i in range(",
    "import json\n\ndata = json.loads(text)\nfor key in data:\n    ",
    "def read(path):\n    with open(path) as handle:\n        return handle.",
]


async def _clients(url: str, clients: int, per_client: int) -> tuple[list[float], float, list[str]]:
    """Latencies (ms), wall seconds, completion ids of `clients` clients each sending `per_client`."""
    latencies: list[float] = []
    ids: list[str] = []

    async def client(number: int, http: httpx.AsyncClient) -> None:
        for turn in range(per_client):
            body = {"context": {"prefix": PREFIXES[(number + turn) % len(PREFIXES)]}, "user_id": f"b{number}"}
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/complete", json=body)
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            ids.append(response.json()["completion_id"])

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients + 2)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(n, http) for n in range(clients)))
        return latencies, time.perf_counter() - started, ids


def _completion_life(completion_id: str) -> list[dict[str, object]]:
    """The events the language server reports for an accepted completion that survives."""
    now = time.time()
    events: list[dict[str, object]] = [
        {"kind": "shown"},
        {"kind": "accepted", "visible_ms": 800.0},
        *(
            {"kind": "survival", "delay_s": delay, "similarity": 0.8, "retained_chars": 12.0}
            for delay in (30, 120, 600)
        ),
    ]
    events[-1]["final"] = True
    # Ids as the language server makes them: time-ordered, so SQLite appends to its indexes.
    return [{"event_id": uuid7().hex, "completion_id": completion_id, "client_ts": now, **e} for e in events]


async def _ingest(url: str, completion_ids: list[str], batches: int, connections: int = 8) -> float:
    """Events per second stored, in batches of 100: the lives of 20 completions each.

    The bodies are made before the clock starts, so that the figure is the backend's rate and not
    that of this client's JSON encoding, which shares the machine's cores with it.
    """
    bodies = [
        json.dumps(
            {
                "events": [
                    event
                    for c in range(20)
                    for event in _completion_life(completion_ids[(b * 20 + c) % len(completion_ids)])
                ]
            }
        ).encode()
        for b in range(batches)
    ]
    headers = {"content-type": "application/json"}

    async def sender(http: aiohttp.ClientSession) -> None:
        while bodies:
            async with http.post(f"{url}/v1/events", data=bodies.pop(), headers=headers) as response:
                response.raise_for_status()
                answer = await response.json()
                assert answer["stored"] == 100, answer

    # aiohttp, not httpx: its parser is C, so the load generator leaves the cores to the backend.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(sender(http) for _ in range(connections)))
        return batches * 100 / (time.perf_counter() - started)


async def _swap_cost(url: str, adapter: Path, base_model: str, swaps: int) -> dict[str, float]:
    """16 clients run while `swaps` uploads land; compare requests overlapping a swap with the rest."""
    spans: list[tuple[float, float]] = []
    requests: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def client(number: int, http: httpx.AsyncClient) -> None:
        turn = 0
        while not stop.is_set():
            body = {"context": {"prefix": PREFIXES[(number + turn) % len(PREFIXES)]}, "user_id": f"s{number}"}
            turn += 1
            started = time.perf_counter()
            (await http.post(f"{url}/v1/complete", json=body)).raise_for_status()
            requests.append((started, time.perf_counter()))

    files = {name: (name, (adapter / name).read_bytes()) for name in ADAPTER_FILES}
    metadata = json.dumps({"base_model": base_model, "parent_version": "base"})
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=20)) as http:
        traffic = [asyncio.create_task(client(n, http)) for n in range(16)]
        for _ in range(swaps):
            await asyncio.sleep(2.0)
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/checkpoints", data={"metadata": metadata}, files=files)
            response.raise_for_status()
            spans.append((started, time.perf_counter()))
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*traffic)

    def overlaps(request: tuple[float, float]) -> bool:
        return any(request[0] < end and start < request[1] for start, end in spans)

    hit = [(e - s) * 1000 for s, e in requests if overlaps((s, e))]
    rest = [(e - s) * 1000 for s, e in requests if not overlaps((s, e))]
    return {
        "swap_ms": float(np.mean([(e - s) * 1000 for s, e in spans])),
        "during_p50": float(np.percentile(hit, 50)),
        "during_p95": float(np.percentile(hit, 95)),
        "other_p50": float(np.percentile(rest, 50)),
        "other_p95": float(np.percentile(rest, 95)),
        "added_mean_ms": float(np.mean(hit) - np.mean(rest)),
        "requests": float(len(requests)),
    }


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


def _percentiles(latencies: list[float]) -> str:
    return f"p50 {np.percentile(latencies, 50):7.1f} ms   p95 {np.percentile(latencies, 95):7.1f} ms"


def main(settings: Settings, argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="flywheel bench backend")
    parser.add_argument(
        "--model", help="model directory or Hub id (default: the configured model, else the bootstrapped one)"
    )
    parser.add_argument("--sequential", type=int, default=32, help="requests sent by the single client")
    parser.add_argument("--per-client", type=int, default=8, help="requests per client at 16 clients")
    parser.add_argument("--event-batches", type=int, default=1000)
    parser.add_argument("--swaps", type=int, default=5)
    args = parser.parse_args(list(argv))
    model = args.model or settings.base_model

    with tempfile.TemporaryDirectory(prefix="fw-bench-backend-") as tmp:
        data_dir = Path(tmp)
        process, url, _ = start_backend(
            model, data_dir / "state", FLYWHEEL_CANARY__SHARE="0", HF_HUB_OFFLINE="1"
        )
        try:
            print(f"model {model}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            asyncio.run(_clients(url, 4, 2))  # warm-up
            one, one_s, ids = asyncio.run(_clients(url, 1, args.sequential))
            many, many_s, more_ids = asyncio.run(_clients(url, 16, args.per_client))
            one_rate, many_rate = len(one) / one_s, len(many) / many_s
            print(f"completion, 1 client:    {_percentiles(one)}   {one_rate:6.2f} req/s")
            print(f"completion, 16 clients:  {_percentiles(many)}   {many_rate:6.2f} req/s")
            print(f"throughput 16 clients / 1 client: {many_rate / one_rate:.2f}x")
            asyncio.run(_ingest(url, ids + more_ids, args.event_batches // 5))  # warm-up
            rate = asyncio.run(_ingest(url, ids + more_ids, args.event_batches))
            print(f"event ingestion, batches of 100: {rate:,.0f} events/s")
            adapter = _make_adapter(model, data_dir / "adapter")
            swap = asyncio.run(_swap_cost(url, adapter, model, args.swaps))
            print(
                f"hot swap: upload+swap {swap['swap_ms']:.0f} ms; requests in flight during a swap"
                f" p50 {swap['during_p50']:.1f} / p95 {swap['during_p95']:.1f} ms vs others"
                f" p50 {swap['other_p50']:.1f} / p95 {swap['other_p95']:.1f} ms;"
                f" added mean latency {swap['added_mean_ms']:+.1f} ms"
                f" ({swap['requests']:.0f} requests, 0 failed)"
            )
            print(f"load average after: {os.getloadavg()[0]:.2f}")
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0
