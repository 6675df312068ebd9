"""`flywheel bench trainer`: the trainer's figures on the default model.

throughput   training tokens/s of the PG update against a raw forward+backward of the same
             model (same batches, same run), on episodes cut from the held-out code set
cycle        one run_cycle on N episodes served by a real backend process (real prompts)
parallel     the PG update's tokens/s on one process and on `--processes` under torchrun, same
             episodes (bench/trainer_parallel.py); only when asked for (`--only parallel`)
turnaround   from the last of 16 episodes finalizing to its checkpoint serving (canary) and then
             live, with a backend and a continuous trainer at `flywheel up`'s defaults; canary
             traffic is simulated, accepting what the canary serves and rejecting what live does,
             the fastest a canary can be promoted by the sequential test

The simulated users of the cycle and the turnaround are people to the backend, a client token
each: it counts people by token, for the canary's share of users and the trainer's per-user caps,
so traffic from one token would be one user (an update capped to 256 of its episodes, a canary
served to everyone or no one).

`run` returns the figures and `summary` the report's rows (`flywheel bench trainer --out`), where
the update's throughput is a ratio to the raw forward+backward measured beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.model import local_model
from bench.rows import Reference, Target, row
from bench.tokens import NO_CONFIGURED_TOKEN, local_headers, people
from core.config import Settings
from core.local_tokens import ADMIN, CLIENT, read_token
from core.processes import start_backend, stop_process
from core.wire import Episode
from trainer.objectives.pg import PGConfig

PROMPT_TOKENS = 256
COMPLETION_TOKENS = 16


def synthetic_episodes(model: torch.nn.Module, tokenizer, n: int) -> list[Episode]:
    """Prompt + completion windows of the held-out code, with on-policy behaviour log-probs."""
    from trainer.gate import heldout_code
    from trainer.logprobs import collate, completion_logprobs

    ids = tokenizer.encode(heldout_code(200_000), add_special_tokens=False)
    span = PROMPT_TOKENS + COMPLETION_TOKENS
    episodes = []
    for i in range(n):
        start = (i * 97) % (len(ids) - span)
        prompt, completion = ids[start : start + PROMPT_TOKENS], ids[start + PROMPT_TOKENS : start + span]
        episodes.append((prompt, completion))
    out = []
    with torch.no_grad():
        for b in range(0, n, 32):
            chunk = episodes[b : b + 32]
            batch = collate([p for p, _ in chunk], [c for _, c in chunk], [1.0] * len(chunk))
            logps = completion_logprobs(model, batch)
            for j, (prompt, completion) in enumerate(chunk):
                out.append(
                    Episode(
                        seq=b + j + 1,
                        completion_id=uuid.uuid4().hex,
                        user_id=f"user{(b + j) % 8}",
                        model_version="base",
                        prompt_ids=prompt,
                        completion_ids=completion,
                        token_logprobs=logps[j].tolist(),
                        temperature=1.0,
                        text="",
                        outcome="accepted",
                        reward=0.75 if (b + j) % 3 else -0.25,
                        created_at=0.0,
                        finalized_at=0.0,
                    )
                )
    return out


def throughput(settings: Settings, model_dir: str, n: int) -> dict[str, Any]:
    """Tokens/s of the PG update and, as its reference, of a raw forward+backward on the same
    batches of the same model, measured one after the other in this process."""
    from transformers import AutoTokenizer

    from trainer.policy import load_policy, resolve_device
    from trainer.update import episode_batch, reference_logprobs, train_on_episodes

    cfg = settings.trainer
    device = resolve_device(cfg.device)
    policy = load_policy(model_dir, None, cfg, device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    episodes = synthetic_episodes(policy, tokenizer, n)
    tokens = sum(len(e.prompt_ids) + len(e.completion_ids) for e in episodes)

    def raw() -> float:
        params = [p for p in policy.parameters() if p.requires_grad]
        started = time.perf_counter()
        for b in range(0, n, cfg.batch_size):
            batch = episode_batch(episodes[b : b + cfg.batch_size], device)
            out = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            out.logits.float().logsumexp(-1).mean().backward()
            for p in params:
                p.grad = None
        return time.perf_counter() - started

    raw()  # warm up allocator and kernels
    raw_s = raw()
    started = time.perf_counter()
    reference_logprobs(policy, episodes, cfg.batch_size)
    ref_s = time.perf_counter() - started
    started = time.perf_counter()
    train_on_episodes(
        policy,
        episodes,
        PGConfig(),
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        epochs=1,
        measure_kl_after=False,
    )
    pg_s = time.perf_counter() - started
    figures = {
        "model": model_dir,
        "device": str(device),
        "episodes": n,
        "batch_size": cfg.batch_size,
        "tokens": tokens,
        "raw_tokens_per_s": tokens / raw_s,
        "pg_steps_tokens_per_s": tokens / (pg_s - ref_s),
        "pg_tokens_per_s": tokens / pg_s,
    }
    _print_throughput(figures)
    return figures


def _print_throughput(f: dict[str, Any]) -> None:
    raw, steps, pg = f["raw_tokens_per_s"], f["pg_steps_tokens_per_s"], f["pg_tokens_per_s"]
    print(
        f"model {f['model']} on {f['device']}, {f['episodes']} episodes of"
        f" {PROMPT_TOKENS}+{COMPLETION_TOKENS} tokens, batch {f['batch_size']}"
    )
    print(f"raw forward+backward        {raw:10.0f} tokens/s")
    print(f"pg update, steps only       {steps:10.0f} tokens/s  ratio {steps / raw:.2f}")
    print(f"pg update, with reference   {pg:10.0f} tokens/s  ratio {pg / raw:.2f}")


# Simulated users of the cycle's traffic, and of the canary's: enough that the canary's share of
# them (10% by default) is served its checkpoint.
CYCLE_USERS = 200
CANARY_USERS = 1000


async def traffic(url: str, n: int, judge, users: list[dict[str, str]], concurrency: int = 16) -> int:
    """n completions from `users` (the headers of a client token each, in turn), each followed by
    a final accept/reject event from judge, sent by the same user."""
    shown = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, http: httpx.AsyncClient) -> None:
        nonlocal shown
        async with sem:
            context = {"prefix": f"def handler_{i}(request):\n    value = ", "suffix": "\n", "path": "a.py"}
            user = users[i % len(users)]
            response = await http.post("/v1/complete", json={"context": context}, headers=user)
            body = response.raise_for_status().json()
            if not body["text"]:
                return
            shown += 1
            kind = "accepted" if judge(body) else "rejected"
            event = dict(
                event_id=uuid.uuid4().hex,
                completion_id=body["completion_id"],
                kind=kind,
                client_ts=time.time(),
                visible_ms=3000.0,
                final=True,
            )
            (await http.post("/v1/events", json={"events": [event]}, headers=user)).raise_for_status()

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await asyncio.gather(*(one(i, http) for i in range(n)))
    return shown


def cycle(model_dir: str, n: int, work: Path) -> dict[str, Any]:
    from trainer.client import BackendClient
    from trainer.cycle import run_cycle

    process, url, _ = start_backend(
        model_dir, work / "cycle", FLYWHEEL_CANARY__SHARE="0", **NO_CONFIGURED_TOKEN
    )
    try:
        admin = local_headers(work / "cycle", ADMIN)
        # As many people as the requests can reach: a quick run needs no 200 tokens.
        users = people(url, admin, min(CYCLE_USERS, n * 2), "cycle")
        started = time.perf_counter()
        shown = asyncio.run(traffic(url, n * 2, lambda body: len(body["text"]) % 2 == 0, users))
        print(f"served {n * 2} completions ({shown} shown) in {time.perf_counter() - started:.1f}s")
        settings = Settings(data_dir=work / "cycle", backend={"url": url})
        settings.trainer.max_episodes = n
        # The token the backend made, whatever FLYWHEEL_BACKEND__TOKEN says in this environment.
        with BackendClient(url, read_token(work / "cycle", ADMIN)) as client:
            while len(client.all_episodes(0, max_count=n)[0]) < n:
                time.sleep(1)
            started = time.perf_counter()
            result = run_cycle(settings, client)
            elapsed = time.perf_counter() - started
        assert result is not None
        gate = "passed" if result.gate and result.gate.passed else str(result.gate)
        print(
            f"one cycle on {n} episodes: {elapsed:.1f}s (trained {result.trained_on}, "
            f"held out {result.heldout}, dropped {dict(result.dropped)}, "
            f"gate {gate})"
        )
        return {
            "episodes": n,
            "served": n * 2,
            "shown": shown,
            "cycle_s": elapsed,
            "trained": result.trained_on,
            "heldout": result.heldout,
            "dropped": dict(result.dropped),
            "gate": gate,
        }
    finally:
        stop_process(process)


def turnaround(model_dir: str, work: Path, canary_budget: int) -> dict[str, Any]:
    data_dir = work / "turnaround"
    process, url, env = start_backend(model_dir, data_dir, **NO_CONFIGURED_TOKEN)
    trainer = None
    try:
        client = local_headers(data_dir, CLIENT)
        # Made before the clock starts; the canary's people only where a canary is tried.
        users = people(
            url, local_headers(data_dir, ADMIN), CANARY_USERS if canary_budget else 16, "turnaround"
        )
        # The trainer shares the backend's data directory: it finds the admin token there.
        trainer = subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "trainer"],
            env=dict(env, FLYWHEEL_BACKEND__URL=url),
            stdout=open(work / "trainer.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        time.sleep(5)  # let the trainer start polling, as it would be under `flywheel up`
        asyncio.run(traffic(url, 40, lambda body: True, users[:16]))
        last_final = time.time()
        version = None
        while version is None:
            listed = httpx.get(f"{url}/v1/checkpoints", headers=client).raise_for_status().json()
            version = listed[0]["version"] if listed else None
            if time.time() - last_final > 900:
                raise SystemExit("no checkpoint within 15 minutes")
            time.sleep(0.5)
        uploaded = time.time() - last_final
        state = httpx.get(f"{url}/v1/checkpoints", headers=client).raise_for_status().json()[0]["state"]
        print(
            f"turnaround: last episode finalized → {version} uploaded and serving as {state}: {uploaded:.1f}s"
        )

        def live_version() -> str:
            return httpx.get(f"{url}/v1/model", headers=client).raise_for_status().json()["live_version"]

        served = 0
        while live_version() != version and served < canary_budget:
            asyncio.run(traffic(url, 200, lambda body: body["model_version"] == version, users))
            served += 200
        live = live_version() == version
        took = time.time() - last_final
        print(
            f"turnaround: → {version} live: {took:.1f}s after {served} canary-period completions"
            if live
            else f"turnaround: {version} not live after {served} canary-period completions ({took:.1f}s)"
        )
        return {
            "version": version,
            "first_state": state,
            "to_upload_s": uploaded,
            "live": live,
            "to_live_s": took,
            "canary_completions": served,
        }
    finally:
        if trainer is not None:
            stop_process(trainer)
        stop_process(process)


# `flywheel bench all --quick`: every part runs, in seconds; the figures mean little.
# No canary traffic: a checkpoint is only promoted at once where the canary share is 0.
QUICK = ["--episodes", "16", "--throughput-episodes", "16", "--canary-budget", "0"]


def run(settings: Settings, argv: list[str]) -> dict[str, Any]:
    """Measures the parts asked for, printing each part's figures as it ends; returns them."""
    parser = argparse.ArgumentParser(prog="flywheel bench trainer", description=__doc__)
    parser.add_argument("--model", help="model directory (default: the bootstrapped default model)")
    parser.add_argument("--episodes", type=int, default=1000, help="episodes of the timed cycle")
    parser.add_argument(
        "--throughput-episodes", type=int, default=256, help="episodes of the update throughput part"
    )
    parser.add_argument("--canary-budget", type=int, default=4000, help="most completions for the canary")
    parser.add_argument(
        "--only",
        choices=["throughput", "cycle", "turnaround", "parallel"],
        action="append",
        help="run only this part (repeatable; default: all but parallel)",
    )
    parser.add_argument("--processes", type=int, default=2, help="processes of the parallel part")
    args = parser.parse_args(argv)
    model_dir = args.model or local_model(settings)
    parts = args.only or ["throughput", "cycle", "turnaround"]
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs;"
        f" torch threads {torch.get_num_threads()}"
    )
    figures: dict[str, Any] = {"model": model_dir, "load_average": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        if "throughput" in parts:
            figures["throughput"] = throughput(settings, model_dir, args.throughput_episodes)
        if "cycle" in parts:
            figures["cycle"] = cycle(model_dir, args.episodes, Path(tmp))
        if "turnaround" in parts:
            figures["turnaround"] = turnaround(model_dir, Path(tmp), args.canary_budget)
        if "parallel" in parts:
            from bench.trainer_parallel import run_parallel

            figures["parallel"] = run_parallel(model_dir, args.throughput_episodes, args.processes)
    return figures


def summary(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows for the parts measured; the update's throughput is a ratio to a raw
    forward+backward of the same batches."""
    rows: list[dict[str, Any]] = []
    if "throughput" in f:
        rows += _throughput_rows(f["throughput"])
    if "cycle" in f:
        n = f["cycle"]["episodes"]
        # The target is for 1,000 episodes; a cycle on another number is reported without it.
        target = Target("<", 60.0) if n == 1000 else None
        rows.append(row("trainer", f"one cycle on {n:,} episodes", f["cycle"]["cycle_s"], "s", target))
    if "turnaround" in f:
        rows += _turnaround_rows(f["turnaround"])
    if "parallel" in f:
        one = Reference("one process, same episodes", f["parallel"]["1"]["tokens_per_s"], "tokens/s")
        many = next(k for k in f["parallel"] if k not in ("1", "speedup"))
        figure = f"pg update on {many} processes (torchrun)"
        rows.append(row("trainer", figure, f["parallel"][many]["tokens_per_s"], "tokens/s", reference=one))
    return rows


def _throughput_rows(t: dict[str, Any]) -> list[dict[str, Any]]:
    raw = Reference("raw forward+backward, same batches", t["raw_tokens_per_s"], "tokens/s")
    return [
        row("trainer", "pg update", t["pg_tokens_per_s"], "tokens/s", Target(">=", 0.8, of_ratio=True), raw),
        row(
            "trainer",
            "pg update, without the KL reference pass",
            t["pg_steps_tokens_per_s"],
            "tokens/s",
            reference=raw,
        ),
    ]


def _turnaround_rows(t: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        row("trainer", f"episode finalized → checkpoint serving as {t['first_state']}", t["to_upload_s"], "s")
    ]
    if t["live"]:
        rows.append(row("trainer", "episode finalized → promoted live", t["to_live_s"], "s"))
    elif t["canary_completions"]:
        figure = f"episode finalized → not live after {t['canary_completions']} canary-period completions"
        rows.append(row("trainer", figure, t["to_live_s"], "s"))
    # With no canary traffic and no promotion there is nothing to report about going live.
    return rows
