"""Figures over time: per-channel activity rolled into rates each second, and a latency histogram.

The hot path only adds to plain integers (:meth:`Activity.count`); once a second the hub's tick
rolls them into last-second rates per channel and into running totals per namespace
(:meth:`Activity.roll`), so the per-channel table never outgrows the channels that were busy in
the last second.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Container

from clarion.protocol.channels import DEFAULT_NAMESPACE, namespace_of

# Upper bounds (seconds) of the latency buckets: loopback fan-out sits in the first few, a
# cross-node hop in the middle, a saturated node at the end.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# Samples kept per interval for the interval's p99 (the histogram keeps them all, in buckets).
MAX_INTERVAL_SAMPLES = 1024


class LatencyHistogram:
    """Cumulative bucket counts in Prometheus' shape, and the samples of the current interval."""

    __slots__ = ("buckets", "count", "counts", "interval", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0
        self.interval: list[float] = []

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.count += 1
        self.sum += seconds
        if len(self.interval) < MAX_INTERVAL_SAMPLES:
            self.interval.append(seconds)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf``."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def take_p99(self) -> float | None:
        """The 99th percentile of the samples since the last call (``None`` without any)."""
        samples, self.interval = self.interval, []
        if not samples:
            return None
        samples.sort()
        return samples[min(len(samples) - 1, int(len(samples) * 0.99))]


class Activity:
    """Publications and deliveries per channel this second; totals per namespace for good."""

    __slots__ = ("channel_rates", "current", "deliveries", "namespaces", "publications")

    def __init__(self, namespaces: Container[str] = ()) -> None:
        # The configured namespaces: any other prefix counts under the default one, whose
        # options it takes, so the totals (and the metrics' labels) stay as many as the config.
        self.namespaces = namespaces
        self.current: dict[str, list[int]] = {}  # channel -> [publications, deliveries]
        # The last full interval's rates: channel -> (publications/s, deliveries/s).
        self.channel_rates: dict[str, tuple[float, float]] = {}
        self.publications: Counter[str] = Counter()  # by namespace, since start
        self.deliveries: Counter[str] = Counter()

    def count(self, channel: str, deliveries: int) -> None:
        entry = self.current.get(channel)
        if entry is None:
            self.current[channel] = [1, deliveries]
        else:
            entry[0] += 1
            entry[1] += deliveries

    def roll(self, seconds: float) -> None:
        """Close the interval of ``seconds``: rates per channel, totals per namespace."""
        current, self.current = self.current, {}
        seconds = max(seconds, 1e-3)
        rates = {}
        for channel, (pubs, delivered) in current.items():
            namespace = namespace_of(channel)
            if namespace not in self.namespaces:
                namespace = DEFAULT_NAMESPACE
            self.publications[namespace] += pubs
            self.deliveries[namespace] += delivered
            rates[channel] = (pubs / seconds, delivered / seconds)
        self.channel_rates = rates
