"""Outcome figures over time windows: the canary's test arms and the dashboard's series, with the
terms of backend/store/outcome_terms.py, counted by PostgreSQL."""

from __future__ import annotations

from backend.store.interface import ArmFigures, SeriesPoint, Slice
from backend.store.outcome_terms import A_TIME, ARC, FINITE, IS_ACCEPTED, IS_RATED, end_of
from backend.store.postgres.database import Database
from backend.store.rows import series_points, slices_of


class OutcomesMixin:
    _db: Database

    async def arm(self, version: str, since: float, until: float | None = None) -> ArmFigures:
        rows = await self._db.fetch(
            f"SELECT COUNT(e.reward), COALESCE(SUM(e.reward), 0), COALESCE(SUM(e.reward * e.reward), 0),"
            f" COUNT(*) FILTER (WHERE {IS_RATED}), COUNT(*) FILTER (WHERE {IS_RATED} AND {IS_ACCEPTED}),"
            f" COUNT(*), COALESCE(SUM({ARC}), 0), COALESCE(SUM({ARC} * {ARC}), 0)"
            " FROM completions c JOIN episodes e ON e.completion_id = c.completion_id"
            " WHERE c.model_version = %s AND c.created_at >= %s AND c.created_at < %s"
            " GROUP BY c.user_id",
            (version, since, end_of(until)),
        )
        return ArmFigures.of_people(version, rows)

    async def series(self, since: float, bucket_s: float, until: float | None = None) -> list[SeriesPoint]:
        rows = await self._db.fetch(
            "SELECT c.model_version, floor(c.created_at / %s)::bigint, COUNT(*), COUNT(e.seq),"
            f" COUNT(e.reward), COALESCE(SUM(e.reward), 0), COUNT(*) FILTER (WHERE {IS_RATED}),"
            f" COUNT(*) FILTER (WHERE {IS_RATED} AND {IS_ACCEPTED}), COALESCE(SUM({ARC}), 0)"
            " FROM completions c LEFT JOIN episodes e ON e.completion_id = c.completion_id"
            f" WHERE c.created_at >= %s AND c.created_at < %s AND c.created_at {A_TIME}"
            " GROUP BY 1, 2 ORDER BY 2",
            (bucket_s, since, end_of(until)),
        )
        return series_points(rows, bucket_s)

    async def reward_histogram(
        self, since: float, width: float = 0.05, until: float | None = None
    ) -> list[tuple[float, int]]:
        # numeric's round goes half away from zero, as SQLite's ROUND does (a float's goes to even).
        rows = await self._db.fetch(
            "SELECT round((e.reward / %s)::numeric)::float8 * %s, COUNT(*) FROM episodes e"
            " JOIN completions c ON c.completion_id = e.completion_id"
            " WHERE e.reward IS NOT NULL AND c.created_at >= %s AND c.created_at < %s"
            " GROUP BY 1 ORDER BY 1",
            (width, width, since, end_of(until)),
        )
        return [(round(value, 6), count) for value, count in rows]

    async def events_per_minute(self, since: float, until: float | None = None) -> list[tuple[float, int]]:
        rows = await self._db.fetch(
            "SELECT floor(received_at / 60) * 60, COUNT(*) FROM events"
            f" WHERE received_at >= %s AND received_at < %s AND received_at {A_TIME}"
            " GROUP BY 1 ORDER BY 1",
            (since, end_of(until)),
        )
        return [(at, count) for at, count in rows]

    async def latencies(self, since: float, limit: int = 20_000) -> list[float]:
        rows = await self._db.fetch(
            f"SELECT latency_ms FROM completions WHERE created_at >= %s AND created_at {A_TIME}"
            f" AND latency_ms {FINITE} ORDER BY created_at DESC LIMIT %s",
            (since, limit),
        )
        return [row[0] for row in rows]

    async def breakdown(self, since: float, until: float | None = None) -> list[Slice]:
        """Per client kind and language, the completions served in [since, until) and their episodes."""
        rows = await self._db.fetch(
            "SELECT c.client, c.language, COUNT(*), COUNT(*) FILTER (WHERE c.text != ''), COUNT(e.seq),"
            f" COUNT(e.reward), COUNT(*) FILTER (WHERE {IS_RATED}),"
            f" COUNT(*) FILTER (WHERE {IS_RATED} AND {IS_ACCEPTED}),"
            f" COALESCE(SUM(e.reward), 0), COALESCE(SUM({ARC}), 0)"
            " FROM completions c LEFT JOIN episodes e ON e.completion_id = c.completion_id"
            # COLLATE "C": the order of code points, as SQLite sorts, whatever the database's locale.
            " WHERE c.created_at >= %s AND c.created_at < %s GROUP BY 1, 2"
            ' ORDER BY c.client COLLATE "C", c.language COLLATE "C"',
            (since, end_of(until)),
        )
        return slices_of(rows)
