"""Whether a completion is shown, decided once per request: by the serving version's learned show
policy (core/show_policy.py) where it has one, else by its confidence floor where the cursor stands
(core/confidence.py).

`Showing` is taken up front (backend/completions.py `plan`), before the engine is called: the
trigger's features and chance, whether the model is called at all, and the one uniform number the
filter's exploration reads. It travels in the EngineRequest, so an engine that ends a withheld row
after its first LEADING_TOKENS tokens (backend/engine.py) and `finish` above it, reading the same
number, cannot disagree about what was shown.

What is recorded (core/wire.py ServingDecision) is what the trainer's next fit reads
(trainer/show_policy_fit.py): the features, called, shown, and the chance with which a shown
completion was shown (its propensity, the fit weighs it by the inverse). A withheld one records
its show chance for information; a skipped call its call chance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from core.confidence import LEADING_TOKENS, withheld
from core.show_policy import ShowPolicy, ShowSignals, draw, filter_features, trigger_features
from core.wire import ServingDecision


@dataclass(frozen=True)
class Showing:
    """How one request's completion is decided: `policy` (the version's learned one) or, where it
    is None, `floor` (the version's confidence floor where the cursor stands; None: shown)."""

    # The trigger's features: what is known before the model is called.
    features: dict[str, float]
    policy: ShowPolicy | None = None
    call_chance: float = 1.0
    # False: the trigger skipped the model call.
    called: bool = True
    # Uniform in [0, 1): the filter's exploration reads it, once for the whole request.
    draw: float = 0.0
    floor: float | None = None

    def skipped(self) -> ServingDecision:
        """The decision recorded for a request whose model call the trigger skipped."""
        return ServingDecision(
            rule="learned",
            features=self.features,
            called=False,
            shown=False,
            propensity=self.call_chance,
        )

    def shows(self, token_logprobs: Sequence[float]) -> bool:
        """Whether the learned filter shows a completion starting with these log-probs."""
        return self.decide(token_logprobs).shown

    def decide(self, token_logprobs: Sequence[float]) -> ServingDecision:
        """The decision on a called request's completion with these log-probs, by the policy or
        the floor. No tokens: nothing to show."""
        if not token_logprobs:
            rule = "floors" if self.policy is None else "learned"
            chance = 1.0 if self.policy is None else self.call_chance
            return ServingDecision(rule=rule, features=self.features, shown=False, propensity=chance)
        features = filter_features(self.features, token_logprobs)
        if self.policy is None:
            return ServingDecision(
                rule="floors", features=features, shown=not withheld(token_logprobs, self.floor)
            )
        chance = self.policy.show_chance(features)
        shown = chance >= 1.0 or self.draw < chance
        propensity = self.call_chance * chance if shown else chance
        return ServingDecision(rule="learned", features=features, shown=shown, propensity=propensity)

    def withheld_whatever_follows(self, token_logprobs: Sequence[float]) -> bool:
        """The early end: once a row has its first LEADING_TOKENS tokens, whether it is shown is
        known (the floor and the filter read no more), and a withheld one need not be decoded
        further. Asked after every token, it looks once, at that token: a row not withheld then
        never is."""
        if len(token_logprobs) != LEADING_TOKENS:
            return False
        if self.policy is None:
            return withheld(token_logprobs, self.floor)
        return not self.shows(token_logprobs)


def showing(
    prefix: str,
    suffix: str,
    language: str,
    signals: ShowSignals | None,
    policy: ShowPolicy | None,
    rng: random.Random | None = None,
    floor: float | None = None,
) -> Showing:
    """Decide up front how this request's completion is shown: under `policy` (None: `floor`),
    with the trigger's draw taken now and the filter's drawn for later."""
    features = trigger_features(prefix, suffix, language, signals)
    if policy is None:
        return Showing(features, floor=floor)
    chance = policy.call_chance(features)
    return Showing(
        features, policy, call_chance=chance, called=draw(chance, rng), draw=(rng or random).random()
    )
