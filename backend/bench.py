"""`flywheel bench backend`: serving latency and throughput, event ingestion, the cost of a hot swap.

Starts a real `flywheel backend` on loopback (a fresh data directory) and measures it over HTTP:
- completion latency p50/p95 with 1 client (sequential) and with 16 concurrent clients;
- throughput at 16 concurrent clients over 1 sequential client;
- outcome-event ingestion rate in batches of 100;
- the added latency of a hot swap: requests in flight while a checkpoint is uploaded and swapped
  in, against those that were not.

References measured in the same run, for the report's ratios (`flywheel bench backend --out`):
sequential requests each decoded again in this process with transformers alone, and the same
event rows inserted with plain sqlite3 into the same schema.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from uuid6 import uuid7

from backend.store.database import BUSY_TIMEOUT_MS, WAL_CHECKPOINT_PAGES
from backend.store.schema import MIGRATIONS
from backend.wire import ADAPTER_FILES, Event
from flywheel.bench_report import Reference, Target, row
from flywheel.config import Settings
from flywheel.processes import start_backend, stop_process

INGEST_RUNS = 3
SERVING_RUNS = 3

PREFIXES = [
    "import os\n\ndef main():\n    path = os.",
    "def add(a, b):\n    return",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
    "for i in range(",
    "import json\n\ndata = json.loads(text)\nfor key in data:\n    ",
    "def read(path):\n    with open(path) as handle:\n        return handle.",
]


@dataclass
class ClientRun:
    """What the clients saw: per request its latency and number of tokens sampled."""

    latencies: list[float] = field(default_factory=list)  # ms
    tokens: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)  # s from the start, as each request ended
    # When the first client had sent all its requests: until then every client was busy.
    all_busy_s: float = 0.0

    @property
    def rate(self) -> float:
        """Requests a second while every client was busy: the last clients finishing alone, with
        the batch emptying, say nothing about serving that many clients."""
        return sum(end <= self.all_busy_s for end in self.ends) / self.all_busy_s


async def _clients(url: str, clients: int, per_client: int) -> ClientRun:
    """`clients` clients each sending `per_client` completion requests, one after another.

    aiohttp, as for ingestion: the load generator shares the machine's cores with the backend, so
    its own cost per request is kept small (httpx parses in Python, aiohttp in C).
    """
    run = ClientRun()

    async def client(number: int, http: aiohttp.ClientSession) -> None:
        for turn in range(per_client):
            body = {"context": {"prefix": PREFIXES[(number + turn) % len(PREFIXES)]}, "user_id": f"b{number}"}
            started = time.perf_counter()
            async with http.post(f"{url}/v1/complete", json=body) as response:
                response.raise_for_status()
                answer = await response.json()
            run.latencies.append((time.perf_counter() - started) * 1000)
            run.ends.append(time.perf_counter() - begin)
            run.tokens.append(len(answer["token_logprobs"]))
            run.ids.append(answer["completion_id"])
        if not run.all_busy_s:
            run.all_busy_s = time.perf_counter() - begin

    connector = aiohttp.TCPConnector(limit=clients + 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        begin = time.perf_counter()
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    return run


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


def _event_batches(completion_ids: list[str], batches: int) -> list[list[dict[str, object]]]:
    """Batches of 100 events: the lives of 20 completions each."""
    return [
        [
            event
            for c in range(20)
            for event in _completion_life(completion_ids[(b * 20 + c) % len(completion_ids)])
        ]
        for b in range(batches)
    ]


async def _ingest(url: str, completion_ids: list[str], batches: int, connections: int = 8) -> float:
    """Events per second stored, in batches of 100.

    The bodies are made before the clock starts, so that the figure is the backend's rate and not
    that of this client's JSON encoding, which shares the machine's cores with it.
    """
    bodies = [json.dumps({"events": batch}).encode() for batch in _event_batches(completion_ids, batches)]
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


def _plain_sqlite_db(path: Path, completion_ids: list[str]) -> sqlite3.Connection:
    """The backend's schema and pragmas in a plain sqlite3 connection, with the completions the
    events' foreign key points at."""
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        "journal_mode = WAL",
        f"wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}",
        "synchronous = NORMAL",
        f"busy_timeout = {BUSY_TIMEOUT_MS}",
        "foreign_keys = ON",
    ):
        db.execute(f"PRAGMA {pragma}")
    for step in MIGRATIONS:
        for statement in step:
            db.execute(statement)
    db.executemany(
        "INSERT OR IGNORE INTO completions (completion_id, user_id, model_version, context, prompt_ids,"
        " completion_ids, token_logprobs, temperature, text, created_at, latency_ms)"
        " VALUES (?, 'u', 'base', '{}', '[]', '[]', '[]', 0.7, '', ?, 0.0)",
        [(completion_id, time.time()) for completion_id in completion_ids],
    )
    return db


def _event_rows(completion_ids: list[str], batches: int) -> list[list[tuple[object, ...]]]:
    """The rows the backend stores for `_event_batches`' events, less received_at."""
    return [
        [
            (e.event_id, e.completion_id, e.kind.value, e.model_dump_json(exclude_none=True), e.client_ts)
            for e in map(Event.model_validate, batch)
        ]
        for batch in _event_batches(completion_ids, batches)
    ]


def _insert_batches(db: sqlite3.Connection, batches: list[list[tuple[object, ...]]]) -> float:
    """Rows per second, one transaction per batch, as the backend's writer inserts them."""
    started = time.perf_counter()
    for rows in batches:
        received_at = time.time()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT OR IGNORE INTO events (event_id, completion_id, kind, payload, client_ts, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(*r, received_at) for r in rows],
        )
        db.execute("COMMIT")
    return sum(len(rows) for rows in batches) / (time.perf_counter() - started)


def _plain_sqlite_rate(path: Path, completion_ids: list[str], batches: int) -> float:
    """Reference for ingestion: rows/s that plain sqlite3 inserts into the same `events` table,
    the same rows (payload as the backend stores it) in one 100-row transaction per batch; no
    HTTP, no validation, no event loop. Warmed up like the backend, with a fifth as many; the
    rows are made before the clock starts, as the backend's request bodies are."""
    db = _plain_sqlite_db(path, completion_ids)
    try:
        _insert_batches(db, _event_rows(completion_ids, max(1, batches // 5)))
        return _insert_batches(db, _event_rows(completion_ids, batches))
    finally:
        db.close()


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


def _raw_decoder(
    settings: Settings, model: str, fim_name: str, temperature: float
) -> Callable[[str, int], float]:
    """Decodes a prefix in this process with transformers alone: one forward per token over the
    KV cache, sampled at the served temperature, as many tokens as asked. Returns milliseconds.
    No HTTP, batching, stop checks or storage: what serving adds to this is what is compared."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.prompts import build_prompt_ids, detect_fim_format
    from backend.serving import cache_keyword, pick_device, returned_cache

    device = pick_device(settings.model.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
    fim = detect_fim_format(tokenizer, fim_name)
    keyword = cache_keyword(lm)

    @torch.inference_mode()
    def decode(prefix: str, tokens: int) -> float:
        prompt = build_prompt_ids(tokenizer, fim, prefix, "", settings.model.context_tokens)
        step, cache = torch.tensor([prompt], device=device), None
        started = time.perf_counter()
        for _ in range(tokens):
            out = lm(input_ids=step, use_cache=True, logits_to_keep=1, **{keyword: cache})
            cache = returned_cache(out)
            step = torch.multinomial(torch.softmax(out.logits[:, -1].float() / temperature, -1), 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) * 1000

    return decode


def _against_raw_decode(settings: Settings, model: str, url: str, requests: int) -> dict[str, float]:
    """Reference for serving latency: each request, served by one sequential client, is decoded
    again in this process right after, the same prompt and as many tokens as the backend sampled
    (matching lengths rather than the token cap, since a served completion stops at its end of
    line). Served and raw alternate, so a change in the machine's load falls on both alike."""
    info = httpx.get(f"{url}/v1/model").json()
    decode = _raw_decoder(settings, model, info["fim"], info["temperature"])
    served: list[float] = []
    raw: list[float] = []
    with httpx.Client(timeout=120) as http:
        for turn in range(requests + 1):
            prefix = PREFIXES[turn % len(PREFIXES)]
            started = time.perf_counter()
            response = http.post(f"{url}/v1/complete", json={"context": {"prefix": prefix}, "user_id": "raw"})
            response.raise_for_status()
            latency = (time.perf_counter() - started) * 1000
            raw_ms = decode(prefix, len(response.json()["token_logprobs"]))
            if turn:  # the first pair warms this process's model up
                served.append(latency)
                raw.append(raw_ms)
    return {
        "requests": requests,
        "served_mean_ms": float(np.mean(served)),
        "raw_mean_ms": float(np.mean(raw)),
        "served_p50_ms": float(np.percentile(served, 50)),
        "raw_p50_ms": float(np.percentile(raw, 50)),
    }


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
    settings: Settings, model: str, url: str, args: argparse.Namespace
) -> tuple[dict[str, Any], list[str]]:
    """Latency and throughput at 1 and 16 clients, and served against raw decoding; also the ids
    of the completions served, for the events of the ingestion run."""
    asyncio.run(_clients(url, 4, 2))  # warm-up
    # Alternating runs, medians: one client's rate moves by a third between runs (sampled lengths,
    # this machine's neighbours), so a single pair gave ratios from 2.9x to 5.0x.
    ones: list[ClientRun] = []
    manys: list[ClientRun] = []
    for _ in range(SERVING_RUNS):
        ones.append(asyncio.run(_clients(url, 1, args.sequential)))
        manys.append(asyncio.run(_clients(url, 16, args.per_client)))
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
    raw = _against_raw_decode(settings, model, url, args.sequential)
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


def _ingestion(url: str, completion_ids: list[str], batches: int, work: Path) -> dict[str, Any]:
    """The median of three runs (each of `batches` batches), against plain sqlite3 measured alike."""
    asyncio.run(_ingest(url, completion_ids, max(1, batches // 5)))  # warm-up
    rates = [asyncio.run(_ingest(url, completion_ids, batches)) for _ in range(INGEST_RUNS)]
    plain = [
        _plain_sqlite_rate(work / f"plain-{n}.sqlite3", completion_ids, batches) for n in range(INGEST_RUNS)
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
            figures: dict[str, Any] = {"model": model, "load_average": list(os.getloadavg())}
            figures["serving"], ids = _serving(settings, model, url, args)
            figures["ingestion"] = _ingestion(url, ids, args.event_batches, data_dir)
            adapter = _make_adapter(model, data_dir / "adapter")
            figures["hot_swap"] = swap = asyncio.run(_swap_cost(url, adapter, model, args.swaps))
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
