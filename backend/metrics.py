"""Prometheus figures for /metrics, kept in a registry of this app's own."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from backend.wire import EventsResponse


class Metrics:
    def __init__(self, worker: Any) -> None:
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
        batches.set_function(lambda: worker.batches)
        dropped = Gauge("flywheel_dropped_requests", "Requests dropped: client gone", registry=self.registry)
        dropped.set_function(lambda: worker.dropped)
        serving = Gauge(
            "flywheel_serving", "Versions served now", ["role", "version"], registry=self.registry
        )
        self._serving = serving
        self._worker = worker

    def completed(self, version: str, shown: bool, latency_ms: float) -> None:
        self.latency.observe(latency_ms / 1000)
        self.completions.labels(version=version, shown=str(shown).lower()).inc()

    def events(self, result: EventsResponse) -> None:
        self.event_count.labels(result="stored").inc(result.stored)
        self.event_count.labels(result="duplicate").inc(result.duplicates)
        self.event_count.labels(result="refused").inc(len(result.refused))

    def render(self) -> bytes:
        policy = self._worker.policy
        self._serving.clear()
        self._serving.labels(role="live", version=policy.live).set(1)
        if policy.canary:
            self._serving.labels(role="canary", version=policy.canary).set(policy.canary_share)
        return generate_latest(self.registry)
