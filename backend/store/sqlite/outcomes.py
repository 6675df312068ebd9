"""Outcome figures over time windows: the canary's test arms and the dashboard's series.

Per finalized episode of a model version:
- reward: over trainable episodes (reward not NULL, abstentions included);
- accepted (0/1): over rated episodes (trainable and shown);
- ARC, accepted-and-retained characters: similarity × length of the text for accepted outcomes,
  0 otherwise, over every finalized episode (so "ARC per 100 requests" is 100 × its mean).
"""

from __future__ import annotations

from backend.store.interface import ArmFigures, SeriesPoint, Slice
from backend.store.rows import series_points, slices_of
from backend.store.sqlite.database import Database
from core.rewards import ABSTAINED, ACCEPTED, PARTIALLY_ACCEPTED

_ACCEPTED = f"(e.outcome IN ('{ACCEPTED}', '{PARTIALLY_ACCEPTED}'))"
_ARC = f"(CASE WHEN {_ACCEPTED} THEN COALESCE(e.similarity, 1.0) * length(c.text) ELSE 0 END)"
_RATED = f"(e.reward IS NOT NULL AND e.outcome != '{ABSTAINED}')"
# A time (seconds since the epoch, before the year 5000) or a finite figure. A stored row whose time
# is text, a blob or infinite (an older version, a hand edit, a bug) falls outside, so it draws no
# point that cannot be shown and no figure JSON cannot carry, and the rest of the chart stays.
_A_TIME = "BETWEEN 0 AND 1e11"
_FINITE = "BETWEEN -1e308 AND 1e308"
_FOREVER = float("inf")


class OutcomesMixin:
    _db: Database

    async def arm(self, version: str, since: float, until: float | None = None) -> ArmFigures:
        """Figures of `version`'s episodes for completions served in [since, until), by person."""
        rows = await self._db.reader.execute_fetchall(
            f"SELECT SUM(e.reward IS NOT NULL), TOTAL(e.reward), TOTAL(e.reward * e.reward),"
            f" SUM({_RATED}), SUM({_RATED} AND {_ACCEPTED}),"
            f" COUNT(*), TOTAL({_ARC}), TOTAL({_ARC} * {_ARC})"
            " FROM completions c JOIN episodes e ON e.completion_id = c.completion_id"
            " WHERE c.model_version = ? AND c.created_at >= ? AND c.created_at < ?"
            " GROUP BY c.user_id",
            (version, since, until if until is not None else float("inf")),
        )
        return ArmFigures.of_people(version, rows)

    async def series(self, since: float, bucket_s: float, until: float | None = None) -> list[SeriesPoint]:
        """Per version and time bucket (by serving time): served, mean reward, accept rate, ARC/100."""
        rows = await self._db.reader.execute_fetchall(
            f"SELECT c.model_version, CAST(c.created_at / ? AS INTEGER), COUNT(*), COUNT(e.seq),"
            f" SUM(e.reward IS NOT NULL), TOTAL(e.reward), SUM({_RATED}), SUM({_RATED} AND {_ACCEPTED}),"
            f" TOTAL({_ARC})"
            " FROM completions c LEFT JOIN episodes e ON e.completion_id = c.completion_id"
            f" WHERE c.created_at >= ? AND c.created_at < ? AND c.created_at {_A_TIME}"
            " GROUP BY 1, 2 ORDER BY 2",
            (bucket_s, since, _end(until)),
        )
        return series_points(rows, bucket_s)

    async def reward_histogram(
        self, since: float, width: float = 0.05, until: float | None = None
    ) -> list[tuple[float, int]]:
        rows = await self._db.reader.execute_fetchall(
            "SELECT ROUND(e.reward / ?) * ?, COUNT(*) FROM episodes e"
            " JOIN completions c ON c.completion_id = e.completion_id"
            " WHERE e.reward IS NOT NULL AND c.created_at >= ? AND c.created_at < ? GROUP BY 1 ORDER BY 1",
            (width, width, since, _end(until)),
        )
        return [(round(value, 6), count) for value, count in rows]

    async def events_per_minute(self, since: float, until: float | None = None) -> list[tuple[float, int]]:
        rows = await self._db.reader.execute_fetchall(
            "SELECT CAST(received_at / 60 AS INTEGER) * 60, COUNT(*) FROM events"
            f" WHERE received_at >= ? AND received_at < ? AND received_at {_A_TIME} GROUP BY 1 ORDER BY 1",
            (since, _end(until)),
        )
        return [(at, count) for at, count in rows]

    async def latencies(self, since: float, limit: int = 20_000) -> list[float]:
        rows = await self._db.reader.execute_fetchall(
            f"SELECT latency_ms FROM completions WHERE created_at >= ? AND created_at {_A_TIME}"
            f" AND latency_ms {_FINITE} ORDER BY created_at DESC LIMIT ?",
            (since, limit),
        )
        return [row[0] for row in rows]

    async def breakdown(self, since: float, until: float | None = None) -> list[Slice]:
        """Per client kind and language, the completions served in [since, until) and their episodes."""
        rows = await self._db.reader.execute_fetchall(
            f"SELECT c.client, c.language, COUNT(*), SUM(c.text != ''), COUNT(e.seq),"
            f" SUM(e.reward IS NOT NULL), SUM({_RATED}), SUM({_RATED} AND {_ACCEPTED}),"
            f" TOTAL(e.reward), TOTAL({_ARC})"
            " FROM completions c LEFT JOIN episodes e ON e.completion_id = c.completion_id"
            " WHERE c.created_at >= ? AND c.created_at < ? GROUP BY 1, 2 ORDER BY 1, 2",
            (since, _end(until)),
        )
        return slices_of(rows)


def _end(until: float | None) -> float:
    return _FOREVER if until is None else until
