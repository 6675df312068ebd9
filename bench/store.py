"""`flywheel bench store`: the store under the backend, SQLite against PostgreSQL, one backend against two.

- event ingestion (batches of 100 over HTTP, 8 connections) on SQLite, on PostgreSQL with one
  backend, and on PostgreSQL with two backends sharing the database (the batches spread over both);
  each against plain inserts of the same rows into the same table in the same run: plain sqlite3
  for SQLite (bench/backend_references.py), and for PostgreSQL psycopg's COPY and executemany,
  one transaction per batch of 100 as the backend's group commit would at worst;
- completion throughput at 16 concurrent clients with one backend, and with two backends (8 clients
  each) on the same engine and model.

PostgreSQL is a private server (bench/postgres_server.py) with its settings as shipped (fsync on),
started and removed by the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from uuid6 import uuid7

from bench import postgres_server
from bench.backend_load import completion_clients
from bench.backend_references import event_rows, plain_sqlite_rate
from bench.backend_requests import event_batches
from bench.rows import Reference, row
from bench.tokens import NO_CONFIGURED_TOKEN, local_headers
from core.config import Settings
from core.local_tokens import CLIENT
from core.processes import start_backend, stop_process

RUNS = 3
COMPLETIONS = 200
QUICK = ["--event-batches", "30", "--per-client", "2"]


async def _seed(opening: Awaitable[Any], ids: list[str]) -> None:
    """The completions the events name, recorded through the store itself (`opening` opens it)."""
    store = await opening
    try:
        for cid in ids:
            await store.record_completion(
                completion_id=cid,
                user_id="bench",
                model_version="base",
                context={},
                prompt_ids=[],
                completion_ids=[],
                token_logprobs=[],
                temperature=0.7,
                text="x",
                created_at=time.time(),
                latency_ms=0.0,
            )
    finally:
        await store.close()


async def ingest_spread(urls: list[str], client: dict[str, str], ids: list[str], batches: int) -> float:
    """Events per second stored, batches of 100 on 8 connections spread evenly over `urls`."""
    bodies = [json.dumps({"events": batch}).encode() for batch in event_batches(ids, batches)]
    headers = {"content-type": "application/json", **client}

    async def sender(http: aiohttp.ClientSession, url: str) -> None:
        while bodies:
            async with http.post(f"{url}/v1/events", data=bodies.pop(), headers=headers) as response:
                response.raise_for_status()
                assert (await response.json())["stored"] == 100

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(sender(http, urls[n % len(urls)]) for n in range(8)))
        return batches * 100 / (time.perf_counter() - started)


def _median_ingestion(urls: list[str], client: dict[str, str], ids: list[str], batches: int) -> list[float]:
    asyncio.run(ingest_spread(urls, client, ids, max(1, batches // 5)))  # warm-up
    return [asyncio.run(ingest_spread(urls, client, ids, batches)) for _ in range(RUNS)]


def plain_postgres_rates(url: str, ids: list[str], batches: int) -> dict[str, float]:
    """Rows/s that psycopg alone puts into the same `events` table, the same rows (payload as the
    backend stores it), one transaction per batch of 100: by COPY, and by executemany."""
    import psycopg

    rates: dict[str, list[float]] = {"copy": [], "executemany": []}
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(RUNS):
            for how in rates:
                made = event_rows(ids, batches)  # fresh event ids each time
                started = time.perf_counter()
                for rows in made:
                    received_at = time.time()
                    with conn.transaction(), conn.cursor() as cursor:
                        if how == "copy":
                            with cursor.copy(
                                "COPY events (event_id, completion_id, kind, payload, client_ts, received_at)"
                                " FROM STDIN"
                            ) as copy:
                                for r in rows:
                                    copy.write_row((*r, received_at))
                        else:
                            cursor.executemany(
                                "INSERT INTO events (event_id, completion_id, kind, payload, client_ts,"
                                " received_at) VALUES (%s, %s, %s, %s, %s, %s)",
                                [(*r, received_at) for r in rows],
                            )
                rates[how].append(sum(len(rows) for rows in made) / (time.perf_counter() - started))
    return {how: float(np.median(values)) for how, values in rates.items()}


def _throughput(urls: list[str], client: dict[str, str], per_client: int) -> float:
    """Completions a second, 16 clients in all, spread evenly over `urls`."""

    async def spread() -> float:
        started = time.perf_counter()
        runs = await asyncio.gather(
            *(completion_clients(url, client, 16 // len(urls), per_client) for url in urls)
        )
        return sum(len(run.ids) for run in runs) / (time.perf_counter() - started)

    asyncio.run(spread())  # warm-up
    return float(np.median([asyncio.run(spread()) for _ in range(RUNS)]))


def run(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="flywheel bench store")
    parser.add_argument("--model", help="model directory or Hub id (default: the configured model)")
    parser.add_argument("--event-batches", type=int, default=300, help="event batches per ingestion run")
    parser.add_argument("--per-client", type=int, default=8, help="completions per client (16 clients)")
    args = parser.parse_args(list(argv))
    model = args.model or settings.base_model
    ids = [uuid7().hex for _ in range(COMPLETIONS)]
    figures: dict[str, Any] = {"model": model, "load_average": list(os.getloadavg())}
    print(f"model {model}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    common = dict(FLYWHEEL_CANARY__SHARE="0", HF_HUB_OFFLINE="1", **NO_CONFIGURED_TOKEN)

    with tempfile.TemporaryDirectory(prefix="fw-bench-store-") as tmp:
        work = Path(tmp)
        from backend.store.sqlite import SqliteStore

        sqlite_dir = work / "sqlite"
        asyncio.run(_seed(SqliteStore.open(Settings(data_dir=sqlite_dir).database_path), ids))
        process, url, _ = start_backend(model, sqlite_dir, **common)
        try:
            client = local_headers(sqlite_dir, CLIENT)
            rates = _median_ingestion([url], client, ids, args.event_batches)
        finally:
            stop_process(process)
        plain = float(
            np.median(
                [plain_sqlite_rate(work / f"plain-{n}.sqlite3", ids, args.event_batches) for n in range(RUNS)]
            )
        )
        figures["sqlite"] = {
            "events_per_s": float(np.median(rates)),
            "runs": rates,
            "plain_rows_per_s": plain,
        }
        _say("SQLite, 1 backend", figures["sqlite"]["events_per_s"], rates, {"plain sqlite3": plain})

        with postgres_server.running(fast=False) as server:
            figures["postgres"] = _postgres(server, model, work, ids, args, common)
    figures["load_average_after"] = list(os.getloadavg())
    return figures


def _postgres(
    server: postgres_server.PostgresServer,
    model: str,
    work: Path,
    ids: list[str],
    args: argparse.Namespace,
    common: dict[str, str],
) -> dict[str, Any]:
    from backend.store.postgres import PostgresStore

    server.execute("CREATE DATABASE flywheel", "CREATE DATABASE plain")
    url, plain_url = server.url("flywheel"), server.url("plain")
    for database in (url, plain_url):
        asyncio.run(_seed(PostgresStore.open(database), ids))
    env = dict(common, FLYWHEEL_STORE__URL=url, FLYWHEEL_CHECKPOINTS__DIR=str(work / "checkpoints"))
    rates = plain_postgres_rates(plain_url, ids, args.event_batches)
    found: dict[str, Any] = {
        "plain_copy_rows_per_s": rates["copy"],
        "plain_executemany_rows_per_s": rates["executemany"],
    }
    plain = {"plain COPY": rates["copy"], "plain executemany": rates["executemany"]}
    processes = []
    try:
        first, url_a, _ = start_backend(model, work / "a", **env)
        processes.append(first)
        client = local_headers(work / "a", CLIENT)
        one = _median_ingestion([url_a], client, ids, args.event_batches)
        found["one_backend"] = {"events_per_s": float(np.median(one)), "runs": one}
        _say("PostgreSQL, 1 backend", float(np.median(one)), one, plain)
        found["completions_one_backend_per_s"] = _throughput([url_a], client, args.per_client)

        second, url_b, _ = start_backend(model, work / "b", **env)
        processes.append(second)
        two = _median_ingestion([url_a, url_b], client, ids, args.event_batches)
        found["two_backends"] = {"events_per_s": float(np.median(two)), "runs": two}
        _say("PostgreSQL, 2 backends", float(np.median(two)), two, plain)
        found["completions_two_backends_per_s"] = _throughput([url_a, url_b], client, args.per_client)
        ratio = found["completions_two_backends_per_s"] / found["completions_one_backend_per_s"]
        print(
            f"completions, 16 clients: 1 backend {found['completions_one_backend_per_s']:.2f} req/s,"
            f" 2 backends {found['completions_two_backends_per_s']:.2f} req/s ({ratio:.2f}x)"
        )
    finally:
        for process in processes:
            stop_process(process)
    return found


def _say(what: str, rate: float, runs: list[float], references: dict[str, float]) -> None:
    against = "; ".join(
        f"{name} {value:,.0f} rows/s ({rate / value:.2f}x)" for name, value in references.items()
    )
    listed = ", ".join(f"{r:,.0f}" for r in runs)
    print(f"event ingestion, {what}: {rate:,.0f} events/s (median; runs {listed}); {against}")


def summary(f: dict[str, Any]) -> list[dict[str, Any]]:
    sqlite, pg = f["sqlite"], f["postgres"]
    copy = Reference("plain COPY, same rows and table", pg["plain_copy_rows_per_s"], "rows/s")
    return [
        row(
            "store",
            "event ingestion, SQLite, 1 backend",
            sqlite["events_per_s"],
            "events/s",
            reference=Reference("plain sqlite3 inserts, same rows", sqlite["plain_rows_per_s"], "rows/s"),
        ),
        row(
            "store",
            "event ingestion, PostgreSQL, 1 backend",
            pg["one_backend"]["events_per_s"],
            "events/s",
            reference=copy,
        ),
        row(
            "store",
            "event ingestion, PostgreSQL, 2 backends",
            pg["two_backends"]["events_per_s"],
            "events/s",
            reference=copy,
        ),
        row(
            "store",
            "completion throughput, 16 clients, 2 backends",
            pg["completions_two_backends_per_s"],
            "req/s",
            reference=Reference("1 backend, same engine", pg["completions_one_backend_per_s"], "req/s"),
        ),
    ]
