"""`flywheel bench faults`: the faults Flywheel survives, each a SIGKILL from outside.

trainer      the trainer killed at `--kills` points spread over one cycle (update, save, upload,
             cursor; bench/faults/trainer_kills.py), each followed by `flywheel trainer --once`:
             no corrupt or half-written checkpoint anywhere, no episode trained twice into one
             version, every episode of the round trained on after the restart
ingest       the backend killed `--ingest-kills` times while language servers' outboxes send it
             events (bench/faults/ingest_kills.py): every acknowledged event there after the
             restart, the outboxes deliver the rest, each event stored once
model        the model process killed `--model-kills` times with requests in flight
             (bench/faults/model_kills.py): those get 503, later ones succeed once it is back

`run` returns the figures and `summary` the report's rows (`flywheel bench faults --out`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.model import local_model
from bench.rows import Target, row
from core.config import Settings

# `flywheel bench faults --quick`: each kind once or a few times, in a few minutes.
QUICK = ["--kills", "3", "--ingest-kills", "1", "--model-kills", "1", "--episodes", "24"]
PARTS = ("trainer", "ingest", "model")


def trainer_part(model: str, work: Path, kills: int, episodes: int) -> dict[str, Any]:
    from bench.faults import trainer_kills

    started = time.monotonic()
    rig = trainer_kills.start_rig(model, work / "trainer")
    try:
        first = trainer_kills.baseline(rig, episodes, work)
        print(f"first cycle, uninterrupted: {first['wall_s']} s; timeline {first['timeline']}")
        points = trainer_kills.plan(first["timeline"], kills)
        results = []
        for n, point in enumerate(points, 1):
            result = trainer_kills.kill_and_resume(rig, point, episodes, work)
            results.append(result)
            problems = result["problems_after_kill"] + result["problems_after_resume"]
            verdict = "survived" if result["survived"] else "FAILED: " + "; ".join(problems)
            if not result["killed"]:
                verdict = f"missed: the trainer ended before the kill, {result['tries']} tries"
            print(
                f"kill {n}/{len(points)} at {point.name} ({point.phase}): landed {result['landed']};"
                f" resumed in {result['resume_s']} s, new {result['new_versions']} -> {verdict}"
            )
    finally:
        rig.close()
    by_phase: dict[str, list[int]] = {}
    for r in results:
        landed = by_phase.setdefault(r["phase"], [0, 0])
        landed[0] += r["survived"]
        landed[1] += 1
    final = results[-1]["checkpoints"] if results else first["checkpoints"]
    return {
        "first_cycle": first,
        "kills": results,
        "planned": len(points),
        "landed": sum(r["killed"] for r in results),
        "survived": sum(r["survived"] for r in results),
        "by_phase": by_phase,
        "where": dict(Counter(r["landed"] for r in results)),
        "checkpoints": final,
        "wall_s": round(time.monotonic() - started, 1),
    }


def run(settings: Settings, argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="flywheel bench faults", description=__doc__)
    parser.add_argument("--model", help="model directory (default: the bootstrapped default model)")
    parser.add_argument("--kills", type=int, default=20, help="trainer kill points over one cycle")
    parser.add_argument("--episodes", type=int, default=32, help="episodes made before each trainer kill")
    parser.add_argument("--ingest-kills", type=int, default=3, help="backend kills under ingest")
    parser.add_argument("--model-kills", type=int, default=3, help="model-process kills under load")
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run only this part (repeatable; default: all)"
    )
    args = parser.parse_args(argv)
    model = args.model or local_model(settings)
    parts = args.only or list(PARTS)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; model {model}")
    figures: dict[str, Any] = {"model": model, "load_average": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="flywheel-faults-") as tmp:
        work = Path(tmp)
        if "model" in parts:
            from bench.faults.model_kills import run_model_kills

            figures["model"] = run_model_kills(model, work, kills=args.model_kills)
        if "ingest" in parts:
            from bench.faults.ingest_kills import run_ingest_kills

            figures["ingest"] = run_ingest_kills(model, work, kills=args.ingest_kills)
        if "trainer" in parts:
            figures["trainer"] = trainer_part(model, work, args.kills, args.episodes)
    print_figures(figures)
    return figures


def print_figures(f: dict[str, Any]) -> None:
    if "trainer" in f:
        t = f["trainer"]
        print(
            f"trainer: {t['survived']}/{t['planned']} kills survived ({t['landed']} landed)"
            f" in {t['wall_s']} s; by phase {t['by_phase']}"
        )
    if "ingest" in f:
        i = f["ingest"]
        print(
            f"backend under ingest: {len(i['kills'])} kills, {'survived' if i['survived'] else 'FAILED'};"
            f" {i['acknowledged_before_kills']} events acknowledged before the kills,"
            f" {i['acknowledged_lost']} lost; {i['events_written']} written, {i['events_stored']} stored,"
            f" {i['stored_twice']} twice; {i['answered_duplicates']} answered as duplicates; {i['wall_s']} s"
        )
    if "model" in f:
        m = f["model"]
        print(
            f"model process: {m['survived']}/{len(m['kills'])} kills survived; {m['in_flight']} requests in"
            f" flight: {m['in_flight_statuses']}; {m['sent_once_back']} sent once back,"
            f" {m['once_back_failed']} failed; {m['wall_s']} s"
        )


# What must never happen: a figure whose target is none at all.
NONE = Target("<=", 0)


def summary(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows for the parts that ran."""
    rows: list[dict[str, Any]] = []
    if "trainer" in f:
        rows += _trainer_rows(f["trainer"])
    if "ingest" in f:
        rows += _ingest_rows(f["ingest"])
    if "model" in f:
        rows += _model_rows(f["model"])
    return rows


def _trainer_rows(t: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        row("faults", "trainer SIGKILLs survived", t["survived"], "kills", Target(">=", t["planned"])),
        row("faults", "trainer kill points, wall time", t["wall_s"], "s"),
    ]


def _ingest_rows(i: dict[str, Any]) -> list[dict[str, Any]]:
    missing = i["events_written"] - i["events_stored"]
    under = "backend kills under ingest"
    return [
        row("faults", f"{under}: acknowledged events lost", i["acknowledged_lost"], "events", NONE),
        row("faults", f"{under}: events stored twice", i["stored_twice"], "events", NONE),
        row("faults", f"{under}: events missing after the outboxes drained", missing, "events", NONE),
    ]


def _model_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    statuses = m["in_flight_statuses"]
    others = sum(n for status, n in statuses.items() if status not in ("200", "503"))
    kills = "model-process kills"
    return [
        row("faults", f"{kills}: requests in flight answered 503", statuses.get("503", 0), "requests"),
        row("faults", f"{kills}: in flight, neither 503 nor served", others, "requests", NONE),
        row("faults", f"{kills}: failed once back", m["once_back_failed"], "requests", NONE),
    ]
