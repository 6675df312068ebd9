"""The learned cut: where serving stops a completion, fitted to what users did with earlier ones.

A sampled completion runs on after the model has stopped knowing what comes next: one unlikely
token, and the rest of the line follows from it; a suggestion whose first words were right is
dismissed for its tail. Serving ends a version's completions before their first token whose
log-prob is below the version's `stop_logprob` (backend/decoding.py). Each cycle the trainer picks
that threshold in hindsight from the cycle's episodes: under each candidate threshold every episode
is cut as serving would have cut it, and scored by what its user is known to have wanted:

    not cut                                    the reward it got
    cut to nothing                             rewards.abstained
    cut within what the user wanted            rewards.accepted   (taken as is)
    cut elsewhere, episode accepted            the reward it got  (they took the longer one)
    cut elsewhere, close to what was wanted    as if taken and fixed, s = their similarity
    otherwise                                  rewards.rejected

and with the characters the user would have kept. What the user wanted: the text they wrote at the
spot (the episode's rewrite), else the accepted share of what was shown. The characters kept per
request (ARC) come first: the mean reward alone counts a two-letter acceptance as much as a whole
line and would cut to the first sure token. A threshold may replace the current one only when a
paired non-inferiority test says it keeps at least (1 − chars_tolerance) of the current's characters
(one-sided 95%: mean − 1.645 · standard error of the per-episode difference). The estimate of
characters is noisy (a few dismissed lines gained or lost swing it), while the reward gain of cutting
is large and sure, so picking the most characters outright chose a cut at -4 on one cycle's files
that cost 30% of the characters on others. Of the eligible thresholds the best mean reward wins
(fewer dismissed suggestions for the same help); on a tie the current one stays, else the one that
cuts least (an episode already cut by the current threshold says nothing about cutting less).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from core.config import RewardConfig
from core.healing import after_healed, healed_of
from core.rewards import ACCEPTED_OUTCOMES, acceptance_reward, kept_characters, retained_share
from core.wire import Episode
from trainer.corrections import completion_text

# Candidate thresholds (log-probs at the serving temperature); None cuts nothing.
THRESHOLDS: tuple[float | None, ...] = (
    None,
    -12.0,
    -10.0,
    -8.0,
    -7.0,
    -6.0,
    -5.0,
    -4.0,
    -3.0,
    -2.5,
    -2.0,
    -1.5,
    -1.0,
)

# A cut suggestion this similar to what the user wanted is counted as accepted and then fixed.
FIX_SIMILARITY = 0.6
# z of the one-sided 95% non-inferiority test on characters kept.
NON_INFERIORITY_Z = 1.645


@dataclass(frozen=True)
class StopFit:
    stop_logprob: float | None
    chosen: Estimate
    uncut: Estimate
    episodes: int


def first_below(logprobs: Sequence[float], threshold: float | None) -> int | None:
    """Index of the first token serving would cut before, or None."""
    if threshold is None:
        return None
    return next((i for i, logprob in enumerate(logprobs) if logprob < threshold), None)


class _Hindsight:
    """One shown episode, ready to be cut at any token."""

    def __init__(self, tokenizer: Any, episode: Episode, rewards: RewardConfig) -> None:
        self.tokenizer, self.episode, self.rewards = tokenizer, episode, rewards
        self.healed = healed_of(completion_text(tokenizer, episode), episode.text)
        self.wanted = self._wanted()
        # The shown text of each cut point: thresholds that cut at the same token share it.
        self._shown_at: dict[int, str] = {}

    def _wanted(self) -> str:
        e = self.episode
        if e.rewrite:
            return e.rewrite
        if e.outcome not in ACCEPTED_OUTCOMES:
            return ""
        return e.text[: math.floor(self._share(e.reward) * len(e.text) + 1e-9)]

    def outcome(self, threshold: float | None) -> tuple[float, float]:
        """(reward, characters kept) of this episode had it been cut at `threshold`."""
        e = self.episode
        cut = first_below(e.token_logprobs, threshold)
        if cut is None:
            return e.reward, kept_characters(e.outcome, e.reward, e.text, self.rewards)
        shown = self._shown(cut)
        if not shown:
            return self.rewards.abstained, 0.0
        if self.wanted.startswith(shown):
            return self.rewards.accepted, float(len(shown))
        if e.outcome in ACCEPTED_OUTCOMES:
            return e.reward, self._share(e.reward) * len(shown)
        similarity = Levenshtein.normalized_similarity(shown, self.wanted[: len(shown)])
        if self.wanted and similarity >= FIX_SIMILARITY:
            # Close enough to take and fix: scored as the backend would score it, s = similarity.
            return acceptance_reward(similarity, self.rewards), similarity * len(shown)
        return self.rewards.rejected, 0.0

    def _shown(self, cut: int) -> str:
        if cut not in self._shown_at:
            raw = self.tokenizer.decode(self.episode.completion_ids[:cut], skip_special_tokens=True)
            self._shown_at[cut] = after_healed(raw, self.healed).rstrip()
        return self._shown_at[cut]

    def _share(self, reward: float) -> float:
        return retained_share(reward, self.rewards)


@dataclass(frozen=True)
class Estimate:
    """Means over a set of episodes had they been cut at one threshold."""

    reward: float
    # Characters kept per episode (accepted and surviving): ARC per request.
    kept_chars: float


class HindsightSet:
    """A cycle's episodes, scored in hindsight under any threshold."""

    def __init__(self, tokenizer: Any, episodes: Sequence[Episode], rewards: RewardConfig) -> None:
        self.shown = [_Hindsight(tokenizer, e, rewards) for e in episodes if e.text]
        self._silent = sum(e.reward for e in episodes if not e.text)
        self.size = len(episodes)
        # Each threshold's outcomes, scored once: the fit reads the current one's for every other.
        self._outcomes: dict[float | None, list[tuple[float, float]]] = {}

    def outcomes(self, threshold: float | None) -> list[tuple[float, float]]:
        """(reward, characters kept) of each shown episode cut at `threshold`."""
        if threshold not in self._outcomes:
            self._outcomes[threshold] = [h.outcome(threshold) for h in self.shown]
        return self._outcomes[threshold]

    def estimate(self, threshold: float | None) -> Estimate:
        if not self.size:
            return Estimate(0.0, 0.0)
        outcomes = self.outcomes(threshold)
        reward = self._silent + sum(r for r, _ in outcomes)
        return Estimate(reward / self.size, sum(c for _, c in outcomes) / self.size)

    def kept_chars_bound(self, threshold: float | None, reference: float | None) -> float:
        """One-sided 95% lower bound on the mean per-request difference in characters kept,
        `threshold` minus `reference`, paired over the same episodes (silent ones differ by 0)."""
        diffs = np.zeros(self.size)
        cut, ref = self.outcomes(threshold), self.outcomes(reference)
        diffs[: len(self.shown)] = [kept - before for (_, kept), (_, before) in zip(cut, ref, strict=True)]
        return lower_bound(diffs)


def lower_bound(diffs: np.ndarray) -> float:
    """One-sided 95% lower bound on the mean of paired differences: mean − z · standard error."""
    if len(diffs) < 2:
        return float(diffs.mean()) if len(diffs) else 0.0
    return float(diffs.mean() - NON_INFERIORITY_Z * diffs.std(ddof=1) / math.sqrt(len(diffs)))


def fit_stop_logprob(
    tokenizer: Any,
    episodes: Sequence[Episode],
    rewards: RewardConfig,
    current: float | None,
    min_shown: int = 20,
    chars_tolerance: float = 0.02,
) -> StopFit:
    """The threshold for the next version, from a cycle's episodes; `current` is the live one's.
    Of the thresholds that surely keep at least (1 − `chars_tolerance`) of the current's characters,
    the one with the best reward. With fewer than `min_shown` shown episodes the current stays."""
    scored = HindsightSet(tokenizer, episodes, rewards)
    if len(scored.shown) < min_shown:
        return StopFit(current, scored.estimate(current), scored.estimate(None), scored.size)
    candidates = sorted(set(THRESHOLDS) | {current}, key=lambda t: -math.inf if t is None else t)
    estimates = {t: scored.estimate(t) for t in candidates}
    margin = -chars_tolerance * estimates[current].kept_chars - 1e-9
    eligible = [t for t in candidates if t == current or scored.kept_chars_bound(t, current) >= margin]
    best = max(estimates[t].reward for t in eligible)
    tied = [t for t in eligible if estimates[t].reward >= best - 1e-9]
    chosen = current if current in tied else tied[0]
    return StopFit(chosen, estimates[chosen], estimates[None], scored.size)
