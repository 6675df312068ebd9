"""Figures for the admin page, overall and per model version.

Definitions (each per model version and in total):
- served: completions returned; shown: those with text; abstained: those without.
- finalized: episodes scored so far; trainable: those with a reward (abstentions included).
- rated: trainable episodes of shown completions, i.e. the ones the user demonstrably saw.
- accepted: rated episodes whose outcome is accepted or partially_accepted.
- accept_rate = accepted / rated (None when nothing is rated yet).
- mean_reward: mean over trainable episodes, abstentions included: the quantity the policy optimises.
"""

from __future__ import annotations

from backend.store.interface import Stats, VersionStats
from backend.store.sqlite.database import Database
from core.rewards import ABSTAINED, ACCEPTED, PARTIALLY_ACCEPTED

_COUNTS = ("served", "shown", "abstained", "finalized", "trainable", "rated", "accepted")


class StatsMixin:
    _db: Database

    async def stats(self) -> Stats:
        """{served, shown, ..., accept_rate, mean_reward, outcomes, per_version: {version: {...}}}."""
        rows = await self._db.reader.execute_fetchall(
            "SELECT c.model_version, COUNT(*), SUM(c.text != ''), SUM(c.text = ''),"
            " SUM(e.seq IS NOT NULL), SUM(e.reward IS NOT NULL),"
            " SUM(e.reward IS NOT NULL AND e.outcome != ?),"
            " SUM(e.reward IS NOT NULL AND e.outcome IN (?, ?)),"
            " TOTAL(e.reward), e.outcome, COUNT(e.seq)"
            " FROM completions c LEFT JOIN episodes e ON e.completion_id = c.completion_id"
            " GROUP BY c.model_version, e.outcome",
            (ABSTAINED, ACCEPTED, PARTIALLY_ACCEPTED),
        )
        total = _Tally()
        per_version: dict[str, _Tally] = {}
        for model_version, *counts, reward_sum, outcome, episodes in rows:
            for tally in (total, per_version.setdefault(model_version, _Tally())):
                tally.add(counts, reward_sum, outcome, episodes)
        return Stats(**total.report(), per_version={v: t.report() for v, t in sorted(per_version.items())})


class _Tally:
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
