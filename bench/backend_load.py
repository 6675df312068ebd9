"""`flywheel bench backend`'s load: sequential and concurrent completion clients, batches of
outcome events, and traffic across hot swaps, all over loopback HTTP.

Every request carries a token (the backend is closed), its header made once per run, not per
request. One client token serves all the clients: who a request is from matters to the canary's
split and the trainer's per-user caps, and the benchmark runs with no canary (share 0) and trains
nothing, so many people would be served and stored exactly as one is.

aiohttp where the rate is the figure: the load generator shares the machine's cores with the
backend, so its own cost per request is kept small (httpx parses in Python, aiohttp in C). It
comes with the bench extra, not with the product. What is sent is in bench/backend_requests.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from bench.backend_requests import PREFIXES, event_batches
from core.wire import ADAPTER_FILES


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


async def completion_clients(
    url: str, client: dict[str, str], clients: int, per_client: int, timeout_s: float = 120
) -> ClientRun:
    """`clients` clients each sending `per_client` completion requests, one after another, with the
    `client` token's header; no request gives up before `timeout_s`.

    aiohttp, as for ingestion: the load generator shares the machine's cores with the backend, so
    its own cost per request is kept small (httpx parses in Python, aiohttp in C).
    """
    run = ClientRun()

    async def one(number: int, http: aiohttp.ClientSession) -> None:
        for turn in range(per_client):
            body = {"context": {"prefix": PREFIXES[(number + turn) % len(PREFIXES)]}}
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
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=client) as http:
        begin = time.perf_counter()
        await asyncio.gather(*(one(n, http) for n in range(clients)))
    return run


async def ingest(
    url: str, client: dict[str, str], completion_ids: list[str], batches: int, connections: int = 8
) -> float:
    """Events per second stored, in batches of 100, sent with the `client` token's header.

    The bodies are made before the clock starts, so that the figure is the backend's rate and not
    that of this client's JSON encoding, which shares the machine's cores with it.
    """
    bodies = [json.dumps({"events": batch}).encode() for batch in event_batches(completion_ids, batches)]
    headers = {"content-type": "application/json", **client}

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


async def swap_cost(
    url: str, client: dict[str, str], admin: dict[str, str], adapter: Path, base_model: str, swaps: int
) -> dict[str, float]:
    """16 clients run while `swaps` uploads land; compare requests overlapping a swap with the rest.
    The clients send the `client` token, the uploads the `admin` one."""
    spans: list[tuple[float, float]] = []
    requests: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def one(number: int, http: httpx.AsyncClient) -> None:
        turn = 0
        while not stop.is_set():
            body = {"context": {"prefix": PREFIXES[(number + turn) % len(PREFIXES)]}}
            turn += 1
            started = time.perf_counter()
            (await http.post(f"{url}/v1/complete", json=body)).raise_for_status()
            requests.append((started, time.perf_counter()))

    files = {name: (name, (adapter / name).read_bytes()) for name in ADAPTER_FILES}
    metadata = json.dumps({"base_model": base_model, "parent_version": "base"})
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=client) as http:
        traffic = [asyncio.create_task(one(n, http)) for n in range(16)]
        for _ in range(swaps):
            await asyncio.sleep(2.0)
            started = time.perf_counter()
            response = await http.post(
                f"{url}/v1/checkpoints", data={"metadata": metadata}, files=files, headers=admin
            )
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
