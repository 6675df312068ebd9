"""The figures of both show rules: model calls saved counted from the episodes' decisions, the
rules side by side in the summary, and runs drawn again from their saved cycles.csv."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from simulate.plots import plot_runs, run_name
from simulate.report import CycleRow, RoundSamples, calls_saved, read_csv, rule_of, rules_summary, write_csv

PNG = b"\x89PNG\r\n\x1a\n"


def _rows() -> list[CycleRow]:
    return [
        CycleRow(
            cycle,
            "base" if cycle == 0 else f"v{cycle}",
            requests=100,
            shown_rate=round(0.7 - 0.1 * cycle, 2),
            accept_rate=round(0.2 + 0.05 * cycle, 2),
            arc_per_100=50.0 + cycle,
            heldout_ppl=3.0,
            rule="floors" if cycle == 0 else "learned",
            calls_saved=0.0 if cycle == 0 else 0.2,
            floors_requests=100,
            floors_shown_rate=0.7,
            floors_accept_rate=0.2,
            floors_arc_per_100=50.0,
            floors_calls_saved=0.0,
            eval_s=12.5,
        )
        for cycle in range(3)
    ]


def test_calls_saved_counts_the_requests_the_trigger_answered_without_the_model() -> None:
    episodes = [
        {"decision": {"rule": "learned", "called": False}},
        {"decision": {"rule": "learned", "called": True}},
        {"decision": None},
        {},
    ]
    assert calls_saved(10, episodes) == pytest.approx(0.1)
    assert calls_saved(0, episodes) is None
    assert rule_of(episodes) == "learned"
    assert rule_of([*episodes, {"decision": {"rule": "floors"}}]) == "floors+learned"
    assert rule_of([{}]) == ""


def test_the_summary_puts_both_rules_side_by_side() -> None:
    rows = _rows()
    before = RoundSamples("base", [1.0, 0.0], [1.0, 0.0], files={"a.py": [1, 2, 1, 2], "b.py": [1, 2, 1, 2]})
    after = RoundSamples("v2", [1.0, 1.0], [2.0, 1.0], files={"a.py": [2, 2, 2, 2], "b.py": [1, 2, 2, 2]})
    summary = rules_summary(rows, [before, after, after], [before, before, before])
    assert set(summary) == {"version", "floors"}
    version, floors = summary["version"], summary["floors"]
    assert [c["rule"] for c in version["cycles"]] == ["floors", "learned", "learned"]
    assert version["cycles"][-1]["calls_saved"] == 0.2 and floors["cycles"][-1]["calls_saved"] == 0.0
    assert version["shown_rate_change"] == pytest.approx(0.5 / 0.7 - 1) and floors["shown_rate_change"] == 0
    assert version["last_cycle"]["accept_rate"]["ratio"] > 1
    assert floors["last_cycle"]["accept_rate"]["ratio"] == pytest.approx(1.0)


def test_runs_are_drawn_again_from_their_saved_figures(tmp_path: Path) -> None:
    rows = _rows()
    outs = [tmp_path / "flywheel-simulation-rich", tmp_path / "flywheel-simulation-jinja2"]
    for out in outs:
        out.mkdir()
        write_csv(rows, out / "cycles.csv")
    # Every figure comes back as written (floats to the CSV's 4 decimals, None as None).
    assert [dataclasses.asdict(row) for row in read_csv(outs[0] / "cycles.csv")] == [
        dataclasses.asdict(row) for row in rows
    ]
    figure = tmp_path / "docs" / "learning.png"
    plot_runs(outs, figure)
    assert figure.read_bytes().startswith(PNG)
    assert [run_name(out) for out in outs] == ["rich", "jinja2"]
    with pytest.raises(SystemExit, match=r"no cycles\.csv"):
        plot_runs([tmp_path], tmp_path / "x.png")
