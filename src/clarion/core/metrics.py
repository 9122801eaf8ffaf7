"""Counters kept as plain integers on the hot path and exposed in Prometheus format on scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from clarion.core.hub import Hub


class Stats:
    """Mutable counters; incrementing an int attribute is the cheapest thing Python can do."""

    __slots__ = (
        "conflations",
        "deliveries",
        "errors",
        "publications",
        "signals",
        "slow_disconnects",
    )

    def __init__(self) -> None:
        self.publications = 0
        self.signals = 0  # ephemeral publications
        self.deliveries: Counter[str] = Counter()  # by transport
        self.errors: Counter[str] = Counter()  # by error code
        self.slow_disconnects = 0
        self.conflations = 0


class _HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        hub = self.hub
        stats = hub.stats
        conns = GaugeMetricFamily(
            "clarion_connections", "Open client sessions", labels=["transport"]
        )
        by_transport: Counter[str] = Counter(s.transport.kind for s in hub.sessions.values())
        for kind in ("ws", "sse", "poll", "stomp"):
            by_transport.setdefault(kind, 0)
        for kind, n in sorted(by_transport.items()):
            conns.add_metric([kind], n)
        yield conns
        subs = GaugeMetricFamily(
            "clarion_subscriptions", "Subscriptions held by sessions", labels=["transport"]
        )
        sub_counts: Counter[str] = Counter()
        for s in hub.sessions.values():
            sub_counts[s.transport.kind] += len(s.subscriptions)
        for kind in by_transport:
            subs.add_metric([kind], sub_counts.get(kind, 0))
        yield subs
        yield GaugeMetricFamily(
            "clarion_channels", "Channels with subscribers on this node", value=len(hub.local)
        )
        yield CounterMetricFamily(
            "clarion_publications", "Publications accepted by this node", value=stats.publications
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


def labelled(registry: CollectorRegistry, labels: dict[str, str]) -> CollectorRegistry:
    """``registry`` with ``labels`` on every sample (a worker's number, for one)."""
    out = CollectorRegistry(auto_describe=False)
    out.register(_Labelled(registry, labels))
    return out


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
