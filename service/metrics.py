"""Prometheus metrics of one service process, on a registry of its own.

Counters are fed from each committed batch's report and from the relay; the
lag and backlog gauges are computed when scraped, from what the consumer
and the database know then. Names carry their unit (`_seconds`, `_total`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

OUTCOMES = ("consumed", "applied", "duplicate", "conflict", "dead_letter")


class Metrics:
    """The service's metrics; one instance per process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "focus_ledger_events_total",
            "Input records by topic and what became of them.",
            ("topic", "outcome"),
            registry=self.registry,
        )
        self.batch_records = Histogram(
            "focus_ledger_batch_records",
            "Records per committed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "focus_ledger_batch_duration_seconds",
            "Time to account for and commit one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.event_to_row_seconds = Histogram(
            "focus_ledger_event_to_row_seconds",
            "From an event's Kafka record timestamp to its rows being committed.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.rows_published = Counter(
            "focus_ledger_outbox_published_total",
            "Outbox records published (FOCUS rows, dead letters, alerts).",
            registry=self.registry,
        )
        self.alerts = Counter(
            "focus_ledger_alerts_total",
            "Alerts written, by type.",
            ("type",),
            registry=self.registry,
        )
        self.batch_failures = Counter(
            "focus_ledger_batch_failures_total",
            "Batches rolled back and read again.",
            registry=self.registry,
        )
        self.held = Gauge(
            "focus_ledger_held_events",
            "Events waiting in the ordering buffer.",
            registry=self.registry,
        )

    def observe_batch(
        self,
        by_topic: Mapping[str, Mapping[str, int]],
        records: int,
        duration_s: float,
        recorded: Iterable[datetime],
        alerts: Mapping[str, int],
        held: int,
    ) -> None:
        for topic, outcomes in by_topic.items():
            for outcome, count in outcomes.items():
                self.events.labels(topic, outcome).inc(count)
        self.batch_records.observe(records)
        self.batch_seconds.observe(duration_s)
        now = datetime.now(UTC)
        for moment in recorded:
            self.event_to_row_seconds.observe(max(0.0, (now - moment).total_seconds()))
        for kind, count in alerts.items():
            self.alerts.labels(kind).inc(count)
        self.held.set(held)

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)


class LagCollector(Collector):
    """Consumer lag per partition and the outbox backlog, read when scraped."""

    def __init__(
        self,
        lag: Callable[[], Mapping[tuple[str, int], int]],
        backlog: Callable[[], int | None],
    ) -> None:
        self.lag = lag
        self.backlog = backlog

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "focus_ledger_consumer_lag_records",
            "Records not yet read or not yet committed, per input partition.",
            labels=("topic", "partition"),
        )
        for (topic, partition), records in sorted(self.lag().items()):
            lag.add_metric((topic, str(partition)), records)
        yield lag
        backlog = self.backlog()
        if backlog is not None:
            yield GaugeMetricFamily(
                "focus_ledger_outbox_backlog_records",
                "Outbox records written but not yet published.",
                value=backlog,
            )

    def describe(self) -> Iterable[Metric]:
        return []
