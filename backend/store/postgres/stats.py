"""Figures for the admin page, overall and per model version: the definitions of
backend/store/sqlite/stats.py, counted by PostgreSQL."""

from __future__ import annotations

from backend.store.interface import Stats
from backend.store.postgres.database import Database
from backend.store.tally import stats_of
from core.rewards import ABSTAINED, ACCEPTED, PARTIALLY_ACCEPTED


class StatsMixin:
    _db: Database

    async def stats(self) -> Stats:
        rows = await self._db.fetch(
            "SELECT c.model_version, COUNT(*), COUNT(*) FILTER (WHERE c.text != ''),"
            " COUNT(*) FILTER (WHERE c.text = ''), COUNT(e.seq), COUNT(e.reward),"
            " COUNT(e.reward) FILTER (WHERE e.outcome != %s),"
            " COUNT(e.reward) FILTER (WHERE e.outcome IN (%s, %s)),"
            " COALESCE(SUM(e.reward), 0), e.outcome, COUNT(e.seq)"
            " FROM completions c LEFT JOIN episodes e ON e.completion_id = c.completion_id"
            " GROUP BY c.model_version, e.outcome",
            (ABSTAINED, ACCEPTED, PARTIALLY_ACCEPTED),
        )
        return stats_of(rows)
