"""Figures over time: per-channel activity turned into rates and namespace totals, and a latency
histogram.

The hot path only adds to two integers on the channel itself (a
:class:`~clarion.core.fanout.LocalChannel`'s ``published`` and ``delivered``). Once a second the
node's reporter passes over the channels, a slice per loop iteration, and :meth:`Activity.fold`
turns each one's counts since the last pass into its rate and adds them to its namespace's
totals; a channel that goes is folded as it goes (:meth:`Activity.retire`), so nothing it counted
is lost. Nothing holds the loop for all the channels at once (but the copy of their list that
starts a pass): with a hundred thousand rooms, one step over all of them stopped it for a tenth
of a second every second.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING

from clarion.core.auth import RESERVED_PREFIX
from clarion.protocol.channels import DEFAULT_NAMESPACE, namespace_of

if TYPE_CHECKING:
    from clarion.core.fanout import LocalChannel

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
    """Totals per namespace, since start, of what the channels counted (see above)."""

    __slots__ = ("deliveries", "namespaces", "publications")

    def __init__(self, namespaces: Collection[str] = ()) -> None:
        # The configured namespaces: any other prefix counts under the default one, whose
        # options it takes, so the totals (and the metrics' labels) stay as many as the config:
        # each of them from the start, at zero until it has traffic.
        self.namespaces = namespaces
        zeros = dict.fromkeys([*namespaces, DEFAULT_NAMESPACE], 0)
        self.publications: Counter[str] = Counter(zeros)  # by namespace, since start
        self.deliveries: Counter[str] = Counter(zeros)

    def namespace(self, channel: str) -> str:
        """The namespace ``channel`` counts under: asked once, when its local state is made."""
        namespace = namespace_of(channel)
        return namespace if namespace in self.namespaces else DEFAULT_NAMESPACE

    def fold(self, local: LocalChannel, seconds: float) -> None:
        """``local``'s publications per second over the last ``seconds``; what it counted
        meanwhile goes to its namespace's totals."""
        published = local.published
        pubs = published - local.folded_published
        local.rate = pubs / seconds
        if pubs:
            delivered = local.delivered
            if not local.name.startswith(RESERVED_PREFIX):  # the hub's own: not the app's
                self.publications[local.namespace] += pubs
                self.deliveries[local.namespace] += delivered - local.folded_delivered
            local.folded_published = published
            local.folded_delivered = delivered

    def retire(self, local: LocalChannel) -> None:
        """``local`` goes: what it counted since the last pass is kept."""
        self.fold(local, 1.0)
