"""Prometheus figures for /metrics, kept in a registry of this app's own.

Counters end in `_total` (prometheus_client adds it to a Counter's name), durations are in seconds.
What this process counts (completions, events, latency, batches) is per replica: sum over replicas
in queries. What the store holds (checkpoints by state, the trainer's last report, rows set aside)
is read from it at scrape time, so every replica reports the same values: take max, not sum.

Time to first token: an engine sets `Generation.first_token_s` (backend/engine.py), seconds from
`complete` being called to its first token; `Metrics.completed` observes it. The in-process engine
measures it (model process clock plus the wait for a batch place); an engine that cannot tell
leaves it None and the histogram simply gets no observation for it.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.completions import Completions
from backend.passes import Passes
from backend.store import COMPLETIONS, EVENTS, Store
from core.wire import EventsResponse

# The store setting the trainer's reports are kept under (backend/app.py's trainer status route).
TRAINER_STATUS = "trainer_status"
# What the trainer reports (core/wire.py TrainerReport.state), each a series of its own.
TRAINER_STATES = ("idle", "training", "gating", "uploading", "error")
# Checkpoint states counted even at zero, so a dashboard's series exist from the first scrape.
CHECKPOINT_STATES = ("candidate", "gated", "rejected", "canary", "live", "retired", "rolled_back")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


@dataclass
class Stored:
    """What a scrape reads from the store (the caller reads it: the store is asynchronous)."""

    quarantined: dict[str, int] = field(default_factory=dict)
    # TrainerReport as stored (None before the trainer first reported).
    trainer: Mapping[str, Any] | None = None
    checkpoints: dict[str, int] = field(default_factory=dict)


class Metrics:
    def __init__(self, completions: Completions, passes: Passes | None = None) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "flywheel_completion_latency_seconds",
            "Completion latency, queueing and batching included",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "flywheel_time_to_first_token_seconds",
            "From the engine being asked to its first token, queueing included (engines that know it)",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.completions = Counter(
            "flywheel_completions", "Completions served", ["version", "shown"], registry=self.registry
        )
        self.skipped_calls = Counter(
            "flywheel_skipped_model_calls",
            "Requests answered with an abstention without calling the model (the learned trigger)",
            registry=self.registry,
        )
        self.event_count = Counter(
            "flywheel_events", "Outcome events received", ["result"], registry=self.registry
        )
        self.in_flight = Gauge(
            "flywheel_completions_in_flight",
            "Completion requests being served now: waiting for the engine or decoding",
            registry=self.registry,
        )
        serving = Gauge(
            "flywheel_serving",
            "Versions served now (canary: its share)",
            ["role", "version"],
            registry=self.registry,
        )
        self._serving = serving
        self._completions = completions
        self._quarantined = Gauge(
            "flywheel_quarantined_rows",
            "Stored rows set aside because they could not be read, by table",
            ["table"],
            registry=self.registry,
        )
        self._stored = Stored()
        self.registry.register(_EngineCollector(completions))
        self.registry.register(_StoredCollector(self))
        if passes is not None:
            self.registry.register(_PassCollector(passes))

    def completed(
        self,
        version: str,
        shown: bool,
        latency_ms: float,
        first_token_s: float | None = None,
        called: bool = True,
    ) -> None:
        if not called:
            self.skipped_calls.inc()
        self.latency.observe(latency_ms / 1000)
        if first_token_s is not None:
            self.first_token.observe(first_token_s)
        self.completions.labels(version=version, shown=str(shown).lower()).inc()

    def events(self, result: EventsResponse) -> None:
        self.event_count.labels(result="stored").inc(result.stored)
        self.event_count.labels(result="duplicate").inc(result.duplicates)
        self.event_count.labels(result="refused").inc(len(result.refused))

    async def scrape(self, store: Store) -> bytes:
        """The figures now, with the store's read first."""
        by_state = Tally(c.state for c in await store.checkpoints())
        trainer = await store.get_setting(TRAINER_STATUS)
        return self.render(Stored(await store.quarantine_counts(), trainer, dict(by_state)))

    def render(self, stored: Stored | None = None) -> bytes:
        """The figures now, with what the caller read from the store."""
        self._stored = stored or Stored()
        self._quarantined.clear()
        for table, count in {EVENTS: 0, COMPLETIONS: 0, **self._stored.quarantined}.items():
            self._quarantined.labels(table=table).set(count)
        policy = self._completions.policy
        self._serving.clear()
        self._serving.labels(role="live", version=policy.live).set(1)
        if policy.canary:
            self._serving.labels(role="canary", version=policy.canary).set(policy.canary_share)
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """The engine's own counts, read at scrape time."""

    def __init__(self, completions: Completions) -> None:
        self._completions = completions

    def collect(self) -> Iterator[Metric]:
        c = self._completions
        yield CounterMetricFamily("flywheel_batches", "Decoding batches started from idle", value=c.batches)
        yield CounterMetricFamily(
            "flywheel_dropped_requests", "Requests dropped before decoding: client gone", value=c.dropped
        )
        if (waiting := c.waiting) is not None:
            yield GaugeMetricFamily(
                "flywheel_queue_depth", "Requests waiting for a place in the engine's batch", value=waiting
            )
        policy = c.policy
        yield GaugeMetricFamily(
            "flywheel_canary_share",
            "Share of people served the canary (0: no canary)",
            value=policy.canary_share if policy.canary else 0.0,
        )


class _StoredCollector(Collector):
    """Trainer and checkpoint state, from what the scrape read from the store."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stored = self._metrics._stored
        checkpoints = GaugeMetricFamily("flywheel_checkpoints", "Checkpoints by state", labels=["state"])
        for state, count in {**dict.fromkeys(CHECKPOINT_STATES, 0), **stored.checkpoints}.items():
            checkpoints.add_metric([state], count)
        yield checkpoints
        report = stored.trainer or {}
        state = GaugeMetricFamily(
            "flywheel_trainer_state", "1 for the state the trainer last reported", labels=["state"]
        )
        for name in TRAINER_STATES:
            state.add_metric([name], float(report.get("state") == name))
        yield state
        if "at" in report:
            yield GaugeMetricFamily(
                "flywheel_trainer_report_timestamp_seconds",
                "When the trainer last reported",
                value=report["at"],
            )
        # The cycle's figures are free-form JSON from whoever holds an admin token: only numbers count.
        cycle = report.get("cycle")
        cycle = cycle if isinstance(cycle, dict) else {}
        figures = cycle.get("metrics")
        figures = figures if isinstance(figures, dict) else {}
        if (episodes := _number(cycle.get("episodes"))) is not None:
            yield GaugeMetricFamily(
                "flywheel_trainer_cycle_episodes", "Episodes the last cycle pulled and kept", value=episodes
            )
        if (duration := _number(figures.get("duration_s"))) is not None:
            yield GaugeMetricFamily(
                "flywheel_trainer_cycle_seconds", "How long the last cycle took", value=duration
            )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
