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

from backend.store.interface import Stats
from backend.store.sqlite.database import Database
from backend.store.tally import stats_of
from core.rewards import ABSTAINED, ACCEPTED, PARTIALLY_ACCEPTED


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
        return stats_of(rows)
