"""Load on loopback: 32 editors' traffic while checkpoints are hot-swapped every few seconds, and
requests whose client hung up are dropped from the batch instead of being served."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
from backend_traffic import PREFIXES, upload
from conftest import RunningBackend, make_adapter, start_backend, stop_backend

EDITORS = 32
SWAPS = 7
SWAP_EVERY_S = 3.0
# A busy machine slows uploads under this load; the test counts swaps, not seconds.
DEADLINE_S = 300.0
PATIENT = 96


async def editors(server: RunningBackend, stop: asyncio.Event) -> tuple[Counter[str], list[str]]:
    served: Counter[str] = Counter()
    failures: list[str] = []

    async def editor(number: int, http: httpx.AsyncClient) -> None:
        turn = 0
        while not stop.is_set():
            # One token for all editors: with no canary, who asks does not change what is served.
            body = {"context": {"prefix": PREFIXES[(number + turn) % len(PREFIXES)]}}
            turn += 1
            try:
                response = await http.post(f"{server.url}/v1/complete", json=body)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    served[response.json()["model_version"]] += 1
            except httpx.HTTPError as error:
                failures.append(repr(error))

    limits = httpx.Limits(max_connections=EDITORS + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=server.client) as http:
        await asyncio.gather(*(editor(n, http) for n in range(EDITORS)))
    return served, failures


def test_hot_swaps_under_32_editors_fail_no_request(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapters = [make_adapter(tiny_model_dir, tmp_path / f"a{n}", seed=n, scale=0.02) for n in range(3)]
    server = start_backend(tiny_model_dir, tmp_path / "state", FLYWHEEL_CANARY__SHARE="0")

    async def scenario() -> tuple[Counter[str], list[str], list[str]]:
        stop = asyncio.Event()
        traffic = asyncio.create_task(editors(server, stop))
        swapped: list[str] = []
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=120, headers=server.admin) as http:
            while len(swapped) < SWAPS and time.monotonic() - started < DEADLINE_S:
                await asyncio.sleep(SWAP_EVERY_S)
                if len(swapped) % 3 == 2:  # now and then the admin rolls the live version back
                    rollback = await http.post(f"{server.url}/v1/admin/checkpoints/{swapped[-1]}/rollback")
                    assert rollback.status_code == 200, rollback.text
                    swapped.append("rollback")
                    continue
                adapter = adapters[len(swapped) % len(adapters)]
                response = await asyncio.to_thread(
                    upload, server.url, adapter, str(tiny_model_dir), **server.admin
                )
                assert response.status_code == 200, response.text
                swapped.append(response.json()["version"])
        stop.set()
        served, failures = await traffic
        return served, failures, swapped

    try:
        served, failures, swapped = asyncio.run(scenario())
    finally:
        stop_backend(server)
    assert failures == []
    assert len(swapped) == SWAPS
    versions = [v for v in swapped if v != "rollback"]
    # Traffic really crossed the swaps: several versions served, the base model among them.
    assert len(set(served) & {*versions, "base"}) >= 3, served
    assert sum(served.values()) >= EDITORS * 2


def test_request_whose_client_went_away_is_dropped(tiny_model_dir: Path, tmp_path: Path) -> None:
    # One request per batch: the queue ahead of the impatient clients takes a known while to drain.
    server = start_backend(tiny_model_dir, tmp_path / "state", FLYWHEEL_BACKEND__MAX_BATCH="1")

    async def scenario() -> int:
        async with httpx.AsyncClient(timeout=60, headers=server.client) as http:
            # At a blank line a completion is a block, which mostly runs to its token cap: a line's
            # end can come within a few tokens, and a queue of such requests drains too soon.
            body = {"context": {"prefix": PREFIXES[4]}, "max_new_tokens": 48}
            # Keep the worker busy with patient clients, then queue impatient ones behind them.
            patient = [
                asyncio.create_task(http.post(f"{server.url}/v1/complete", json=body)) for _ in range(PATIENT)
            ]
            await asyncio.sleep(0.05)
            impatient = 0
            async with httpx.AsyncClient(timeout=0.15, headers=server.client) as hasty:
                for outcome in await asyncio.gather(
                    *(hasty.post(f"{server.url}/v1/complete", json=body) for _ in range(8)),
                    return_exceptions=True,
                ):
                    impatient += isinstance(outcome, httpx.TimeoutException)
            assert all(r.status_code == 200 for r in await asyncio.gather(*patient))
            return impatient

    try:
        impatient = asyncio.run(scenario())
        time.sleep(1.0)
        metrics = httpx.get(f"{server.url}/metrics", headers=server.admin).raise_for_status().text
        stats = (
            httpx.get(f"{server.url}/admin/data.json", headers=server.admin)
            .raise_for_status()
            .json()["stats"]
        )
    finally:
        stop_backend(server)
    dropped = next(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("flywheel_dropped")
    )
    assert impatient > 0 and dropped > 0
    # A dropped request is never recorded as served.
    assert stats["served"] == PATIENT + 8 - dropped
