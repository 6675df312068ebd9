"""`flywheel bench backend`'s references, measured in the same run for the report's ratios: the
same event rows inserted with plain sqlite3 into the same schema, and sequential requests decoded
again in this process with transformers alone.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from backend.store.sqlite.database import BUSY_TIMEOUT_MS, WAL_CHECKPOINT_PAGES
from backend.store.sqlite.schema import MIGRATIONS
from bench.backend_requests import PREFIXES, event_batches
from core.config import Settings
from core.wire import Event


def plain_sqlite_db(path: Path, completion_ids: list[str]) -> sqlite3.Connection:
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


def event_rows(completion_ids: list[str], batches: int) -> list[list[tuple[object, ...]]]:
    """The rows the backend stores for `event_batches`' events, less received_at."""
    return [
        [
            (e.event_id, e.completion_id, e.kind.value, e.model_dump_json(exclude_none=True), e.client_ts)
            for e in map(Event.model_validate, batch)
        ]
        for batch in event_batches(completion_ids, batches)
    ]


def insert_batches(db: sqlite3.Connection, batches: list[list[tuple[object, ...]]]) -> float:
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


def plain_sqlite_rate(path: Path, completion_ids: list[str], batches: int) -> float:
    """Reference for ingestion: rows/s that plain sqlite3 inserts into the same `events` table,
    the same rows (payload as the backend stores it) in one 100-row transaction per batch; no
    HTTP, no validation, no event loop. Warmed up like the backend, with a fifth as many; the
    rows are made before the clock starts, as the backend's request bodies are."""
    db = plain_sqlite_db(path, completion_ids)
    try:
        insert_batches(db, event_rows(completion_ids, max(1, batches // 5)))
        return insert_batches(db, event_rows(completion_ids, batches))
    finally:
        db.close()


def raw_decoder(
    settings: Settings, model: str, fim_name: str, temperature: float
) -> Callable[[str, int], float]:
    """Decodes a prefix in this process with transformers alone: one forward per token over the
    KV cache, sampled at the served temperature, as many tokens as asked. Returns milliseconds.
    No HTTP, batching, stop checks or storage: what serving adds to this is what is compared."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.serving import cache_keyword, pick_device, returned_cache
    from core.prompts import build_prompt_ids, detect_fim_format

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


def against_raw_decode(
    settings: Settings, model: str, url: str, client: dict[str, str], requests: int
) -> dict[str, float]:
    """Reference for serving latency: each request, served by one sequential client, is decoded
    again in this process right after, the same prompt and as many tokens as the backend sampled
    (matching lengths rather than the token cap, since a served completion stops at its end of
    line). Served and raw alternate, so a change in the machine's load falls on both alike. The
    requests carry the `client` token's header."""
    info = httpx.get(f"{url}/v1/model", headers=client).raise_for_status().json()
    decode = raw_decoder(settings, model, info["fim"], info["temperature"])
    served: list[float] = []
    raw: list[float] = []
    with httpx.Client(timeout=120, headers=client) as http:
        for turn in range(requests + 1):
            prefix = PREFIXES[turn % len(PREFIXES)]
            started = time.perf_counter()
            response = http.post(f"{url}/v1/complete", json={"context": {"prefix": prefix}})
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
