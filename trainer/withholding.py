"""The learned confidence floors: which completions serving does not show, fitted to outcomes.

Most suggestions a weak model makes are dismissed, and each dismissed one costs its reader a
glance; Cursor's Tab RL showed fewer suggestions and had more of them taken. Serving withholds a
version's completions less sure than the floor of the place where the cursor stood
(core/confidence.py: start of a line, in a word, after a symbol): they become abstentions. Each
cycle the trainer fits the floors in hindsight. Unlike the cut (trainer/stopping.py) this needs no
guess at what a user would have done with another text: under a set of floors, each shown episode
less sure than its place's floor becomes an abstention (`rewards.abstained`, no characters kept)
and every other one keeps what it got.

As for the cut, the characters kept per request (ARC) come first: new floors may replace the
current ones only when a paired non-inferiority test (one-sided 95%) says they keep at least
(1 − chars_tolerance) of the current's characters; of those, the best mean reward wins (it counts
the dismissals a floor spares against the acceptances it costs).

Two things keep one cycle's luck from setting the floors. The evidence is not one cycle's episodes
but the last `history` the trainer has seen (a file in its directory): a step that cost a few
accepted suggestions in a hundred looks free in a small sample. And a floor moves one step of
FLOORS a cycle, down as well as up (up: to the next floor that withholds anything more). Episodes
a floor withheld carry no tokens and no outcome, so what lies below the current floor is known
only from episodes served before it rose.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from core.atomic import write_file_atomic
from core.confidence import PLACES, confidence
from core.config import RewardConfig
from core.rewards import kept_characters
from core.wire import Episode
from trainer.report import FloorReport, Floors
from trainer.stopping import Estimate, lower_bound

log = logging.getLogger("flywheel.trainer")

EVIDENCE_FILE = "floor_evidence.json"

# Candidate floors of each place (mean log-prob of the leading tokens at the serving
# temperature), in the order a floor steps through them; None shows everything, 0 nearly nothing.
FLOORS: tuple[float | None, ...] = (
    None,
    -6.0,
    -5.0,
    -4.5,
    -4.0,
    -3.5,
    -3.0,
    -2.5,
    -2.0,
    -1.5,
    -1.0,
    -0.5,
    0.0,
)


@dataclass(frozen=True)
class Evidence:
    """One episode as the floors' fit sees it."""

    completion_id: str
    place: str
    # None: nothing was shown (the policy abstained, or a floor or cut withheld it).
    confidence: float | None
    reward: float
    kept_chars: float


def evidence_of(episodes: Sequence[Episode], rewards: RewardConfig) -> list[Evidence]:
    return [
        Evidence(
            e.completion_id,
            e.place,
            confidence(e.token_logprobs) if e.text and e.completion_ids else None,
            e.reward,
            kept_characters(e.outcome, e.reward, e.text, rewards),
        )
        for e in episodes
    ]


def load_evidence(trainer_dir: Path) -> list[Evidence]:
    path = trainer_dir / EVIDENCE_FILE
    return [Evidence(**row) for row in json.loads(path.read_text())] if path.is_file() else []


def save_evidence(trainer_dir: Path, evidence: Sequence[Evidence]) -> None:
    write_file_atomic(trainer_dir / EVIDENCE_FILE, json.dumps([asdict(e) for e in evidence]).encode())


class _Row(Protocol):
    @property
    def completion_id(self) -> str: ...


Row = TypeVar("Row", bound=_Row)


def extend_evidence(old: Sequence[Row], new: Sequence[Row], history: int) -> list[Row]:
    """The newest `history` of old + new; an episode seen again (a cycle run twice after a crash)
    counts once. Any rows with a completion id: the show policy's evidence is kept the same way."""
    seen = {e.completion_id for e in new}
    kept = [e for e in old if e.completion_id not in seen] + list(new)
    return kept[len(kept) - history :] if len(kept) > history else kept


@dataclass(frozen=True)
class FloorFit:
    min_confidence: Floors
    chosen: Estimate
    current: Estimate
    # Share of the evidence's shown episodes the chosen floors would have withheld.
    withheld_share: float
    evidence: int


class FloorHindsight:
    """Episodes scored in hindsight under any floors."""

    def __init__(self, evidence: Sequence[Evidence]) -> None:
        shown = [e for e in evidence if e.confidence is not None]
        self.size = len(evidence)
        self.shown = len(shown)
        self._silent_reward = sum(e.reward for e in evidence if e.confidence is None)
        self._place = np.array([e.place for e in shown], dtype=object)
        self._confidence = np.array([e.confidence for e in shown], dtype=float)
        self._reward = np.array([e.reward for e in shown], dtype=float)
        self._kept = np.array([e.kept_chars for e in shown], dtype=float)

    def shows(self, floors: Floors) -> np.ndarray:
        """Which shown episodes `floors` would still show."""
        mask = np.ones(self.shown, dtype=bool)
        for place, floor in floors.items():
            mask &= ~((self._place == place) & (self._confidence < floor))
        return mask

    def estimate(self, floors: Floors) -> Estimate:
        if not self.size:
            return Estimate(0.0, 0.0)
        mask = self.shows(floors)
        return Estimate(
            (self._silent_reward + self._reward[mask].sum()) / self.size, self._kept[mask].sum() / self.size
        )

    def kept_chars_bound(self, floors: Floors, reference: Floors) -> float:
        """One-sided 95% lower bound on the mean per-request difference in characters kept,
        `floors` minus `reference`, paired over the same episodes (silent ones differ by 0)."""
        diffs = np.zeros(self.size)
        diffs[: self.shown] = self._kept * (self.shows(floors).astype(float) - self.shows(reference))
        return lower_bound(diffs)

    def fit(self, current: Floors, chars_tolerance: float) -> Floors:
        """Of the floors one step below, at or one step above the current, place by place, those
        with the best reward that surely keep (1 − chars_tolerance) of the current's characters;
        on a tie the current stay, else those that show most."""
        places = [p for p in PLACES if (self._place == p).any()]
        margin = -chars_tolerance * self.estimate(current).kept_chars - 1e-9
        best: tuple[float, bool, int, Floors] | None = None
        steps = [_steps(current.get(p), self._confidence[self._place == p]) for p in places]
        for choice in itertools.product(*steps):
            floors = {
                p: f
                for p, f in {**current, **dict(zip(places, choice, strict=True))}.items()
                if f is not None
            }
            is_current = floors == current
            if not is_current and self.kept_chars_bound(floors, current) < margin:
                continue
            rank = (round(self.estimate(floors).reward, 12), is_current, int(self.shows(floors).sum()))
            if best is None or rank > best[:3]:
                best = (*rank, floors)
        assert best is not None  # the current floors are always eligible
        return best[3]


def _steps(floor: float | None, seen: np.ndarray) -> list[float | None]:
    """`floor`, the next of FLOORS below it, and the next above it that would withhold more of
    the `seen` confidences (a step over an empty band would change nothing and stop the climb)."""
    key = -math.inf if floor is None else floor
    below = [f for f in FLOORS if (-math.inf if f is None else f) < key]
    above = [f for f in FLOORS if f is not None and f > key and ((seen >= key) & (seen < f)).any()]
    return [*below[-1:], floor, *above[:1]]


def fit_min_confidence(
    evidence: Sequence[Evidence],
    current: Floors,
    min_shown: int = 800,
    chars_tolerance: float = 0.02,
) -> FloorFit:
    """The floors for the next version from the evidence; `current` are the live one's. With
    fewer than `min_shown` shown episodes the current stay."""
    scored = FloorHindsight(evidence)
    chosen = dict(current) if scored.shown < min_shown else scored.fit(current, chars_tolerance)
    withheld = 1.0 - scored.shows(chosen).mean() if scored.shown else 0.0
    return FloorFit(chosen, scored.estimate(chosen), scored.estimate(current), float(withheld), scored.size)


def fit_floors(
    trainer_dir: Path,
    train: Sequence[Episode],
    heldout: Sequence[Episode],
    current: Floors,
    rewards: RewardConfig,
    *,
    history: int,
    min_shown: int,
) -> FloorReport:
    """A cycle's candidate floors: this cycle's episodes join the evidence in `trainer_dir`, and
    the floors are fitted on it; with held-out episodes, what they would gain there."""
    evidence = extend_evidence(load_evidence(trainer_dir), evidence_of(train, rewards), history)
    save_evidence(trainer_dir, evidence)
    fit = fit_min_confidence(evidence, current, min_shown)
    log.info(
        "confidence floors %s -> %s: would have withheld %.0f%% of the last %d episodes' suggestions",
        current or "none",
        fit.min_confidence or "none",
        100 * fit.withheld_share,
        fit.evidence,
    )
    report = FloorReport(fit.min_confidence, fit.withheld_share, fit.chosen.kept_chars)
    if not heldout:
        return report
    held = FloorHindsight(evidence_of(heldout, rewards))
    before, after = held.estimate(current), held.estimate(fit.min_confidence)
    return replace(
        report,
        heldout_kept_chars_gain=after.kept_chars - before.kept_chars,
        heldout_reward_gain=after.reward - before.reward,
    )
