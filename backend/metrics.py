"""Prometheus figures for /metrics, kept in a registry of this app's own."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.completions import Completions
from backend.passes import Passes
from backend.store import COMPLETIONS, EVENTS
from core.wire import EventsResponse


class Metrics:
    def __init__(self, completions: Completions, passes: Passes | None = None) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "flywheel_completion_latency_seconds",
            "Completion latency, queueing and batching included",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
            registry=self.registry,
        )
        self.completions = Counter(
            "flywheel_completions", "Completions served", ["version", "shown"], registry=self.registry
        )
        self.event_count = Counter(
            "flywheel_events", "Outcome events received", ["result"], registry=self.registry
        )
        batches = Gauge("flywheel_batches", "Generate batches run", registry=self.registry)
        batches.set_function(lambda: completions.batches)
        dropped = Gauge("flywheel_dropped_requests", "Requests dropped: client gone", registry=self.registry)
        dropped.set_function(lambda: completions.dropped)
        serving = Gauge(
            "flywheel_serving", "Versions served now", ["role", "version"], registry=self.registry
        )
        self._serving = serving
        self._completions = completions
        self._quarantined = Gauge(
            "flywheel_quarantined_rows",
            "Stored rows set aside because they could not be read, by table",
            ["table"],
            registry=self.registry,
        )
        if passes is not None:
            self.registry.register(_PassCollector(passes))

    def completed(self, version: str, shown: bool, latency_ms: float) -> None:
        self.latency.observe(latency_ms / 1000)
        self.completions.labels(version=version, shown=str(shown).lower()).inc()

    def events(self, result: EventsResponse) -> None:
        self.event_count.labels(result="stored").inc(result.stored)
        self.event_count.labels(result="duplicate").inc(result.duplicates)
        self.event_count.labels(result="refused").inc(len(result.refused))

    def render(self, quarantined: dict[str, int] | None = None) -> bytes:
        """The figures now; `quarantined` (the store's count of rows set aside, by table) is read
        by the caller, for the store is asynchronous and this is not."""
        self._quarantined.clear()
        for table, count in {EVENTS: 0, COMPLETIONS: 0, **(quarantined or {})}.items():
            self._quarantined.labels(table=table).set(count)
        policy = self._completions.policy
        self._serving.clear()
        self._serving.labels(role="live", version=policy.live).set(1)
        if policy.canary:
            self._serving.labels(role="canary", version=policy.canary).set(policy.canary_share)
        return generate_latest(self.registry)


class _PassCollector(Collector):
    """Each background pass's failures and last success, read from its PassHealth at scrape time."""

    def __init__(self, passes: Passes) -> None:
        self._passes = passes

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "flywheel_pass_failures", "Background pass runs that failed", labels=["pass"]
        )
        in_a_row = GaugeMetricFamily(
            "flywheel_pass_consecutive_failures", "Failures since the pass last succeeded", labels=["pass"]
        )
        stuck = GaugeMetricFamily(
            "flywheel_pass_stuck", "1 while the pass has failed too often in a row (/readyz)", labels=["pass"]
        )
        succeeded = GaugeMetricFamily(
            "flywheel_pass_last_success_timestamp_seconds", "When the pass last succeeded", labels=["pass"]
        )
        for name, health in self._passes.by_name.items():
            failures.add_metric([name], health.failures)
            in_a_row.add_metric([name], health.consecutive_failures)
            stuck.add_metric([name], float(health.stuck))
            if health.last_success is not None:
                succeeded.add_metric([name], health.last_success)
        yield from (failures, in_a_row, stuck, succeeded)
