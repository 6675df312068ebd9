"""What a trainer cycle did, typed: the report run_cycle returns and its readers read by attribute.

Each phase of a cycle (trainer/cycle.py) fills one part. The flat figures a checkpoint carries
(`CheckpointMetadata.metrics`, shown on the dashboard) and the trainer's status the backend stores
are made from the report here, and `CheckpointFigures` reads a checkpoint's figures back (the
simulator's per-cycle row): the names of those figures are written down in this module only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.confidence import FLOOR_METRIC_PREFIX
from core.show_policy import ShowPolicy
from core.wire import GateResult

# Checkpoint figures naming the episodes a candidate was trained on: seq_after < seq <= seq_through.
SEQ_AFTER, SEQ_THROUGH = "seq_after", "seq_through"
# The candidate directory a checkpoint was uploaded from: a restarted trainer finds its upload by it.
CANDIDATE = "candidate"
# Set on a checkpoint that carries new confidence floors on its parent's weights, and no update.
FLOORS_ONLY = "floors_only"
TRAINED_ON, HELDOUT, DROPPED = "episodes", "heldout", "dropped"

Floors = dict[str, float]


@dataclass(frozen=True)
class UpdateReport:
    """The policy update: which objective, on how many episodes, and its own figures."""

    objective: str
    trained_on: int
    # Kept by the guards but held out for the eval gate.
    heldout: int
    # As the objective reports them (pg: loss, kl, kl_parent_max, kl_stopped, mean_reward, …;
    # kto and dpo: TRL's train figures): they differ by objective, so they stay a mapping.
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CutReport:
    """The candidate's cut (trainer/stopping.py): the live one's, unless fitted this cycle."""

    stop_logprob: float | None
    # Characters kept per episode under the chosen cut and under none (ARC per request), on the
    # training episodes; None when the cut was not fitted (trainer.learn_stop off).
    kept_chars: float | None = None
    kept_chars_uncut: float | None = None
    # Chosen minus live, on the held-out episodes; None without any.
    heldout_kept_chars_gain: float | None = None
    heldout_reward_gain: float | None = None

    def metrics(self) -> dict[str, float]:
        figures = {
            "stop_kept_chars": self.kept_chars,
            "stop_kept_chars_uncut": self.kept_chars_uncut,
            "stop_heldout_kept_chars_gain": self.heldout_kept_chars_gain,
            "stop_heldout_reward_gain": self.heldout_reward_gain,
            "stop_logprob": self.stop_logprob,
        }
        return {name: value for name, value in figures.items() if value is not None}


@dataclass(frozen=True)
class FloorReport:
    """The candidate's confidence floors, fitted this cycle (trainer/withholding.py)."""

    min_confidence: Floors
    # Share of the evidence's shown suggestions the floors would have withheld, and the characters
    # kept per episode under them.
    withheld_share: float
    kept_chars: float
    # Fitted minus live floors, on the held-out episodes; None without any.
    heldout_kept_chars_gain: float | None = None
    heldout_reward_gain: float | None = None

    def metrics(self) -> dict[str, float]:
        figures = {
            "floor_withheld_share": self.withheld_share,
            "floor_kept_chars": self.kept_chars,
            **floor_metrics(self.min_confidence),
            "floor_heldout_kept_chars_gain": self.heldout_kept_chars_gain,
            "floor_heldout_reward_gain": self.heldout_reward_gain,
        }
        return {name: value for name, value in figures.items() if value is not None}


def floor_metrics(floors: Floors) -> dict[str, float]:
    """A version's floors as checkpoint figures (the dashboard shows them)."""
    return {FLOOR_METRIC_PREFIX + place: floor for place, floor in floors.items()}


# A version's learned show policy among its checkpoint's figures (the dashboard and the simulator
# read them): the filter's threshold and the trigger's (absent: the trigger never skips).
SHOW_THRESHOLD, SHOW_TRIGGER_THRESHOLD = "show_threshold", "show_trigger_threshold"
SHOW_CALLS_SAVED = "show_calls_saved"


@dataclass(frozen=True)
class ShowPolicyReport:
    """The candidate's learned show policy (trainer/show_policy_fit.py)."""

    # None: the floors decide (no evidence enough yet, or no policy ever beat them).
    policy: ShowPolicy | None
    # Fitted this cycle; False: the live version's stays.
    changed: bool
    # Episodes with a recorded decision in the evidence, and how many of them were shown.
    evidence: int
    shown: int
    # Per request on the evidence (weighted by 1/propensity), under the candidate's rule and the
    # live one's: characters kept (ARC per request) and mean reward.
    kept_chars: float
    kept_chars_current: float
    reward: float
    reward_current: float
    # Weighted shares of the called requests the filter shows and of the calls its trigger skips.
    shown_share: float | None = None
    calls_saved: float | None = None
    # On the held-out episodes, the live rule's and the candidate's figures, and the one-sided 95%
    # upper bound on the difference in characters kept; None when not judged.
    heldout_kept_chars_before: float | None = None
    heldout_kept_chars_after: float | None = None
    heldout_reward_before: float | None = None
    heldout_reward_after: float | None = None
    heldout_kept_chars_upper: float | None = None
    # Whether the held-out episodes let it ship (trainer/show_policy_fit.py HeldoutCheck.passed).
    heldout_passed: bool | None = None
    # The held-out episodes said it loses characters: the live version's rule ships instead.
    refused: bool = False

    def judged(
        self,
        kept_before: float,
        kept_after: float,
        reward_before: float,
        reward_after: float,
        upper: float,
        passed: bool,
    ) -> ShowPolicyReport:
        return replace(
            self,
            heldout_kept_chars_before=kept_before,
            heldout_kept_chars_after=kept_after,
            heldout_reward_before=reward_before,
            heldout_reward_after=reward_after,
            heldout_kept_chars_upper=upper,
            heldout_passed=passed,
        )

    def gate_figures(self) -> dict[str, float]:
        """What the eval gate records of its check of the policy on the held-out episodes."""
        if self.heldout_kept_chars_upper is None:
            return {}
        return {
            "show_policy_heldout_kept_chars_before": self.heldout_kept_chars_before or 0.0,
            "show_policy_heldout_kept_chars_after": self.heldout_kept_chars_after or 0.0,
            "show_policy_heldout_kept_chars_upper": self.heldout_kept_chars_upper,
            "show_policy_passed": float(bool(self.heldout_passed)),
        }

    def metrics(self) -> dict[str, float]:
        figures = {
            "show_policy_changed": float(self.changed),
            "show_policy_refused": float(self.refused),
            "show_evidence": float(self.evidence),
            "show_evidence_shown": float(self.shown),
            "show_kept_chars": self.kept_chars,
            "show_kept_chars_current": self.kept_chars_current,
            "show_reward": self.reward,
            "show_reward_current": self.reward_current,
            "show_shown_share": self.shown_share,
            SHOW_CALLS_SAVED: self.calls_saved,
            "show_heldout_kept_chars_before": self.heldout_kept_chars_before,
            "show_heldout_kept_chars_after": self.heldout_kept_chars_after,
            "show_heldout_reward_before": self.heldout_reward_before,
            "show_heldout_reward_after": self.heldout_reward_after,
            **show_policy_metrics(self.policy),
        }
        return {name: value for name, value in figures.items() if value is not None}


def show_policy_metrics(policy: ShowPolicy | None) -> dict[str, float]:
    """A version's show policy as checkpoint figures; none without one."""
    if policy is None:
        return {}
    figures = {SHOW_THRESHOLD: policy.threshold}
    if policy.trigger is not None and policy.trigger_threshold is not None:
        figures[SHOW_TRIGGER_THRESHOLD] = policy.trigger_threshold
    return figures


@dataclass
class CycleReport:
    """One cycle, phase by phase. A part is None where its phase did not run."""

    # The live version the cycle started from, and the episodes it pulled: how many the guards
    # kept (trained on or held out), dropped by reason, and the cursor past them.
    parent_version: str
    episodes: int
    dropped: Counter[str]
    cursor: int
    # None: every new episode was dropped, and nothing was trained.
    update: UpdateReport | None = None
    cut: CutReport | None = None
    floors: FloorReport | None = None
    show_policy: ShowPolicyReport | None = None
    gate: GateResult | None = None
    duration_s: float = 0.0
    # The version the backend gave the uploaded candidate, and the state it put it in (live,
    # canary, gated, rejected, …).
    version: str | None = None
    state: str | None = None
    # When the gate refused the update but the floors or the show policy moved: the version that
    # carries them on the live weights, and its state.
    floors_version: str | None = None
    floors_state: str | None = None

    @property
    def trained_on(self) -> int:
        return self.update.trained_on if self.update else 0

    @property
    def heldout(self) -> int:
        return self.update.heldout if self.update else 0

    def metrics(self) -> dict[str, float]:
        """The flat figures a checkpoint carries; none when nothing was trained."""
        if self.update is None:
            return {}
        figures = {**self.update.figures, TRAINED_ON: float(self.trained_on), HELDOUT: float(self.heldout)}
        figures.update({f"{DROPPED}_{reason}": float(n) for reason, n in self.dropped.items()})
        figures[DROPPED] = float(sum(self.dropped.values()))
        if self.cut is not None:
            figures.update(self.cut.metrics())
        if self.floors is not None:
            figures.update(self.floors.metrics())
        if self.show_policy is not None:
            figures.update(self.show_policy.metrics())
        figures["duration_s"] = self.duration_s
        return figures

    def status(self) -> dict[str, Any]:
        """The cycle as the trainer's status reports it to the backend (`TrainerReport.cycle`)."""
        return {
            "version": self.version,
            "state": self.state,
            "parent_version": self.parent_version,
            "episodes": self.episodes,
            "dropped": dict(self.dropped),
            "cursor": self.cursor,
            "metrics": self.metrics(),
            "gate": self.gate.model_dump() if self.gate else None,
        }


@dataclass(frozen=True)
class CheckpointFigures:
    """What a checkpoint's figures (`CheckpointInfo.metrics`) say of the cycle that made it."""

    trained_on: int
    dropped: dict[str, int]
    floors_only: bool
    # The version's learned show policy: its thresholds, and the share of calls its trigger was
    # estimated to save (None: no policy, no trigger, or not fitted that cycle).
    show_threshold: float | None = None
    show_trigger_threshold: float | None = None
    show_calls_saved: float | None = None

    @classmethod
    def of(cls, metrics: Mapping[str, Any]) -> CheckpointFigures:
        prefix = f"{DROPPED}_"
        return cls(
            trained_on=int(metrics.get(TRAINED_ON, 0)),
            dropped={k.removeprefix(prefix): int(v) for k, v in metrics.items() if k.startswith(prefix)},
            floors_only=bool(metrics.get(FLOORS_ONLY)),
            show_threshold=metrics.get(SHOW_THRESHOLD),
            show_trigger_threshold=metrics.get(SHOW_TRIGGER_THRESHOLD),
            show_calls_saved=metrics.get(SHOW_CALLS_SAVED),
        )
