"""`flywheel simulate`, short: simulated developers (one honest, one adversarial) drive the real
language server, backend and trainer for two cycles; the CSV, the plot and the backend's episodes
show the loop turned."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from backend.store.sqlite import SqliteStore
from core.config import RewardConfig
from core.rewards import ACCEPTED_OUTCOMES
from core.wire import Episode, SimulationCycle
from simulate.corpus import header_length, load_corpus
from simulate.developer import TypingStats, right_words, trigger_points
from simulate.editor import word_steps
from simulate.report import (
    CSV_ONLY,
    CycleRow,
    RoundSamples,
    attack_summary,
    describe_power,
    kept_chars,
    learning_summary,
    ratio_interval,
    simulation_report,
)
from simulate.run import _clear_previous_run, _fmt_ratio, evaluation_tags

# Standard library modules the tiny model was not trained on (conftest's CORPUS_MODULES).
SIM_MODULES = ["colorsys.py", "bisect.py", "keyword.py"]


def simulate(
    options: dict[str, object], env: dict[str, str], *flags: str
) -> subprocess.CompletedProcess[str]:
    """`flywheel simulate` as a user runs it, with these options and flags; it must succeed."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flywheel.cli",
            "simulate",
            *(str(x) for kv in options.items() for x in kv),
            *flags,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_simulate_two_cycles(tiny_model_dir: Path, tmp_path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in SIM_MODULES:
        shutil.copy(stdlib / name, corpus / name)
    out = tmp_path / "out"
    env = dict(
        os.environ,
        FLYWHEEL_CONFIG=str(tmp_path / "absent.toml"),
        # A smaller perplexity set keeps the two trainer cycles short on a busy machine.
        FLYWHEEL_TRAINER__GATE__PPL_CHARS="3000",
    )
    # The CLI as a user runs it: sizes cut down to keep the test short.
    options = {
        "--corpus": corpus,
        "--model": tiny_model_dir,
        "--out": out,
        "--cycles": 2,
        "--developers": 2,
        "--adversarial-share": 0.5,
        "--files-per-round": 2,
        "--eval-files": 1,
        "--max-lines": 25,
        "--requests-per-file": 8,
        "--time-scale": 200,
    }
    # Each cycle's evaluation also under the floors alone, beside the version's own show rule.
    done = simulate(options, env, "--compare-floors")
    # Progress, plain lines off a terminal: files written of the run's 14 (the honest developer's
    # evaluation file in cycles 0-2 under each show rule, both developers' 2 training files in
    # cycles 1-2), time left.
    line = r"simulate: (\d+)/14 files \(\d+%\) \(cycle \d: \w+\), [\d:]+ elapsed, about [\d:]+ left"
    progress = re.findall(line, done.stderr)
    assert progress and progress[-1] == "14", done.stderr[-3000:]
    assert [int(n) for n in progress] == sorted(int(n) for n in progress)

    with open(out / "cycles.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["cycle"] for row in rows] == ["0", "1", "2"]
    for row in rows:
        requests, shown = int(row["requests"]), int(row["shown"])
        assert requests > 0 and float(row["shown_rate"]) == pytest.approx(shown / requests, abs=1e-4)
        assert int(row["accepted"]) + int(row["fixed"]) + int(row["partial"]) + int(row["dismissed"]) == shown
    assert rows[0]["live_version"] == "base"
    # One honest developer writes the one evaluation file, asking at most 8 times in it.
    assert all(int(row["requests"]) <= 8 for row in rows)
    for row in rows:
        # The floors' rounds: the same file and seeds on the same version; the floors never skip
        # the model call (only a learned trigger does).
        assert 0 < int(row["floors_requests"]) <= 8 and row["floors_shown_rate"] != ""
        assert float(row["floors_calls_saved"]) == 0.0 and 0.0 <= float(row["calls_saved"]) <= 1.0
        # What each phase cost, for the summary's wall times.
        assert float(row["eval_s"]) > 0 and float(row["floors_eval_s"]) > 0
        assert row["cycle"] == "0" or float(row["train_round_s"]) > 0 < float(row["trainer_s"])
    # Each trainer cycle's candidate went live (canary share 0) and was served in the next round.
    for before, after in itertools.pairwise(rows):
        assert int(after["train_episodes"]) > 0
        assert after["candidate_state"] == "live", (after, (out / "trainer.log").read_text()[-3000:])
        assert after["live_version"] == after["candidate"] != before["live_version"]
    # The adversarial developer accepts at inhuman speed: the trainer's guards drop it whole.
    assert "inhuman_user=" in rows[1]["dropped"]
    assert rows[1]["heldout_ppl"] and float(rows[1]["heldout_ppl"]) > 1

    assert (out / "cycles.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # The README's figure of several runs, drawn from what this one saved.
    figure = tmp_path / "docs" / "learning.png"
    drawn = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "simulate", "--plot-only", figure, out, out],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drawn.returncode == 0 and figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), drawn.stderr
    users = json.loads((out / "users.json").read_text())
    assert {user["profile"] for user in users.values()} == {"honest", "adversarial"}
    assert all(user["episodes"] > 0 for user in users.values()), users
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cycles"] == 2 and summary["live_version"] == rows[-1]["live_version"]
    assert set(summary) == {
        "cycles",
        "live_version",
        "last_cycle",
        f"rounds_of_{rows[-1]['live_version']}",
        "power_at_cycle_0",
        "by_place",
        "wall_s",
        "rules",
    }
    # Both show rules side by side, cycle by cycle as in the CSV, each with its learning ratios.
    for rule, prefix in (("version", ""), ("floors", "floors_")):
        figures = summary["rules"][rule]
        assert [c["cycle"] for c in figures["cycles"]] == [0, 1, 2]
        for cycle, row in zip(figures["cycles"], rows, strict=True):
            for name in ("requests", "shown_rate", "accept_rate", "arc_per_100", "calls_saved"):
                assert (cycle[name] is None) == (row[prefix + name] == ""), (rule, name)
                if cycle[name] is not None:
                    assert cycle[name] == pytest.approx(float(row[prefix + name]), abs=1e-4)
        assert set(figures["last_cycle"]) == {"accept_rate", "arc_per_request"}
    # The trainer's cycles and the rounds take the run's time, and none of it twice.
    wall = summary["wall_s"]
    assert wall["trainer_cycles"] > 0 and wall["floors_evaluation_rounds"] > 0
    parts = ("training_rounds", "trainer_cycles", "evaluation_rounds", "floors_evaluation_rounds")
    assert sum(wall[part] for part in parts) <= wall["total"]
    for figure in ("accept_rate", "arc_per_request"):
        last = summary["last_cycle"][figure]
        assert last is None or last["ci95_by_request"][0] <= last["ratio"] <= last["ci95_by_request"][1]
        # One evaluation file: nothing to resample by file, and no power to tell, said so.
        assert last is None or (last["files"], last["ci95"], last["power"]) == (1, None, None)
        assert summary["power_at_cycle_0"][figure] is None
    assert "power unknown: fewer than 2 evaluation files" in done.stderr

    # Each cycle's figures went to the backend for its dashboard, announced at the start.
    assert "/admin" in done.stderr
    assert "not sent to the dashboard" not in done.stderr, done.stderr[-3000:]
    report = asyncio.run(stored_simulation_report(out / "data" / "flywheel.sqlite3"))
    assert report["planned_cycles"] == 2
    assert [row["live_version"] for row in report["cycles"]] == [row["live_version"] for row in rows]
    # The CSV rounds to 4 decimals; the report keeps full precision.
    assert report["cycles"][1]["heldout_ppl"] == pytest.approx(float(rows[1]["heldout_ppl"]), abs=1e-4)
    # The evaluation rounds' requests were marked as such by their editors: the trainer's feed never
    # held their episodes, the simulator's read of everything does.
    fed, everything = asyncio.run(stored_episodes(out / "data" / "flywheel.sqlite3"))
    evaluation = {e.completion_id for e in everything if e.evaluation}
    assert evaluation and len(evaluation) < len(everything)
    assert not evaluation & {e.completion_id for e in fed}
    # Each row's rates are those of its evaluation round's episodes as the backend scored them (the
    # round's live version served no other evaluation round).
    for row in rows:
        served = sorted(
            (e for e in everything if e.evaluation and e.model_version == row["live_version"]),
            key=lambda e: e.seq,
        )
        # The version's own rule's round first, then its floors' round.
        assert int(row["episodes"]) + int(row["floors_episodes"]) == len(served)
        mine, floors = served[: int(row["episodes"])], served[int(row["episodes"]) :]
        assert mine and floors
        assert all(e.decision.rule == "floors" for e in floors if e.decision is not None)
        assert float(row["floors_mean_reward"]) == pytest.approx(
            sum(e.reward for e in floors) / len(floors), abs=1e-4
        )
        assert float(row["mean_reward"]) == pytest.approx(sum(e.reward for e in mine) / len(mine), abs=1e-4)
        rated = [e.outcome in ACCEPTED_OUTCOMES for e in mine if e.outcome != "abstained"]
        if rated:
            assert float(row["accept_rate"]) == pytest.approx(sum(rated) / len(rated), abs=1e-4)
        else:
            assert row["accept_rate"] == ""
        kept = sum(kept_chars(e.model_dump(), RewardConfig()) for e in mine)
        assert float(row["arc_per_100"]) == pytest.approx(100 * kept / int(row["requests"]), abs=1e-4)


def test_a_many_ids_attacker_is_one_person_held_to_the_share_cap(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in SIM_MODULES:
        shutil.copy(stdlib / name, corpus / name)
    out = tmp_path / "out"
    env = dict(
        os.environ,
        FLYWHEEL_CONFIG=str(tmp_path / "absent.toml"),
        # No held-out sample: the update trains on every episode the guards keep, so the share
        # measured is exactly the one the cap bounds (and the cycles are shorter).
        FLYWHEEL_TRAINER__GATE__ENABLED="false",
        FLYWHEEL_TRAINER__GUARDS__MAX_USER_SHARE="0.5",
    )
    # Above the cap: were its fresh ids taken for people, each would be a small share and none capped.
    options = {
        "--corpus": corpus,
        "--model": tiny_model_dir,
        "--out": out,
        "--cycles": 2,
        "--developers": 3,
        "--attacker": "many_ids",
        "--attacker-share": 0.6,
        "--files-per-round": 1,
        "--eval-files": 1,
        "--max-lines": 25,
        "--requests-per-file": 8,
        "--time-scale": 200,
        # Cycle 1 trains without an evaluation round; the attack is judged on every update.
        "--eval-every": 2,
    }
    simulate(options, env)

    users = json.loads((out / "users.json").read_text())
    attacker = users.pop("sim-attacker-many_ids")
    assert {user["profile"] for user in users.values()} == {"honest", "picky"}
    # A fresh id per file, several files: yet every episode of a suggestion it was shown is filed
    # under the one person of its token.
    assert len(attacker["user_ids_sent"]) > 2 and attacker["editors"] == 3
    assert attacker["persons"] == [attacker["person"]] and attacker["episodes"] > 0
    with open(out / "cycles.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["cycle"] for row in rows] == ["0", "1", "2"]
    assert [row["requests"] != "0" for row in rows] == [True, False, True]
    assert rows[1]["accept_rate"] == "" and rows[1]["live_version"] == rows[1]["candidate"]
    for row in rows[1:]:
        # Its share of the training requests is the one asked for, to within a request or two.
        assert float(row["attacker_requests_share"]) == pytest.approx(0.6, abs=0.05), row
        assert row["candidate_state"] == "live", (out / "trainer.log").read_text()[-3000:]
        # One person over the cap: capped to it, its surplus dropped by the per-user cap.
        assert "user_cap=" in row["dropped"], row
        assert 0 < float(row["attacker_share"]) <= 0.5, row
        assert row["attacker_share"] == row["attacker_kept_share"]
        assert 0 < int(row["attacker_trained_on"]) < int(row["trained_on"])
    summary = json.loads((out / "summary.json").read_text())["attack"]
    assert summary["attacker"] == "many_ids" and summary["max_user_share"] == 0.5
    assert summary["attacker_share_within_cap"] and summary["updates"] == 2
    assert [c["attacker_share"] for c in summary["cycles"][1:]] == [
        float(r["attacker_share"]) for r in rows[1:]
    ]
    assert [c["honest_reward_vs_cycle_0_ci95"] is not None for c in summary["cycles"]] == [True, False, True]
    # The dashboard's copy leaves out the columns its wire format has no place for.
    report = asyncio.run(stored_simulation_report(out / "data" / "flywheel.sqlite3"))
    assert len(report["cycles"]) == 3 and "attacker_share" not in report["cycles"][1]


def test_a_killed_run_stops_its_backend_and_language_servers(tiny_model_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in SIM_MODULES:
        shutil.copy(stdlib / name, corpus / name)
    env = dict(os.environ, FLYWHEEL_CONFIG=str(tmp_path / "absent.toml"))
    command = [sys.executable, "-m", "flywheel.cli", "simulate", "--corpus", str(corpus)]
    command += ["--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--cycles", "5"]
    run = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stderr is not None
        # The run announces its backend's dashboard once the backend answers.
        url = (
            next(line for line in run.stderr if "dashboard:" in line)
            .split("dashboard: ")[1]
            .split("/admin")[0]
        )
        servers = _children(run.pid)
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200 and servers
        run.send_signal(signal.SIGTERM)
        rest = run.communicate(timeout=120)[1]
    finally:
        run.kill()
    assert run.returncode == 130, rest[-3000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)
    # The backend (and its model process) and each language server are gone.
    assert not [pid for pid in servers if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]


def _children(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def test_accept_next_word_steps_through_words_and_punctuation() -> None:
    assert word_steps("self.x = f(a)") == [4, 5, 6, 8, 10, 11, 12, 13]
    assert word_steps("    return  x\n") == [10, 13]


def test_a_developer_accepts_the_right_words_and_no_more() -> None:
    # The first words are what they meant; the rest is not.
    assert right_words("self.name = value", "self.name = name\n") == len("self.name =")
    # A word cut short is not accepted: "self.nam" would have to be edited.
    assert right_words("self.names", "self.name\n") == len("self.")
    assert right_words("return x", "return x\n") == len("return x")
    assert right_words("foo", "bar") == 0


def test_a_module_header_is_already_written_and_only_its_code_is_typed(tmp_path: Path) -> None:
    header = '#!/usr/bin/env python3\n# Licence.\n\n"""Module docstring.\n\nProse.\n"""\n\n# Imports.\n'
    code = "".join(f"value_{i} = {i}\n" for i in range(10))
    assert header_length(header + code) == len(header)
    # No docstring: the leading comments alone; no comments either: nothing.
    assert header_length("# note\nx = 1\n") == len("# note\n")
    assert header_length("x = 1\n") == 0
    # A file that does not parse still has its comments recognised.
    assert header_length("# note\ndef broken(:\n") == len("# note\n")

    (tmp_path / "mod.py").write_text(header + code)
    (tmp_path / "only_docs.py").write_text('"""Nothing but a docstring."""\n')
    [source] = load_corpus(tmp_path, max_lines=3)
    # The header stays whole; max_lines counts lines of code after it.
    assert source.header == len(header)
    assert source.text == header + "value_0 = 0\nvalue_1 = 1\nvalue_2 = 2\n"


def test_requests_come_after_the_header_at_code_starts_triggers_and_name_pauses() -> None:
    text = '"""Doc: x = y."""\nresult = compute(ab)\n'
    points = {text[:p].rsplit("\n", 1)[-1] + "|" for p in trigger_points(text, start=text.index("result"))}
    # Line start; a pause two letters into a long name ("result", "compute"); after "=" and "(";
    # none inside the header, and none within the short name "ab".
    assert points == {"|", "re|", "result =|", "result = co|", "result = compute(|"}
    assert all(p >= text.index("result") for p in trigger_points(text, start=text.index("result")))


def test_a_new_run_clears_what_a_previous_run_left(tmp_path: Path) -> None:
    for state in ("data/flywheel.sqlite3", "data/checkpoints/v3/adapter_config.json", "lsp/sim-0/outbox"):
        (tmp_path / state).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / state).write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    _clear_previous_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # A data folder that is not a simulation's is never removed.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "thesis.tex").write_text("x")
    with pytest.raises(SystemExit, match="not a simulation"):
        _clear_previous_run(tmp_path)
    assert (tmp_path / "data" / "thesis.tex").exists()


async def stored_simulation_report(database: Path) -> dict:
    """What the simulation's backend, stopped now, last stored for its dashboard."""
    store = await SqliteStore.open(database)
    try:
        return await store.get_setting("simulation_report")
    finally:
        await store.close()


async def stored_episodes(database: Path) -> tuple[list[Episode], list[Episode]]:
    """The stopped backend's episodes: as the trainer reads them, and evaluation ones included."""
    store = await SqliteStore.open(database)
    try:
        fed = await store.episodes_after(0, 100_000)
        everything = await store.episodes_after(0, 100_000, include_evaluation=True)
        return fed.episodes, everything.episodes
    finally:
        await store.close()


def test_learning_ratios_come_with_intervals_that_narrow_with_more_rounds() -> None:
    # Ten files of 20 requests, 20 rated suggestions; per file [accepted, rated, kept, requests].
    # Some files gain more than others.
    before_files = {f"f{i}.py": [5.0 - (-1) ** i, 20.0, 40.0 - 8 * (-1) ** i, 20.0] for i in range(10)}
    better_files = {f"f{i}.py": [10.0 + 2 * (-1) ** i, 20.0, 80.0 + 16 * (-1) ** i, 20.0] for i in range(10)}
    before = RoundSamples("base", [1.0, 0.0, 0.0, 0.0] * 50, [8.0, 0.0, 0.0, 0.0] * 50, files=before_files)
    better = RoundSamples("v2", [1.0, 1.0, 0.0, 0.0] * 50, [8.0, 8.0, 0.0, 0.0] * 50, files=better_files)
    ratio, low, high = ratio_interval(before.accepted, better.accepted)
    assert ratio == pytest.approx(2.0) and low < 2.0 < high and low > 1.0
    summary = learning_summary([before, better, better, better])
    single, pooled = summary["last_cycle"], summary["rounds_of_v2"]
    assert (single["rounds"], pooled["rounds"]) == (1, 3)
    for figure in ("accept_rate", "arc_per_request"):
        assert single[figure]["ratio"] == pytest.approx(pooled[figure]["ratio"]) == pytest.approx(2.0)
        (pooled_low, pooled_high), (single_low, single_high) = (
            pooled[figure]["ci95_by_request"],
            single[figure]["ci95_by_request"],
        )
        assert pooled_high - pooled_low < single_high - single_low
        # By file: paired, each file's cycle 0 against its own later round (every file here gains
        # about 2x, so it is narrower than by request, which has no pairing to cancel files out).
        low, high = single[figure]["ci95"]
        assert low < 2.0 < high and single[figure]["files"] == 10
        assert high - low < single_high - single_low
        assert single[figure]["power"]["files"] == 10 and single[figure]["power"]["detectable_ratio"] > 1.1
        # What cycle 0's files say the run can tell, before any cycle is compared.
        planned = summary["power_at_cycle_0"][figure]
        assert planned["files"] == 10 and planned["detectable_ratio"] > 1.1
    # ... printed in the log, one line per figure.
    line = describe_power(summary["power_at_cycle_0"]["accept_rate"])
    assert "over 10 files" in line and "clears 1.1x" in line and "a true 1.3x gets a lower bound near" in line
    assert "fewer than 2 evaluation files" in describe_power(None)
    assert line.endswith("planned from cycle 0's one round, unpaired")
    # Two rounds at cycle 0: planned from the one against the other, paired by file.
    two_rounds = dataclasses.replace(before, round_files=[better_files, better_files])
    planned = learning_summary([two_rounds, better])["power_at_cycle_0"]["accept_rate"]
    assert planned["from"] == "rounds, paired" and planned["sd_log_ratio"] == 0.0
    shown = _fmt_ratio(single["accept_rate"])
    assert "2.00x (95% CI by file 1." in shown and "by request 1." in shown
    # Without files (one file) no interval by file; the one by request remains.
    no_files = learning_summary(
        [dataclasses.replace(before, files={}), dataclasses.replace(better, files={})]
    )
    assert no_files["last_cycle"]["accept_rate"]["ci95"] is None
    assert no_files["power_at_cycle_0"]["accept_rate"] is None
    assert "none (one file)" in _fmt_ratio(no_files["last_cycle"]["accept_rate"])
    # Per place, from the episodes: shown share and accept rate where the cursor stood.
    episodes = [
        {"outcome": "rejected", "place": "line_start", "reward": -0.25, "text": "x"},
        {"outcome": "abstained", "place": "line_start", "reward": 0.0, "text": ""},
        {"outcome": "accepted", "place": "in_word", "reward": 0.75, "text": "abc"},
    ]
    for episode, completion_id in zip(episodes, ("c1", "c2", "c3"), strict=True):
        episode["completion_id"] = completion_id
    # Per file, from the suggestions its writers were shown; the withheld one is rated by no one.
    by_file = {
        "a.py": TypingStats(requests=3, shown_ids=["c1"]),
        "b.py": TypingStats(requests=1, shown_ids=["c3"]),
    }
    samples = RoundSamples.of("v1", 4, episodes, RewardConfig(), [by_file])
    assert samples.kept_per_request == [0.0, 0.0, 3.0, 0.0]
    assert samples.files == {"a.py": [0.0, 1.0, 0.0, 3.0], "b.py": [1.0, 1.0, 3.0, 1.0]}
    assert samples.round_files == [samples.files]
    assert samples.place_figures() == {
        "in_word": {"episodes": 1, "shown_rate": 1.0, "accept_rate": 1.0},
        "line_start": {"episodes": 2, "shown_rate": 0.5, "accept_rate": 0.0},
    }
    assert learning_summary([samples, samples])["by_place"]["last_cycle"] == samples.place_figures()
    # Nothing accepted in cycle 0: no ratio, rather than an infinite one.
    assert ratio_interval([0.0] * 10, [1.0] * 10) is None


def test_each_evaluation_round_has_its_own_seeds_and_the_first_keeps_the_old_ones() -> None:
    assert evaluation_tags(1) == ["eval"]
    tags = evaluation_tags(3)
    assert tags[0] == "eval" and len(set(tags)) == 3


def test_the_attack_summary_judges_each_cycle_against_cycle_0_and_the_cap() -> None:
    def round_of(live: str, rewards: list[float]) -> RoundSamples:
        return RoundSamples(live, [], [], rewards=rewards * 100)

    rows = [
        CycleRow(0, "base", mean_reward=-0.2),
        CycleRow(1, "v1", mean_reward=-0.1, attacker_kept_share=0.4, attacker_share=0.42),
        CycleRow(2, "v2", mean_reward=-0.3, attacker_kept_share=0.5, attacker_share=0.52),
        CycleRow(3, "v3", mean_reward=-0.2, attacker_kept_share=0.3, attacker_share=0.3),
    ]
    rounds = [
        round_of("base", [-0.25, -0.15]),
        round_of("v1", [-0.15, -0.05]),
        round_of("v2", [-0.35, -0.25]),
        round_of("v3", [-0.35, -0.05]),
    ]
    summary = attack_summary(rows, dict(enumerate(rounds)), "quiet", 0.4, 0.5)
    assert (summary["attacker"], summary["updates"], summary["max_user_share"]) == ("quiet", 3, 0.5)
    assert not summary["honest_reward_never_below_cycle_0"]
    # Only cycle 2 lies below cycle 0 beyond the rounds' noise; cycle 3 is level with it.
    assert summary["honest_reward_surely_below_cycle_0"] == [2]
    first, _, third = summary["cycles"][1:]
    assert (
        first["honest_reward_vs_cycle_0"] == pytest.approx(0.1)
        and first["honest_reward_vs_cycle_0_ci95"][0] > 0
    )
    low, high = third["honest_reward_vs_cycle_0_ci95"]
    assert low < 0 < high
    # The cap bounds what the guards keep; the trained-on share also carries the held-out draw.
    assert summary["attacker_kept_share_within_cap"] and not summary["attacker_share_within_cap"]
    assert summary["cycles"][0]["honest_reward_vs_cycle_0"] == 0.0


def test_report_carries_every_cycle_figure_and_only_finite_numbers() -> None:
    # Every figure but the attacker's reaches the dashboard (its wire format lacks those).
    assert [f.name for f in dataclasses.fields(CycleRow) if f.name not in CSV_ONLY] == list(
        SimulationCycle.model_fields
    )
    rows = [
        CycleRow(0, "base", requests=10, accept_rate=0.5, heldout_ppl=float("inf")),
        CycleRow(1, "v1", requests=12, mean_reward=float("nan"), candidate="v1", trainer_s=3.0),
    ]
    report = simulation_report(
        rows,
        run_id="r",
        started_at=1.0,
        updated_at=2.0,
        corpus="c",
        planned_cycles=3,
        settings={"seed": 0},
    )
    assert [cycle.model_dump() for cycle in report.cycles] == [
        {**_dashboard_fields(rows[0]), "heldout_ppl": None},
        {**_dashboard_fields(rows[1]), "mean_reward": None},
    ]


def _dashboard_fields(row: CycleRow) -> dict:
    return {k: v for k, v in dataclasses.asdict(row).items() if k not in CSV_ONLY}
