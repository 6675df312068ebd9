"""The canary's sequential test: is the candidate better, or significantly worse, than live?

Users are routed to the canary as people (backend/routing.py), so people are the unit: each
person's mean of a metric over their episodes in an arm is one observation, and the test compares
the people under the candidate with the people under live. One heavy user counts once, however many
requests they make, and the test's variance is the spread between people, which is what a verdict
on "the team is better off" has to beat (episodes of one person are not independent of each other).

Each metric (mean reward, accept rate, ARC per request) is compared with a two-sample mixture
sequential probability ratio test (mSPRT; Johari, Pekelis & Walsh, "Always valid inference", 2017).
With the difference of the arms' means of person means d, its variance V = s_a²/n_a + s_b²/n_b
(n: people, s²: variance between their means) and a normal mixture N(0, τ²) over the true
difference, the likelihood ratio is

    Λ = sqrt(V / (V + τ²)) · exp(τ² d² / (2 V (V + τ²)))

and rejecting "no difference" once Λ ≥ 1/α keeps the error below α however often it is looked at,
so the backend may test after every finalized episode. τ is set in units of the pooled standard
deviation (`effect_size`), so one setting fits metrics of different scales. The normal
approximation wants a handful of people per arm: nothing is tested before `min_people` are on each
side (until then only the horizon, `max_episodes`, decides, and says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from backend.store import ArmFigures, Moments
from core.config import CanaryConfig

METRICS = ("reward", "accepted", "arc")


@dataclass(frozen=True)
class Comparison:
    metric: str
    difference: float  # candidate minus reference
    likelihood_ratio: float
    significant: bool


@dataclass(frozen=True)
class Verdict:
    action: str  # promote, roll_back, wait
    reason: str
    figures: dict[str, Any]


def msprt(
    metric: str, candidate: Moments, reference: Moments, effect_size: float, alpha: float
) -> Comparison | None:
    """None while either arm has fewer than two observations."""
    if candidate.n < 2 or reference.n < 2:
        return None
    assert candidate.mean is not None and reference.mean is not None
    d = candidate.mean - reference.mean
    pooled = ((candidate.n - 1) * candidate.variance + (reference.n - 1) * reference.variance) / (
        candidate.n + reference.n - 2
    )
    # A floor keeps two identical constant arms from dividing by zero; it changes nothing else.
    pooled = max(pooled, 1e-12)
    v = max(candidate.variance / candidate.n + reference.variance / reference.n, pooled * 1e-6)
    tau2 = effect_size**2 * pooled
    exponent = tau2 * d * d / (2 * v * (v + tau2))
    ratio = math.sqrt(v / (v + tau2)) * math.exp(min(exponent, 700.0))
    return Comparison(metric, d, ratio, ratio >= 1 / alpha)


def compare(candidate: ArmFigures, reference: ArmFigures, config: CanaryConfig) -> dict[str, Comparison]:
    results = {}
    for metric in METRICS:
        arms = getattr(candidate.people, metric), getattr(reference.people, metric)
        result = msprt(metric, *arms, config.effect_size, config.alpha)
        if result is not None:
            results[metric] = result
    return results


def figures(candidate: ArmFigures, reference: ArmFigures, results: dict[str, Comparison]) -> dict[str, Any]:
    return {
        "candidate": candidate.summary(),
        "reference": {"version": reference.version, **reference.summary()},
        "tests": {
            m: {"difference": c.difference, "likelihood_ratio": min(c.likelihood_ratio, 1e12)}
            for m, c in results.items()
        },
    }


def enough_people(a: ArmFigures, b: ArmFigures, config: CanaryConfig) -> bool:
    return min(a.people.reward.n, b.people.reward.n) >= config.min_people


def judge_canary(candidate: ArmFigures, live: ArmFigures, config: CanaryConfig) -> Verdict:
    """Roll back when any metric is significantly worse; promote when reward is significantly better,
    or when both arms reach the horizon with nothing significantly worse; else wait. With fewer than
    `min_people` on a side nothing is tested, and the horizon alone decides (as with share 0, the
    team is too small for a canary to tell; the reason says so)."""
    if min(candidate.reward.n, live.reward.n) < config.min_episodes:
        return Verdict("wait", "not enough episodes yet", figures(candidate, live, {}))
    tested = enough_people(candidate, live, config)
    results = compare(candidate, live, config) if tested else {}
    shown = figures(candidate, live, results)
    worse = [c for c in results.values() if c.significant and c.difference < 0]
    if worse:
        names = ", ".join(f"{c.metric} {c.difference:+.3f} (Λ={c.likelihood_ratio:.3g})" for c in worse)
        return Verdict("roll_back", f"significantly worse per person than {live.version}: {names}", shown)
    reward = results.get("reward")
    if reward is not None and reward.significant and reward.difference > 0:
        return Verdict(
            "promote",
            f"mean reward per person significantly above {live.version}: {reward.difference:+.3f}"
            f" (Λ={reward.likelihood_ratio:.3g})",
            shown,
        )
    people = f"{candidate.people.reward.n} and {live.people.reward.n} people"
    if min(candidate.reward.n, live.reward.n) >= config.max_episodes:
        untested = "" if tested else f" (untested: {people}, fewer than {config.min_people} on a side)"
        return Verdict(
            "promote",
            f"no metric significantly worse than {live.version} after {config.max_episodes}{untested}",
            shown,
        )
    return Verdict(
        "wait", "no significant difference yet" if tested else f"too few people yet: {people}", shown
    )


def judge_live(live: ArmFigures, predecessor: ArmFigures, config: CanaryConfig) -> Verdict:
    """After promotion: roll back when any metric falls significantly below the predecessor's."""
    if min(live.reward.n, predecessor.reward.n) < config.min_episodes or not enough_people(
        live, predecessor, config
    ):
        return Verdict("wait", "not enough episodes or people yet", figures(live, predecessor, {}))
    results = compare(live, predecessor, config)
    worse = [c for c in results.values() if c.significant and c.difference < 0]
    if worse:
        names = ", ".join(f"{c.metric} {c.difference:+.3f} (Λ={c.likelihood_ratio:.3g})" for c in worse)
        return Verdict(
            "roll_back",
            f"live fell significantly below its predecessor {predecessor.version}: {names}",
            figures(live, predecessor, results),
        )
    return Verdict("wait", "watching", figures(live, predecessor, results))
