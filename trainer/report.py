"""What a trainer cycle did, typed: the report run_cycle returns and its readers read by attribute.

Each phase of a cycle (trainer/cycle.py) fills one part. The flat figures a checkpoint carries
(`CheckpointMetadata.metrics`, shown on the dashboard) and the trainer's status the backend stores
are made from the report here, and `CheckpointFigures` reads a checkpoint's figures back (the
simulator's per-cycle row): the names of those figures are written down in this module only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.confidence import FLOOR_METRIC_PREFIX
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
    gate: GateResult | None = None
    duration_s: float = 0.0
    # The version the backend gave the uploaded candidate, and the state it put it in (live,
    # canary, gated, rejected, …).
    version: str | None = None
    state: str | None = None
    # When the gate refused the update but the floors moved: the version that carries the new
    # floors on the live weights, and its state.
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

    @classmethod
    def of(cls, metrics: Mapping[str, Any]) -> CheckpointFigures:
        prefix = f"{DROPPED}_"
        return cls(
            trained_on=int(metrics.get(TRAINED_ON, 0)),
            dropped={k.removeprefix(prefix): int(v) for k, v in metrics.items() if k.startswith(prefix)},
            floors_only=bool(metrics.get(FLOORS_ONLY)),
        )
