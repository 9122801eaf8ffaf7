"""Webhook figures for ``/metrics``, per endpoint: backlog, dead letters, attempts and their
latency."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from clarion.core.rates import LatencyHistogram

if TYPE_CHECKING:
    from clarion.webhooks.service import WebhookService

# Attempts take from milliseconds (a receiver next door) to the attempt timeout.
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AttemptStats:
    """Attempts per endpoint and outcome (``delivered``/``failed``), and their latency."""

    def __init__(self) -> None:
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, LatencyHistogram] = {}

    def record(self, endpoint: str, delivered: bool, seconds: float) -> None:
        self.attempts[endpoint, "delivered" if delivered else "failed"] += 1
        histogram = self.latency.get(endpoint)
        if histogram is None:
            histogram = self.latency[endpoint] = LatencyHistogram(ATTEMPT_BUCKETS)
        histogram.observe(seconds)
        histogram.interval.clear()  # the histogram is all /metrics reads

    def forget(self, endpoint: str) -> None:
        for outcome in ("delivered", "failed"):
            self.attempts.pop((endpoint, outcome), None)
        self.latency.pop(endpoint, None)


class WebhookCollector(Collector):
    """Reads the hub's webhook service, if it has one, at scrape time."""

    def __init__(self, service: Callable[[], WebhookService | None]) -> None:
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        service = self.service()
        if service is None:
            return
        backlog = GaugeMetricFamily(
            "clarion_webhook_backlog",
            "Deliveries waiting per endpoint (as this node last counted them)",
            labels=["endpoint"],
        )
        dead = GaugeMetricFamily(
            "clarion_webhook_dead_letters", "Dead letters held per endpoint", labels=["endpoint"]
        )
        for endpoint in sorted(service.endpoints):
            backlog.add_metric([endpoint], service.backlog.get(endpoint, 0))
            dead.add_metric([endpoint], service.dead.get(endpoint, 0))
        yield backlog
        yield dead
        stats = service.attempt_stats
        attempts = CounterMetricFamily(
            "clarion_webhook_attempts",
            "Delivery attempts made by this node, per endpoint and outcome",
            labels=["endpoint", "outcome"],
        )
        for (endpoint, outcome), n in sorted(stats.attempts.items()):
            attempts.add_metric([endpoint, outcome], n)
        yield attempts
        latency = HistogramMetricFamily(
            "clarion_webhook_attempt_seconds",
            "How long delivery attempts took, per endpoint",
            labels=["endpoint"],
        )
        for endpoint, histogram in sorted(stats.latency.items()):
            latency.add_metric([endpoint], histogram.cumulative(), histogram.sum)
        yield latency
