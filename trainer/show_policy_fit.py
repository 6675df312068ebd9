"""The learned show-or-abstain policy's fit (core/show_policy.py): a logistic filter and trigger
fitted each cycle on the outcomes of what serving showed, beside the confidence floors
(trainer/withholding.py) and in their spirit.

The filter estimates the chance a suggestion is accepted from what serving knew once the first
tokens were sampled (ServingDecision.features). It is fitted on the shown episodes, each weighted
by the inverse of the chance it had of being shown: under a learned policy, a suggestion below the
threshold is still shown with chance `explore`, and weighted by 1/explore it stands for the
withheld ones like it. Without that the fit would only ever see what the current threshold lets
through, and a threshold set too high could not come back down.

The threshold is chosen in hindsight exactly as the floors are: under a candidate threshold each
shown episode the new filter scores below it becomes an abstention (`rewards.abstained`, no
characters kept) and every other keeps its outcome, the shown ones weighted as above (a
Horvitz-Thompson estimate per request, so what exploration saw below the current rule counts for
all the requests it stands for). A threshold may replace the current rule (the live version's
policy, or its floors when it has none) only when the paired one-sided test of trainer/stopping.py
says it keeps at least (1 − chars_tolerance) of the current rule's characters per request; of those
the best mean reward wins, the current rule on a tie.

The trigger reads only what is known before the model is called and estimates the chance that the
new filter would show the suggestion, fitted over every called episode (the withheld ones too:
their features carry the model's confidence; one the model left empty had nothing to show). Its
threshold is the largest of a small grid at which skipping the call would, in hindsight, have cost
at most 1% of the characters kept from what the filter shows; none when no threshold saves 5% of
the calls.

The same tolerance holds out of sample: the gate's held-out episodes of the cycle judge a new
policy (filter and trigger together) against the live rule, and refuse it when they say it loses
characters, surely (a one-sided 95% bound below 0) or by its point estimate beyond chars_tolerance.
The hindsight choice is optimistic on the episodes it was chosen on: on `jinja2` a first policy
fitted on 201 shown episodes kept all their characters in sample and 16% fewer on the held-out
ones, where every other fit of the three pre-registered runs lost none.

The evidence is the last `trainer.show_policy_history` episodes with a recorded decision (a file in
the trainer's directory, like the floors'); no policy is fitted before it holds
`trainer.show_policy_min_shown` shown episodes of which MIN_ACCEPTED were accepted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.atomic import write_file_atomic
from core.confidence import PLACES
from core.config import RewardConfig
from core.rewards import kept_characters
from core.show_policy import FILTER_FEATURES, TRIGGER_FEATURES, Logistic, ShowPolicy
from core.wire import Episode
from trainer.report import Floors, ShowPolicyReport
from trainer.stopping import NON_INFERIORITY_Z, Estimate, lower_bound
from trainer.withholding import extend_evidence

log = logging.getLogger("flywheel.trainer")

EVIDENCE_FILE = "show_policy_evidence.json"

# Candidate thresholds of the filter's chance of acceptance, lowest (shows most) first. The low end
# is fine: where most suggestions are seldom taken, 0.02 already withheld a third of them and cost
# more than the test allows, and a policy that cannot take a small first step never starts.
THRESHOLDS: tuple[float, ...] = (
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.07,
    0.1,
    0.13,
    0.16,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.5,
)
# Beside them, the thresholds that would withhold these shares of the shown evidence: a filter sure
# of many suggestions withheld 43% of them at the lowest of the grid, a step too large to prove it
# kept 98% of the characters, while the floors step one band at a time.
WITHHELD_SHARES: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
# A new policy may lose at most this share of the live rule's characters kept, in its fit and on
# the held-out episodes.
CHARS_TOLERANCE = 0.02
# Candidate thresholds of the trigger's chance that the filter would show anything.
TRIGGER_THRESHOLDS: tuple[float, ...] = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2)
# A trigger may cost at most this share of the characters kept from what the filter shows...
TRIGGER_MAX_COST = 0.01
# ...and is shipped only when it saves at least this share of the model calls.
TRIGGER_MIN_SAVED = 0.05
# Accepted suggestions the evidence needs before a filter is fitted: with fewer, a logistic model
# of acceptance is a model of a handful of events.
MIN_ACCEPTED = 10
# Inverse L2 strength (scikit-learn's C) with the sample weights scaled to mean 1: the features are
# a dozen, the episodes thousands, so it only keeps a feature that never varied from a large weight.
REGULARISATION_C = 1.0


@dataclass(frozen=True)
class ShowEvidence:
    """One episode with a recorded serving decision, as the policy's fit sees it."""

    completion_id: str
    features: dict[str, float]
    called: bool
    # Shown, with its tokens: it has an outcome.
    shown: bool
    # The chance it had of being shown (ServingDecision.propensity), and of the model being called
    # at all (the trigger's exploration), which the trigger's fit weighs by.
    propensity: float
    call_chance: float
    reward: float
    kept_chars: float

    @property
    def accepted(self) -> bool:
        return self.kept_chars > 0


def evidence_of(
    episodes: Sequence[Episode], rewards: RewardConfig, serving: ShowPolicy | None
) -> list[ShowEvidence]:
    """The episodes that carry a decision (older ones carry none and are skipped). `serving` is the
    live version's policy, which served them: the decision records the chance of being shown, and
    the chance of being called is read back from its trigger."""
    out = []
    for e in episodes:
        d = e.decision
        if d is None:
            continue
        call_chance = 1.0
        if d.called and d.rule == "learned" and serving is not None:
            call_chance = max(serving.call_chance(d.features), d.propensity)
        out.append(
            ShowEvidence(
                e.completion_id,
                dict(d.features),
                d.called,
                d.shown and bool(e.text) and bool(e.completion_ids),
                d.propensity,
                call_chance,
                e.reward,
                kept_characters(e.outcome, e.reward, e.text, rewards),
            )
        )
    return out


def load_evidence(trainer_dir: Path) -> list[ShowEvidence]:
    path = trainer_dir / EVIDENCE_FILE
    return [ShowEvidence(**row) for row in json.loads(path.read_text())] if path.is_file() else []


def save_evidence(trainer_dir: Path, evidence: Sequence[ShowEvidence]) -> None:
    write_file_atomic(trainer_dir / EVIDENCE_FILE, json.dumps([asdict(e) for e in evidence]).encode())


# --- the current rule, as a function of the recorded features ---------------------------------

Rule = Callable[[Mapping[str, float]], bool]


def policy_rule(policy: ShowPolicy) -> Rule:
    """Whether `policy` would show a suggestion with these features, exploration aside."""
    return lambda f: policy.filter.probability(f) >= policy.threshold


def floors_rule(floors: Floors) -> Rule:
    """Whether `floors` would show it: its place is the one-hot place_* feature, its confidence the
    filter's `confidence`."""

    def shows(f: Mapping[str, float]) -> bool:
        place = next((p for p in PLACES if f.get(f"place_{p}")), None)
        floor = floors.get(place) if place else None
        return floor is None or "confidence" not in f or f["confidence"] >= floor

    return shows


def current_rule(policy: ShowPolicy | None, floors: Floors) -> Rule:
    return policy_rule(policy) if policy is not None else floors_rule(floors)


# --- hindsight ---------------------------------------------------------------------------------


def matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    values = [[f.get(n, 0.0) for n in names] for f in rows]
    return np.array(values, dtype=float).reshape(len(rows), len(names))


def probabilities(model: Logistic, x: np.ndarray, names: Sequence[str]) -> np.ndarray:
    z = model.bias + x @ np.array([model.weights.get(n, 0.0) for n in names])
    return 1.0 / (1.0 + np.exp(-z))


class ShowHindsight:
    """Evidence scored in hindsight under any show rule: per request, the shown episodes weighted by
    1/propensity (each stands for the requests like it that were not shown)."""

    def __init__(self, evidence: Sequence[ShowEvidence], abstained: float) -> None:
        shown = [e for e in evidence if e.shown]
        self.size = len(evidence)
        self.shown = len(shown)
        self.accepted = sum(e.accepted for e in shown)
        self.abstained = abstained
        self.features = [e.features for e in shown]
        self.x = matrix(self.features, FILTER_FEATURES)
        self.weight = np.array([1.0 / e.propensity for e in shown])
        self.gain = np.array([e.reward - abstained for e in shown])
        self.kept = np.array([e.kept_chars for e in shown])
        self.label = np.array([e.accepted for e in shown], dtype=int)

    def mask(self, rule: Rule) -> np.ndarray:
        return np.array([rule(f) for f in self.features], dtype=bool)

    def estimate(self, shows: np.ndarray) -> Estimate:
        if not self.size:
            return Estimate(self.abstained, 0.0)
        w = self.weight * shows
        return Estimate(self.abstained + float(w @ self.gain) / self.size, float(w @ self.kept) / self.size)

    def kept_chars_diffs(self, shows: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Per request, the characters kept under `shows` minus under `reference` (0 for requests
        nothing was shown for: their part is carried by the weights of the shown ones)."""
        diffs = np.zeros(max(self.size, 1))
        diffs[: self.shown] = self.weight * self.kept * (shows.astype(float) - reference)
        return diffs[: self.size]

    def kept_chars_bound(self, shows: np.ndarray, reference: np.ndarray) -> float:
        """One-sided 95% lower bound on the mean per-request difference in characters kept."""
        return lower_bound(self.kept_chars_diffs(shows, reference))


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, names: Sequence[str]) -> Logistic | None:
    """A weighted L2 logistic regression as a core Logistic; None when the labels never differ."""
    if len(set(y.tolist())) < 2:
        return None
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=REGULARISATION_C, max_iter=2000)
    model.fit(x, y, sample_weight=weight / weight.mean())
    return Logistic(
        bias=float(model.intercept_[0]),
        weights={n: float(c) for n, c in zip(names, model.coef_[0], strict=True)},
    )


def filter_shows_called(
    called: Sequence[ShowEvidence], x: np.ndarray, filter_: Logistic, threshold: float
) -> np.ndarray:
    """Whether the filter would show each called request's completion; one the model left empty
    (no first tokens, so no confidence among its features) has nothing to show."""
    has_tokens = np.array([e.shown or "confidence" in e.features for e in called], dtype=bool)
    return has_tokens & (probabilities(filter_, x, FILTER_FEATURES) >= threshold)


@dataclass(frozen=True)
class TriggerFit:
    trigger: Logistic | None
    threshold: float | None
    # Share of the calls it would skip, and of the filter-shown characters skipping would cost.
    calls_saved: float
    cost: float


def fit_trigger(
    evidence: Sequence[ShowEvidence], scored: ShowHindsight, filter_: Logistic, threshold: float
) -> TriggerFit:
    """The trigger for a filter and threshold: fitted to say whether the filter would show, over
    every called episode with the filter's features, each weighted by 1/chance of being called."""
    called = [e for e in evidence if e.called]
    if not called:
        return TriggerFit(None, None, 0.0, 0.0)
    x = matrix([e.features for e in called], FILTER_FEATURES)
    label = filter_shows_called(called, x, filter_, threshold).astype(int)
    call_weight = np.array([1.0 / e.call_chance for e in called])
    trigger_x = x[:, : len(TRIGGER_FEATURES)]
    trigger = fit_logistic(trigger_x, label, call_weight, TRIGGER_FEATURES)
    if trigger is None:
        return TriggerFit(None, None, 0.0, 0.0)
    p_call = probabilities(trigger, trigger_x, TRIGGER_FEATURES)
    # What the filter shows, and what skipping its calls would lose of it.
    filter_shows = probabilities(filter_, scored.x, FILTER_FEATURES) >= threshold
    p_shown = probabilities(trigger, scored.x[:, : len(TRIGGER_FEATURES)], TRIGGER_FEATURES)
    kept = scored.weight * scored.kept * filter_shows
    for candidate in sorted(TRIGGER_THRESHOLDS, reverse=True):
        cost = float(kept @ (p_shown < candidate)) / kept.sum() if kept.sum() > 0 else 0.0
        if cost <= TRIGGER_MAX_COST:
            saved = float(call_weight @ (p_call < candidate)) / call_weight.sum()
            if saved < TRIGGER_MIN_SAVED:
                return TriggerFit(None, None, saved, cost)
            return TriggerFit(trigger, candidate, saved, cost)
    return TriggerFit(None, None, 0.0, 0.0)


@dataclass(frozen=True)
class PolicyFit:
    policy: ShowPolicy | None
    # Fitted this cycle (False: the current stays, for want of evidence or of a better threshold).
    changed: bool
    chosen: Estimate
    current: Estimate
    # Weighted share of the called requests the chosen filter shows, and of the calls its trigger skips.
    shown_share: float | None
    calls_saved: float | None


def fit_show_policy(
    evidence: Sequence[ShowEvidence],
    current: ShowPolicy | None,
    floors: Floors,
    rewards: RewardConfig,
    *,
    explore: float,
    min_shown: int = 200,
    chars_tolerance: float = CHARS_TOLERANCE,
) -> PolicyFit:
    """The next version's policy from the evidence; `current` and `floors` are the live version's
    (its floors decide where it has no policy)."""
    scored = ShowHindsight(evidence, rewards.abstained)
    reference = scored.mask(current_rule(current, floors))
    before = scored.estimate(reference)
    kept_as_is = PolicyFit(current, False, before, before, None, None)
    if scored.shown < min_shown or scored.accepted < MIN_ACCEPTED:
        return kept_as_is
    filter_ = fit_logistic(scored.x, scored.label, scored.weight, FILTER_FEATURES)
    if filter_ is None:
        return kept_as_is
    p = probabilities(filter_, scored.x, FILTER_FEATURES)
    margin = -chars_tolerance * before.kept_chars - 1e-9
    best: tuple[float, float] | None = None
    steps = {float(f"{q:.3g}") for q in np.quantile(p, WITHHELD_SHARES)}
    for threshold in sorted(set(THRESHOLDS) | {q for q in steps if 0 < q < 1}):
        shows = p >= threshold
        if scored.kept_chars_bound(shows, reference) < margin:
            continue
        reward = round(scored.estimate(shows).reward, 12)
        # On a tie the lowest threshold: it shows most.
        if best is None or reward > best[0]:
            best = (reward, threshold)
    if best is None or best[0] <= round(before.reward, 12):
        return kept_as_is
    threshold = best[1]
    trigger = fit_trigger(evidence, scored, filter_, threshold)
    policy = ShowPolicy(
        filter=filter_,
        threshold=threshold,
        trigger=trigger.trigger,
        trigger_threshold=trigger.threshold,
        explore=explore,
    )
    called = [e for e in evidence if e.called]
    shown_share = None
    if called:
        call_weight = np.array([1.0 / e.call_chance for e in called])
        x = matrix([e.features for e in called], FILTER_FEATURES)
        shown_share = (
            float(call_weight @ filter_shows_called(called, x, filter_, threshold)) / call_weight.sum()
        )
    return PolicyFit(policy, True, scored.estimate(p >= threshold), before, shown_share, trigger.calls_saved)


@dataclass(frozen=True)
class HeldoutCheck:
    before: Estimate
    after: Estimate
    # One-sided 95% upper bound on the per-request difference in characters kept, after − before:
    # below 0, the held-out episodes say the policy surely loses characters.
    kept_chars_upper: float
    # The share of the live rule's characters the policy may lose, as in its fit.
    chars_tolerance: float = CHARS_TOLERANCE

    @property
    def passed(self) -> bool:
        kept_enough = self.after.kept_chars >= (1 - self.chars_tolerance) * self.before.kept_chars - 1e-12
        return self.kept_chars_upper >= 0 and kept_enough


def judge_on_heldout(
    heldout: Sequence[ShowEvidence],
    policy: ShowPolicy,
    current: ShowPolicy | None,
    floors: Floors,
    rewards: RewardConfig,
) -> HeldoutCheck:
    """The candidate policy (filter and trigger) against the current rule on held-out episodes, by
    the same hindsight estimate as its fit."""
    scored = ShowHindsight(heldout, rewards.abstained)

    def candidate(f: Mapping[str, float]) -> bool:
        skipped = (
            policy.trigger is not None
            and policy.trigger_threshold is not None
            and policy.trigger.probability(f) < policy.trigger_threshold
        )
        return not skipped and policy.filter.probability(f) >= policy.threshold

    shows, reference = scored.mask(candidate), scored.mask(current_rule(current, floors))
    diffs = scored.kept_chars_diffs(shows, reference)
    upper = 0.0
    if len(diffs) >= 2:
        upper = float(diffs.mean() + NON_INFERIORITY_Z * diffs.std(ddof=1) / np.sqrt(len(diffs)))
    return HeldoutCheck(scored.estimate(reference), scored.estimate(shows), upper)


def fit_policy(
    trainer_dir: Path,
    train: Sequence[Episode],
    heldout: Sequence[Episode],
    current: ShowPolicy | None,
    floors: Floors,
    rewards: RewardConfig,
    *,
    explore: float,
    history: int,
    min_shown: int,
) -> ShowPolicyReport:
    """A cycle's candidate policy: this cycle's episodes join the evidence in `trainer_dir`, the
    policy is fitted on it, and judged on the held-out episodes when there are any."""
    evidence = extend_evidence(load_evidence(trainer_dir), evidence_of(train, rewards, current), history)
    save_evidence(trainer_dir, evidence)
    fit = fit_show_policy(evidence, current, floors, rewards, explore=explore, min_shown=min_shown)
    scored_shown = sum(e.shown for e in evidence)
    log.info(
        "show policy: %s on %d episodes (%d shown)%s",
        "fitted" if fit.changed else "kept",
        len(evidence),
        scored_shown,
        f", threshold {fit.policy.threshold}, trigger {fit.policy.trigger_threshold}" if fit.policy else "",
    )
    report = ShowPolicyReport(
        policy=fit.policy,
        changed=fit.changed,
        evidence=len(evidence),
        shown=scored_shown,
        kept_chars=fit.chosen.kept_chars,
        kept_chars_current=fit.current.kept_chars,
        reward=fit.chosen.reward,
        reward_current=fit.current.reward,
        shown_share=fit.shown_share,
        calls_saved=fit.calls_saved,
    )
    held = evidence_of(heldout, rewards, current)
    if not fit.changed or fit.policy is None or not held:
        return report
    check = judge_on_heldout(held, fit.policy, current, floors, rewards)
    return report.judged(
        check.before.kept_chars,
        check.after.kept_chars,
        check.before.reward,
        check.after.reward,
        check.kept_chars_upper,
        check.passed,
    )
