"""Simulated editors for backend tests and benchmarks: completions plus the outcome events they cause."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.backend_requests import PREFIXES  # the benchmark's prompts: tests load the backend alike
from core.wire import ADAPTER_FILES


def upload(
    url: str, adapter: Path, base_model: str, gate: dict | None = None, **headers: str
) -> httpx.Response:
    files = {name: (name, (adapter / name).read_bytes()) for name in ADAPTER_FILES}
    meta = {"base_model": base_model, "parent_version": "base", "metrics": {"loss": 0.1}, "gate": gate}
    return httpx.post(
        f"{url}/v1/checkpoints",
        data={"metadata": json.dumps(meta)},
        files=files,
        headers=headers,
        timeout=120,
    )


async def editor_round(
    http: httpx.AsyncClient,
    url: str,
    person: dict[str, str],
    accept_probability: Callable[[str], float],
    rng: random.Random,
) -> str:
    """One completion and, when something was shown, its outcome (accepted or rejected, final)."""
    prefix = rng.choice(PREFIXES)
    response = await http.post(
        f"{url}/v1/complete", json={"context": {"prefix": prefix, "path": "a.py"}}, headers=person
    )
    response.raise_for_status()
    body = response.json()
    if body["text"]:
        kind = "accepted" if rng.random() < accept_probability(body["model_version"]) else "rejected"
        event = {"completion_id": body["completion_id"], "client_ts": 1.0, "visible_ms": 900.0}
        events = [
            dict(event, event_id=uuid.uuid4().hex, kind="shown"),
            dict(event, event_id=uuid.uuid4().hex, kind=kind, final=True),
        ]
        stored = await http.post(f"{url}/v1/events", json={"events": events}, headers=person)
        stored.raise_for_status()
    return body["model_version"]


async def drive(
    url: str,
    rounds: int,
    accept_probability: Callable[[str], float],
    crowd: list[dict[str, str]],
    editors: int = 16,
    seed: int = 0,
) -> Counter[str]:
    """`rounds` completions from `editors` concurrent editors, each round by one of `crowd` (people's
    token headers, bench.tokens.people); returns how many each version served."""
    rng = random.Random(seed)
    served: Counter[str] = Counter()
    remaining = rounds

    async def editor(http: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            served[await editor_round(http, url, rng.choice(crowd), accept_probability, rng)] += 1

    async with httpx.AsyncClient(timeout=120) as http:
        await asyncio.gather(*(editor(http) for _ in range(editors)))
    return served
