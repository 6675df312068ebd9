"""The learned show-or-abstain policy: whether serving calls the model at all, and whether it shows
what the model wrote. Beside, or instead of, the fixed confidence floors (core/confidence.py).

Two small logistic models, fitted by the trainer each cycle on shown outcomes
(trainer/show_policy_fit.py) and shipped in a version's checkpoint like its floors:

- the *filter* reads what is known once the first tokens are sampled (where the cursor stands,
  how sure the model is of its first tokens, the line so far, the user's recent outcomes in this
  file, time since their last keystroke) and estimates the chance the suggestion is accepted;
  serving shows it when that chance reaches `threshold`.
- the *trigger* reads only what is known before the model is called (everything above but the
  model's confidence) and estimates the chance the filter would show anything; below
  `trigger_threshold` serving answers with an abstention without calling the model at all: less
  compute, and no wait for the user.

Both decisions keep a small exploration share: a would-be-withheld suggestion is shown anyway (a
would-be-skipped call is made anyway) with probability `explore`, and the probability with which
it was shown is recorded with the episode (`propensity`) so that the next fit weighs it by
1/propensity. Without exploration a threshold set too high could never learn it was too high:
what it withholds has no outcome.

Pure Python: the language server imports core/, and serving runs this once per request.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from core.confidence import LEADING_TOKENS, PLACES, confidence, cursor_place

# How many of this document's most recent shown suggestions the client reports outcomes of.
RECENT_WINDOW = 10

# Features the trigger may read: known before the model is called.
TRIGGER_FEATURES: tuple[str, ...] = (
    *(f"place_{place}" for place in PLACES),
    "line_chars",
    "mid_line",
    "python",
    "recent_accept_rate",
    "recent_shown",
    "since_keystroke",
    "since_keystroke_known",
)
# Features the filter reads: the trigger's and the model's confidence in its first tokens.
FILTER_FEATURES: tuple[str, ...] = (*TRIGGER_FEATURES, "confidence", "first_logprob", "min_logprob")


class ShowSignals(BaseModel):
    """What the client knows at the cursor that the prompt does not say, for the show policy."""

    model_config = ConfigDict(allow_inf_nan=False)

    # Of this document's last RECENT_WINDOW shown suggestions: how many, and how many accepted
    # (wholly or in part).
    recent_shown: Annotated[int, Field(ge=0, le=RECENT_WINDOW)] = 0
    recent_accepted: Annotated[int, Field(ge=0, le=RECENT_WINDOW)] = 0
    # Milliseconds since the user last changed this document; None: unknown.
    since_keystroke_ms: Annotated[float | None, Field(ge=0)] = None


def trigger_features(
    prefix: str, suffix: str, language: str, signals: ShowSignals | None
) -> dict[str, float]:
    """The features known before the model is called."""
    signals = signals or ShowSignals()
    place = cursor_place(prefix)
    line = prefix.rsplit("\n", 1)[-1]
    rest_of_line = suffix.split("\n", 1)[0]
    # A prior of one accepted in two shown: a file with no history reads as undecided, not as 0.
    accept_rate = (signals.recent_accepted + 1) / (signals.recent_shown + 2)
    since = signals.since_keystroke_ms
    return {
        **{f"place_{p}": float(p == place) for p in PLACES},
        "line_chars": math.log1p(len(line)),
        "mid_line": float(bool(rest_of_line.strip())),
        "python": float(language == "python"),
        "recent_accept_rate": accept_rate,
        "recent_shown": signals.recent_shown / RECENT_WINDOW,
        "since_keystroke": math.log1p(since / 1000) if since is not None else 0.0,
        "since_keystroke_known": float(since is not None),
    }


def filter_features(before_call: Mapping[str, float], token_logprobs: Sequence[float]) -> dict[str, float]:
    """The trigger's features and the model's confidence in its first sampled tokens."""
    leading = list(token_logprobs[:LEADING_TOKENS]) or [0.0]
    return {
        **before_call,
        "confidence": confidence(leading),
        "first_logprob": leading[0],
        "min_logprob": min(leading),
    }


class Logistic(BaseModel):
    """p = sigmoid(bias + Σ weights[f] · x[f]); a feature the model has no weight for counts 0."""

    model_config = ConfigDict(allow_inf_nan=False)

    bias: float
    weights: dict[str, float]

    def probability(self, features: Mapping[str, float]) -> float:
        z = self.bias + sum(w * features.get(name, 0.0) for name, w in self.weights.items())
        # Written so that neither branch overflows.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)


class ShowPolicy(BaseModel):
    """A version's learned show-or-abstain policy (CheckpointMetadata.show_policy)."""

    model_config = ConfigDict(allow_inf_nan=False)

    filter: Logistic
    # Shown when the filter's chance of acceptance is at least this.
    threshold: Annotated[float, Field(ge=0, le=1)]
    # None: every request calls the model.
    trigger: Logistic | None = None
    trigger_threshold: Annotated[float | None, Field(ge=0, le=1)] = None
    # Chance that a would-be-withheld suggestion is shown (a would-be-skipped call made) anyway.
    explore: Annotated[float, Field(ge=0, le=0.5)] = 0.03

    def call_chance(self, features: Mapping[str, float]) -> float:
        """The chance this request calls the model: 1, or `explore` where the trigger skips."""
        if self.trigger is None or self.trigger_threshold is None:
            return 1.0
        return 1.0 if self.trigger.probability(features) >= self.trigger_threshold else self.explore

    def show_chance(self, features: Mapping[str, float]) -> float:
        """The chance a called request's suggestion is shown: 1, or `explore` below the threshold."""
        return 1.0 if self.filter.probability(features) >= self.threshold else self.explore


def draw(chance: float, rng: random.Random | None = None) -> bool:
    """Whether a decision taken with this chance comes out yes."""
    return chance >= 1.0 or (rng or random).random() < chance
