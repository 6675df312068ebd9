"""The admin page's counts of one model version (or all), added up row by row from a store's
grouped query: the same sums and rates whichever database counted (sqlite/stats.py, postgres/stats.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from backend.store.interface import Stats, VersionStats

_COUNTS = ("served", "shown", "abstained", "finalized", "trainable", "rated", "accepted")


class Tally:
    def __init__(self) -> None:
        self.counts = dict.fromkeys(_COUNTS, 0)
        self.reward_sum = 0.0
        self.outcomes: dict[str, int] = {}

    def add(self, counts: list[int], reward_sum: float, outcome: str | None, episodes: int) -> None:
        for key, value in zip(_COUNTS, counts, strict=True):
            self.counts[key] += value or 0
        self.reward_sum += reward_sum
        if outcome is not None:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + episodes

    def report(self) -> VersionStats:
        c = self.counts
        return VersionStats(
            served=c["served"],
            shown=c["shown"],
            abstained=c["abstained"],
            finalized=c["finalized"],
            trainable=c["trainable"],
            rated=c["rated"],
            accepted=c["accepted"],
            accept_rate=c["accepted"] / c["rated"] if c["rated"] else None,
            mean_reward=self.reward_sum / c["trainable"] if c["trainable"] else None,
            outcomes=dict(sorted(self.outcomes.items())),
        )


def stats_of(rows: Iterable[Sequence[Any]]) -> Stats:
    """The admin page's figures from rows of (model_version, the seven counts, reward_sum, outcome,
    episodes), one per version and outcome."""
    total = Tally()
    per_version: dict[str, Tally] = {}
    for model_version, *counts, reward_sum, outcome, episodes in rows:
        for tally in (total, per_version.setdefault(model_version, Tally())):
            tally.add(counts, reward_sum, outcome, episodes)
    return Stats(**total.report(), per_version={v: t.report() for v, t in sorted(per_version.items())})
