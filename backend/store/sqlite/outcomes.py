"""Outcome figures over time windows: the canary's test arms and the dashboard's series (their
terms defined in backend/store/outcome_terms.py)."""

from __future__ import annotations

from backend.store.interface import ArmFigures, SeriesPoint, Slice
from backend.store.outcome_terms import A_TIME, ARC, FINITE, IS_ACCEPTED, IS_RATED, end_of
from backend.store.rows import series_points, slices_of
from backend.store.sqlite.database import Database


class OutcomesMixin:
    _db: Database

    async def arm(self, version: str, since: float, until: float | None = None) -> ArmFigures:
        """Figures of `version`'s episodes for completions served in [since, until), by person."""
        rows = await self._db.reader.execute_fetchall(
            f"SELECT SUM(e.reward IS NOT NULL), TOTAL(e.reward), TOTAL(e.reward * e.reward),"
            f" SUM({IS_RATED}), SUM({IS_RATED} AND {IS_ACCEPTED}),"
            f" COUNT(*), TOTAL({ARC}), TOTAL({ARC} * {ARC})"
            " FROM completions c JOIN episodes e ON e.completion_id = c.completion_id"
            " WHERE c.model_version = ? AND c.created_at >= ? AND c.created_at < ?"
            " GROUP BY c.user_id",
            (version, since, end_of(until)),
        )
        return ArmFigures.of_people(version, rows)

    async def series(self, since: float, bucket_s: float, until: float | None = None) -> list[SeriesPoint]:
        """Per version and time bucket (by serving time): served, mean reward, accept rate, ARC/100."""
        rows = await self._db.reader.execute_fetchall(
            f"SELECT c.model_version, CAST(c.created_at / ? AS INTEGER), COUNT(*), COUNT(e.seq),"
            f" SUM(e.reward IS NOT NULL), TOTAL(e.reward), SUM({IS_RATED}),"
            f" SUM({IS_RATED} AND {IS_ACCEPTED}), TOTAL({ARC})"
            " FROM completions c LEFT JOIN episodes e ON e.completion_id = c.completion_id"
            f" WHERE c.created_at >= ? AND c.created_at < ? AND c.created_at {A_TIME}"
            " GROUP BY 1, 2 ORDER BY 2",
            (bucket_s, since, end_of(until)),
        )
        return series_points(rows, bucket_s)

    async def reward_histogram(
        self, since: float, width: float = 0.05, until: float | None = None
    ) -> list[tuple[float, int]]:
        rows = await self._db.reader.execute_fetchall(
            "SELECT ROUND(e.reward / ?) * ?, COUNT(*) FROM episodes e"
            " JOIN completions c ON c.completion_id = e.completion_id"
            " WHERE e.reward IS NOT NULL AND c.created_at >= ? AND c.created_at < ? GROUP BY 1 ORDER BY 1",
            (width, width, since, end_of(until)),
        )
        return [(round(value, 6), count) for value, count in rows]

    async def events_per_minute(self, since: float, until: float | None = None) -> list[tuple[float, int]]:
        rows = await self._db.reader.execute_fetchall(
            "SELECT CAST(received_at / 60 AS INTEGER) * 60, COUNT(*) FROM events"
            f" WHERE received_at >= ? AND received_at < ? AND received_at {A_TIME} GROUP BY 1 ORDER BY 1",
            (since, end_of(until)),
        )
        return [(at, count) for at, count in rows]

    async def latencies(self, since: float, limit: int = 20_000) -> list[float]:
        rows = await self._db.reader.execute_fetchall(
            f"SELECT latency_ms FROM completions WHERE created_at >= ? AND created_at {A_TIME}"
            f" AND latency_ms {FINITE} ORDER BY created_at DESC LIMIT ?",
            (since, limit),
        )
        return [row[0] for row in rows]

    async def breakdown(self, since: float, until: float | None = None) -> list[Slice]:
        """Per client kind and language, the completions served in [since, until) and their episodes."""
        rows = await self._db.reader.execute_fetchall(
            f"SELECT c.client, c.language, COUNT(*), SUM(c.text != ''), COUNT(e.seq),"
            f" SUM(e.reward IS NOT NULL), SUM({IS_RATED}), SUM({IS_RATED} AND {IS_ACCEPTED}),"
            f" TOTAL(e.reward), TOTAL({ARC})"
            " FROM completions c LEFT JOIN episodes e ON e.completion_id = c.completion_id"
            " WHERE c.created_at >= ? AND c.created_at < ? GROUP BY 1, 2 ORDER BY 1, 2",
            (since, end_of(until)),
        )
        return slices_of(rows)
