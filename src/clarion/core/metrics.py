"""Counters kept as plain integers on the hot path and exposed in Prometheus format on scrape.

The publish-to-write latency is sampled: one publication in :data:`SAMPLE_EVERY`, and the first
after each tick (so a quiet node is measured too), costs one scheduled callback; the others
cost a decrement.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from clarion.core.rates import Activity, LatencyHistogram
from clarion.protocol import deflate
from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import Publication

if TYPE_CHECKING:
    from clarion.core.hub import Hub


SAMPLE_EVERY = 64  # publications per latency sample under load


# What an application's own codes (from its hooks' refusals) count under: any string of the
# code grammar may come from there, and each label value is a series kept for the process's life.
APPLICATION_CODE = "application"
_TABLE_CODES = frozenset(code.value for code in ErrorCode)


class ErrorCounts(Counter[str]):
    """Errors by code, under a label set the hub's own table bounds: its codes count as
    themselves, any other under :data:`APPLICATION_CODE`."""

    def __getitem__(self, code: str) -> int:
        return super().__getitem__(error_label(code))

    def __setitem__(self, code: str, n: int) -> None:
        super().__setitem__(error_label(code), n)


def error_label(code: str) -> str:
    """The ``code`` label an error answered with ``code`` counts under."""
    code = str(code)
    return code if code in _TABLE_CODES else APPLICATION_CODE


class Stats:
    """Mutable counters; incrementing an int attribute is the cheapest thing Python can do."""

    __slots__ = (
        "activity",
        "conflations",
        "countdown",
        "deliveries",
        "errors",
        "latency",
        "publications",
        "resets",
        "signals",
        "slow_disconnects",
    )

    def __init__(self, namespaces: Collection[str] = ()) -> None:
        self.publications = 0
        self.signals = 0  # ephemeral publications
        self.deliveries: Counter[str] = Counter()  # by transport
        self.errors = ErrorCounts()  # by error code
        self.resets: Counter[str] = Counter()  # reset signals sent, by reason
        self.slow_disconnects = 0
        self.conflations = 0
        self.activity = Activity(namespaces)
        self.latency = LatencyHistogram()  # publish-to-write, sampled
        self.countdown = 1  # publications until the next latency sample

    def sample(self, pub: Publication) -> None:
        """Measure ``pub``'s publish-to-write latency once the loop has written what this
        iteration queued (clarion's server flushes in a callback scheduled before this one)."""
        self.countdown = SAMPLE_EVERY
        published = pub.time / 1000
        asyncio.get_running_loop().call_soon(self._observe, published)

    def _observe(self, published: float) -> None:
        self.latency.observe(time.time() - published)

    def roll(self) -> None:
        """Once a second (the hub's tick): sample the next interval's first publication."""
        self.countdown = 1


class _HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        hub = self.hub
        stats = hub.stats
        conns = GaugeMetricFamily(
            "clarion_connections", "Open client sessions", labels=["transport"]
        )
        # Kept as sessions come and go: a scrape walks none of them.
        registry = hub.registry
        by_transport = Counter({"ws": 0, "sse": 0, "poll": 0, "stomp": 0})
        by_transport.update(registry.transports)
        for kind, n in sorted(by_transport.items()):
            conns.add_metric([kind], n)
        yield conns
        subs = GaugeMetricFamily(
            "clarion_subscriptions", "Subscriptions held by sessions", labels=["transport"]
        )
        for kind in sorted(by_transport):
            subs.add_metric([kind], registry.subscriptions.get(kind, 0))
        yield subs
        yield GaugeMetricFamily(
            "clarion_channels", "Channels with subscribers on this node", value=len(hub.local)
        )
        yield CounterMetricFamily(
            "clarion_publications",
            "Publications this node delivered or received for its channels",
            value=stats.publications,
        )
        yield CounterMetricFamily(
            "clarion_ephemeral_publications",
            "Ephemeral publications (live signals) received by this node",
            value=stats.signals,
        )
        deliveries = CounterMetricFamily(
            "clarion_deliveries", "Publications handed to sessions", labels=["transport"]
        )
        for kind in sorted(set(stats.deliveries) | set(by_transport)):
            deliveries.add_metric([kind], stats.deliveries.get(kind, 0))
        yield deliveries
        errors = CounterMetricFamily(
            "clarion_client_errors", "Errors answered to clients", labels=["code"]
        )
        for code, n in sorted(stats.errors.items()):
            errors.add_metric([code], n)
        yield errors
        yield CounterMetricFamily(
            "clarion_slow_disconnects",
            "Sessions closed because their send queue overflowed",
            value=stats.slow_disconnects,
        )
        yield CounterMetricFamily(
            "clarion_conflations",
            "Times a slow session was switched to latest-only delivery",
            value=stats.conflations,
        )

        resets = CounterMetricFamily(
            "clarion_resets",
            "Resets sent to subscribers and answered to history reads (polls)",
            labels=["reason"],
        )
        for reason, n in sorted(stats.resets.items()):
            resets.add_metric([reason], n)
        yield resets
        activity = stats.activity
        by_ns = CounterMetricFamily(
            "clarion_namespace_publications",
            "Publications delivered on this node, per namespace (counted each second)",
            labels=["namespace"],
        )
        for namespace, n in sorted(activity.publications.items()):
            by_ns.add_metric([namespace], n)
        yield by_ns
        by_ns = CounterMetricFamily(
            "clarion_namespace_deliveries",
            "Publications handed to sessions, per namespace (counted each second)",
            labels=["namespace"],
        )
        for namespace, n in sorted(activity.deliveries.items()):
            by_ns.add_metric([namespace], n)
        yield by_ns
        totals = deflate.TOTALS
        yield CounterMetricFamily(
            "clarion_deflate_messages",
            "WebSocket messages compressed (permessage-deflate), each shared frame once",
            value=totals.messages,
        )
        sizes = CounterMetricFamily(
            "clarion_deflate_bytes",
            "Bytes of the compressed WebSocket messages before and after compression",
            labels=["stage"],
        )
        sizes.add_metric(["before"], totals.bytes_in)
        sizes.add_metric(["after"], totals.bytes_out)
        yield sizes
        latency = stats.latency
        yield HistogramMetricFamily(
            "clarion_publish_to_write_seconds",
            "From a publication's time to its bytes written to subscribers on this node "
            f"(one publication in {SAMPLE_EVERY} and the first each second)",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )


def make_registry(hub: Hub) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HubCollector(hub))
    return registry


class _Labelled(Collector):
    def __init__(self, inner: CollectorRegistry, labels: dict[str, str]) -> None:
        self.inner = inner
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            family.samples = [
                s._replace(labels={**s.labels, **self.labels}) for s in family.samples
            ]
            yield family


class _LabelledRegistry(CollectorRegistry):
    """Collectors registered later (e.g. webhooks', at start) go to the inner registry, so that
    their samples carry the labels too."""

    def __init__(self, inner: CollectorRegistry, labels: dict[str, str]) -> None:
        super().__init__(auto_describe=False)
        self._inner = inner
        super().register(_Labelled(inner, labels))

    def register(self, collector: Collector) -> None:
        self._inner.register(collector)

    def unregister(self, collector: Collector) -> None:
        self._inner.unregister(collector)


def labelled(registry: CollectorRegistry, labels: dict[str, str]) -> CollectorRegistry:
    """``registry`` with ``labels`` on every sample (a worker's number, for one)."""
    return _LabelledRegistry(registry, labels)


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
