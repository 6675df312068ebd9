"""Faults survived (bench/faults/): the trainer, the backend and the model process SIGKILLed at
their worst moments, against real processes; and the checks that judge what a kill left, each
shown to catch what it is for."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import struct
from pathlib import Path

import pytest

from bench.faults import checks, trainer_kills
from bench.faults.ingest_kills import run_ingest_kills
from bench.faults.model_kills import run_model_kills
from core.wire import CheckpointInfo

# A shorter perplexity text for the eval gate, as the other trainer tests use: the cycle is what
# is killed here, not the gate's figures.
QUICK_GATE = {"FLYWHEEL_TRAINER__GATE__PPL_CHARS": "3000"}


def test_trainer_killed_mid_update_mid_save_and_after_the_upload_resumes_whole(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rig = trainer_kills.start_rig(str(tiny_model_dir), tmp_path / "data", **QUICK_GATE)
    try:
        first = trainer_kills.baseline(rig, 24, tmp_path)
        assert first["problems"] == [], first
        points = trainer_kills.plan(first["timeline"], 3)
        assert [p.phase for p in points] == ["update", "save", "upload"], points
        results = [trainer_kills.kill_and_resume(rig, point, 24, tmp_path) for point in points]
    finally:
        rig.close()
    for result in results:
        assert result["killed"], result
        assert result["problems_after_kill"] == [] and result["problems_after_resume"] == [], result
        assert result["resume_exit"] == 0 and result["survived"], result
    update, save, upload = results
    assert update["landed"] == "before the save: nothing on disk", update
    # Killed with the candidate half-written: only a temp dir is left, and the restarted trainer
    # trains the round again into a new version.
    assert save["landed"] == "mid-save: a temp dir left" and save["temp_dirs_left"], save
    assert len(save["new_versions"]) == 1, save
    # Killed after the backend took the upload, before the trainer heard: the restarted trainer
    # finds it there and trains nothing again.
    assert upload["landed"] == "upload taken by the backend, cursor not moved", upload
    assert len(upload["new_versions"]) == 1, upload
    ranges = [c["seq"] for c in upload["checkpoints"] if c["seq"]]
    # One checkpoint per round, consecutive: nothing trained twice, nothing skipped.
    assert len(ranges) == 4 and all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), ranges


def test_backend_killed_under_ingest_keeps_every_acknowledged_event_and_stores_each_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    figures = run_ingest_kills(str(tiny_model_dir), tmp_path, kills=1, senders=3, flow_s=2.0, down_s=0.5)
    [kill] = figures["kills"]
    # Killed under ingest: events had been acknowledged and more were on their way.
    assert (
        kill["acknowledged_before_kill"] > 0 and figures["events_written"] > kill["acknowledged_before_kill"]
    )
    assert kill["acknowledged_lost"] == 0 and figures["acknowledged_lost"] == 0, figures
    assert figures["events_stored"] == figures["events_written"], figures
    assert figures["stored_twice"] == 0 and figures["rows"] == figures["events_written"], figures
    assert figures["answered_stored"] <= figures["events_written"], figures
    assert figures["refused"] == 0 and figures["survived"], figures


def test_model_process_killed_with_requests_in_flight_answers_503_then_serves(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    figures = run_model_kills(str(tiny_model_dir), tmp_path, kills=1, clients=24, warm_s=2.0)
    [kill] = figures["kills"]
    assert kill["in_flight"] >= 12, kill
    assert kill["in_flight_statuses"].get("503", 0) > 0, kill
    # Not a 500, not a hang (0), not a dropped connection (-1).
    assert set(kill["in_flight_statuses"]) | set(kill["after_statuses"]) <= {"200", "503"}, kill
    assert kill["sent_once_back"] > 0 and kill["once_back_failed"] == 0, kill
    assert kill["replaced"] and kill["survived"], kill


# The checks themselves: each finds what it is for.


def _checkpoint(version: str, parent: str, seq: tuple[int, int] | None, **metrics: object) -> CheckpointInfo:
    if seq is not None:
        metrics.update(seq_after=seq[0], seq_through=seq[1])
    return CheckpointInfo(
        version=version, state="live", parent_version=parent, created_at=0.0, metrics=metrics
    )


def test_episodes_twice_finds_a_round_trained_into_two_checkpoints() -> None:
    chain = [_checkpoint("v1", "base", (0, 32)), _checkpoint("v2", "v1", (32, 64))]
    assert checks.episodes_twice(chain) == []
    # The same round uploaded twice (a restarted trainer that did not see its upload arrive).
    twice = [*chain, _checkpoint("v3", "v2", (40, 70))]
    problems = checks.episodes_twice(twice)
    assert any("41..64 trained into both v2 and v3" in p for p in problems), problems
    assert any(p.startswith("v3: its lineage") for p in problems), problems
    # Floors shipped alone on live weights train on nothing.
    assert checks.episodes_twice([*chain, _checkpoint("v3", "v2", (32, 64), floors_only=1.0)]) == []


def test_adapter_problems_finds_a_cut_safetensors_file(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save

    weights = save({"a.lora_A.weight": torch.ones(2, 2), "a.lora_B.weight": torch.ones(2, 2)})
    config = json.dumps({"peft_type": "LORA"}).encode()
    assert (
        checks.adapter_problems({"adapter_config.json": config, "adapter_model.safetensors": weights}, "x")
        == []
    )
    cut = checks.adapter_problems(
        {"adapter_config.json": config, "adapter_model.safetensors": weights[: len(weights) - 5]}, "x"
    )
    assert cut and "does not parse" in cut[0], cut
    header_only = struct.pack("<Q", 2) + b"{}"
    assert checks.adapter_problems(
        {"adapter_config.json": config, "adapter_model.safetensors": header_only}, "x"
    )
    nan = save({"a.lora_A.weight": torch.ones(2, 2), "a.lora_B.weight": torch.full((2, 2), float("nan"))})
    assert checks.adapter_problems({"adapter_config.json": config, "adapter_model.safetensors": nan}, "x")


def test_trainer_dir_problems_finds_a_pending_mark_on_a_candidate_not_whole(tmp_path: Path) -> None:
    from trainer.state import TrainerState, save_state

    (tmp_path / "candidates" / "c1").mkdir(parents=True)
    (tmp_path / "candidates" / ".c2.tmp-x").mkdir()
    save_state(tmp_path, TrainerState(cursor=0, pending_candidate="c1", pending_cursor=32))
    verdict = checks.trainer_dir_problems(tmp_path, arrived=set())
    assert verdict.temp_dirs == ["candidates/.c2.tmp-x"]
    assert any("c1" in p and "missing" in p for p in verdict.problems), verdict.problems
    assert any("pending candidate c1 is not whole" in p for p in verdict.problems), verdict.problems
    # Once the backend has it, a pending candidate the trainer already deleted is no problem.
    (tmp_path / "candidates" / "c1").rmdir()
    assert checks.trainer_dir_problems(tmp_path, arrived={"c1"}).problems == []


@pytest.mark.parametrize("count", [1, 3, 11, 20, 25])
def test_plan_spreads_the_points_over_the_cycle(count: int) -> None:
    timeline = {"spawn": 0.0, "GET /v1/model": 10.0, "status:training": 10.1, "status:gating": 40.0}
    timeline["status:uploading"] = 55.0
    points = trainer_kills.plan(timeline, count)
    assert len(points) == count and len({p.name for p in points}) == count
    timed = [p for p in points if p.anchor is not None]
    assert all(0 <= p.share < 1 and timeline[str(p.anchor)] + p.offset_s(timeline) < 55.0 for p in timed)
    # A slower run's phases move its time points with them.
    slower = {name: 2 * at for name, at in timeline.items()}
    assert all(p.offset_s(slower) == pytest.approx(2 * p.offset_s(timeline)) for p in timed)
    if count >= 20:
        assert {p.phase for p in points} == {"start-up", "update", "gate", "save", "upload", "cursor"}


async def test_a_model_process_dying_while_a_request_is_looked_at_leaves_no_request_hanging(
    tiny_model_dir: Path,
) -> None:
    """The driver asks whether a request's client is still there before sending it on, and that
    question yields to the event loop: a model process that dies right then used to end the driver
    (it sent the request to the process it had just lost), and every request from then on waited
    forever."""
    from backend.batching import InProcessEngine
    from backend.completions import Cut, Request, plan
    from backend.model_process import LoopConfig
    from core.config import ModelConfig

    worker = InProcessEngine(LoopConfig(str(tiny_model_dir), ModelConfig()))
    await worker.start()
    died = []

    async def still_there_while_the_model_process_dies() -> bool:
        process = worker._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)  # blocks the loop until it is dead: its end of the pipe is closed
        died.append(process.exitcode)
        # The driver gives this question 50 ms, over by now: it goes on as if the client were there.
        await asyncio.sleep(0.01)
        return False

    try:
        first = asyncio.create_task(
            worker.complete(
                plan(Request("def f(", "", 8, "ana"), "base", Cut()),
                gone=still_there_while_the_model_process_dies,
            )
        )
        # It never reached the dead process: the new one serves it.
        assert (await asyncio.wait_for(first, 120)).version == "base"
        assert died == [-signal.SIGKILL]
        later = await asyncio.wait_for(
            worker.complete(plan(Request("def g(", "", 8, "ana"), "base", Cut())), 120
        )
        assert later.version == "base"
    finally:
        await worker.close()
