"""The cycle's typed report: the flat figures a checkpoint carries are made from it, and read back
by the simulator through CheckpointFigures."""

from __future__ import annotations

from collections import Counter

from core.confidence import IN_WORD
from core.wire import GateResult
from trainer.report import (
    CheckpointFigures,
    CutReport,
    CycleReport,
    FloorReport,
    ShowPolicyReport,
    UpdateReport,
)


def report() -> CycleReport:
    return CycleReport(
        "v1",
        episodes=30,
        dropped=Counter(inhuman_user=4, stale_version=2),
        cursor=41,
        update=UpdateReport("pg", trained_on=24, heldout=6, figures={"loss": 0.5, "kl": 0.01}),
        cut=CutReport(-6.0, kept_chars=3.0, kept_chars_uncut=2.5),
        floors=FloorReport({IN_WORD: -4.0}, withheld_share=0.1, kept_chars=2.0, heldout_reward_gain=0.02),
        gate=GateResult(passed=True),
        duration_s=12.5,
        version="v2",
        state="live",
    )


def test_a_checkpoints_figures_are_the_reports_flattened() -> None:
    assert report().metrics() == {
        "loss": 0.5,
        "kl": 0.01,
        "episodes": 24.0,
        "heldout": 6.0,
        "dropped_inhuman_user": 4.0,
        "dropped_stale_version": 2.0,
        "dropped": 6.0,
        "stop_kept_chars": 3.0,
        "stop_kept_chars_uncut": 2.5,
        "stop_logprob": -6.0,
        "floor_withheld_share": 0.1,
        "floor_kept_chars": 2.0,
        "min_confidence_in_word": -4.0,
        "floor_heldout_reward_gain": 0.02,
        "duration_s": 12.5,
    }
    # Nothing trained: no figures, as a skipped cycle reports them.
    skipped = CycleReport("v1", episodes=0, dropped=Counter(inhuman_user=5), cursor=9)
    assert skipped.metrics() == {} and (skipped.trained_on, skipped.heldout) == (0, 0)


def test_the_simulator_reads_back_what_the_report_wrote() -> None:
    figures = CheckpointFigures.of(report().metrics())
    assert figures == CheckpointFigures(24, {"inhuman_user": 4, "stale_version": 2}, floors_only=False)
    assert CheckpointFigures.of({"floors_only": 1.0, "candidate": "c"}).floors_only


def test_the_trainer_status_keeps_its_shape() -> None:
    status = report().status()
    assert status == {
        "version": "v2",
        "state": "live",
        "parent_version": "v1",
        "episodes": 30,
        "dropped": {"inhuman_user": 4, "stale_version": 2},
        "cursor": 41,
        "metrics": report().metrics(),
        "gate": {"passed": True, "reason": "", "figures": {}},
    }


def test_the_show_policys_figures_travel_in_the_checkpoint_and_back() -> None:
    from core.show_policy import Logistic, ShowPolicy

    policy = ShowPolicy(
        filter=Logistic(bias=0.0, weights={"confidence": 1.0}),
        threshold=0.2,
        trigger=Logistic(bias=0.0, weights={}),
        trigger_threshold=0.05,
    )
    with_policy = report()
    with_policy.show_policy = ShowPolicyReport(
        policy, True, 900, 600, 3.0, 2.5, 0.1, 0.05, shown_share=0.6, calls_saved=0.2
    ).judged(2.0, 2.2, 0.04, 0.06, 0.5, True)
    figures = with_policy.metrics()
    assert {k: v for k, v in figures.items() if k.startswith("show_")} == {
        "show_policy_changed": 1.0,
        "show_policy_refused": 0.0,
        "show_evidence": 900.0,
        "show_evidence_shown": 600.0,
        "show_kept_chars": 3.0,
        "show_kept_chars_current": 2.5,
        "show_reward": 0.1,
        "show_reward_current": 0.05,
        "show_shown_share": 0.6,
        "show_calls_saved": 0.2,
        "show_heldout_kept_chars_before": 2.0,
        "show_heldout_kept_chars_after": 2.2,
        "show_heldout_reward_before": 0.04,
        "show_heldout_reward_after": 0.06,
        "show_threshold": 0.2,
        "show_trigger_threshold": 0.05,
    }
    read = CheckpointFigures.of(figures)
    assert (read.show_threshold, read.show_trigger_threshold, read.show_calls_saved) == (0.2, 0.05, 0.2)
    assert with_policy.show_policy.gate_figures()["show_policy_passed"] == 1.0
    assert CheckpointFigures.of({}).show_threshold is None
