"""This node's figures, announced to the others through the engine, and the cluster's view.

Once a second the :class:`NodeReporter` passes over this node's channels, a slice per loop
iteration (their rates and namespace totals, see :mod:`clarion.core.rates`, and the busiest of
them); and, apart from that pass, builds this node's record (id, version, address, uptime,
connections by transport, deliveries and publications per second, its busiest channels),
stores it in the engine's node directory — timing that round trip, which is the engine latency
``/metrics`` reports — and, with ``admin = true``, publishes a sample of the figures the admin
page charts on :data:`~clarion.core.operator.METRICS_CHANNEL`.

A node is ``up`` while its last record is younger than :data:`GONE_AFTER`, then ``gone``
until the directory forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from clarion.core.operator import METRICS_CHANNEL
from clarion.core.rates import LatencyHistogram
from clarion.core.registry import OPERATORS
from clarion.engines.base import (
    ANNOUNCE_INTERVAL,
    GONE_AFTER,
    NodeDirectory,
    NodeDirectoryStorage,
)
from clarion.engines.nodes import LocalNodes
from clarion.errors import ClarionError
from clarion.tasks import stop

if TYPE_CHECKING:
    from clarion.core.hub import Hub

log = logging.getLogger("clarion.nodes")

INTERVAL = ANNOUNCE_INTERVAL  # seconds between announces
# A channel in a listing: [name, subscribers, publications per second, node ids].
ChannelRow = list[Any]
# Channels a record lists: the busiest by subscribers, and the busiest by publication rate.
TOP_BY_SUBSCRIBERS = 1000
TOP_BY_RATE = 100
# Channels looked at per loop iteration in the pass over them (about 0.4 ms of work).
SLICE = 1000
TRANSPORTS = ("ws", "sse", "poll", "stomp")


def _version() -> str:
    from clarion import __version__  # here: the package's root imports the hub

    return __version__


class NodeReporter:
    def __init__(self, hub: Hub, *, metrics_channel: bool = False) -> None:
        self.hub = hub
        engine = hub.engine
        self.directory: NodeDirectory = (
            engine.node_directory() if isinstance(engine, NodeDirectoryStorage) else LocalNodes()
        )
        self.metrics_channel = metrics_channel
        self.started = time.time()
        self.address: str | None = None  # host:port, once the server or a request tells
        self.engine_latency = LatencyHistogram()
        self.engine_errors = 0
        self._last: tuple[float, int, int, int, int] | None = None
        self.rates = {"deliveries": 0.0, "publications": 0.0, "resets": 0.0, "slow": 0.0}
        self._task: asyncio.Task[None] | None = None
        self._surveyor: asyncio.Task[None] | None = None
        self._surveyed_at = time.monotonic()
        # The busiest channels at the last pass: [name, subscribers, publications/s].
        self.busiest: list[list[Any]] = []

    @property
    def node(self) -> str:
        return self.directory.node

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="clarion-node-reporter")
            # Apart from the announce: the figures move on while the engine does not answer.
            self._surveyor = asyncio.create_task(self._survey_forever(), name="clarion-survey")

    async def close(self) -> None:
        task, self._task = self._task, None
        surveyor, self._surveyor = self._surveyor, None
        if task is None:
            return
        # Bounded, re-cancelling: a report goes through the engine, which may lose a cancel
        # (see clarion.tasks).
        await stop([task] if surveyor is None else [task, surveyor])
        with contextlib.suppress(ClarionError, OSError):
            await self.directory.withdraw()
        await self.directory.close()

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.report()
                failing = False
            except ClarionError as exc:
                self.engine_errors += 1
                if not failing:  # once per outage
                    log.warning("could not announce this node: %s", exc.message)
                failing = True
            except Exception:
                log.exception("node report failed")
            await asyncio.sleep(INTERVAL)

    async def _survey_forever(self) -> None:
        while True:
            try:
                await self.survey()
            except Exception:
                log.exception("the pass over this node's channels failed")
            await asyncio.sleep(INTERVAL)

    async def report(self) -> None:
        """One round: rates, the record announced (timed), the metrics sample published."""
        self._roll_rates()
        record = self.record()
        started = time.perf_counter()
        await self.directory.announce(record)
        self.engine_latency.observe(time.perf_counter() - started)
        if self.metrics_channel:
            # Straight to the engine: the hub's own figures are no publication of the
            # application's (no webhook, no publish listener sees them).
            hub = self.hub
            options = hub.options(METRICS_CHANNEL)
            await hub.engine.publish(METRICS_CHANNEL, self.sample(record), options)

    def _roll_rates(self) -> None:
        stats = self.hub.stats
        now = time.monotonic()
        figures = (
            sum(stats.deliveries.values()),
            stats.publications,
            sum(stats.resets.values()),
            stats.slow_disconnects,
        )
        if self._last is not None:
            then, *before = self._last
            seconds = max(now - then, 1e-3)
            for name, was, is_ in zip(self.rates, before, figures, strict=True):
                self.rates[name] = round((is_ - was) / seconds, 2)
        self._last = (now, *figures)

    async def survey(self) -> None:
        """One pass over this node's channels, :data:`SLICE` per loop iteration: each one's
        rate and its namespace's totals (``Activity.fold``), and the busiest of them."""
        hub = self.hub
        activity = hub.stats.activity
        now = time.monotonic()
        seconds = max(now - self._surveyed_at, 1e-3)
        self._surveyed_at = now
        channels = list(hub.local_channels.local.values())
        # The busiest so far, each a heap whose smallest is first: most channels are not
        # among them, and one comparison says so.
        by_subscribers: list[tuple[int, str]] = []
        by_rate: list[tuple[float, str]] = []
        top_subscribers, top_rate = TOP_BY_SUBSCRIBERS, TOP_BY_RATE
        fold = activity.fold
        for start in range(0, len(channels), SLICE):
            if start:
                await asyncio.sleep(0)
            for local in channels[start : start + SLICE]:
                fold(local, seconds)
                count, rate = len(local), local.rate
                if len(by_subscribers) < top_subscribers:
                    heapq.heappush(by_subscribers, (count, local.name))
                elif top_subscribers and count > by_subscribers[0][0]:
                    heapq.heapreplace(by_subscribers, (count, local.name))
                if rate <= 0:
                    continue
                if len(by_rate) < top_rate:
                    heapq.heappush(by_rate, (rate, local.name))
                elif top_rate and rate > by_rate[0][0]:
                    heapq.heapreplace(by_rate, (rate, local.name))
        now_held = hub.local_channels.local
        busiest = {name for _, name in by_subscribers}
        busiest.update(name for _, name in by_rate)
        self.busiest = [
            [name, len(now_held[name]), round(now_held[name].rate, 2)]
            for name in busiest
            if name in now_held  # gone meanwhile
        ]

    # ---- this node ----------------------------------------------------------------------------

    def connections(self) -> tuple[dict[str, int], int]:
        """Sessions by transport (operator sessions apart), and the operator sessions."""
        kinds = self.hub.registry.kinds
        others = (k for k, n in kinds.items() if n and k not in TRANSPORTS and k != OPERATORS)
        shown = (*TRANSPORTS, *others)
        return {kind: kinds.get(kind, 0) for kind in shown}, kinds.get(OPERATORS, 0)

    def record(self) -> dict[str, Any]:
        """This node as the others see it."""
        hub = self.hub
        connections, operators = self.connections()
        return {
            "id": self.node,
            "version": _version(),
            "address": self.address,
            "pid": os.getpid(),
            "engine": hub.engine.name,
            "started": round(self.started, 3),
            "connections": connections,
            "operators": operators,
            "channels_total": len(hub.local_channels.local),
            "deliveries_per_second": self.rates["deliveries"],
            "publications_per_second": self.rates["publications"],
            "channels": self.busiest,
        }

    def sample(self, record: dict[str, Any]) -> dict[str, Any]:
        """What the admin page charts, once a second per node."""
        p99 = self.hub.stats.latency.take_p99()
        return {
            "node": self.node,
            "time": round(time.time(), 3),
            "connections": sum(record["connections"].values()),
            "deliveries_per_second": self.rates["deliveries"],
            "publications_per_second": self.rates["publications"],
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "resets_per_second": self.rates["resets"],
            "slow_closes_per_second": self.rates["slow"],
        }

    # ---- the cluster ------------------------------------------------------------------------

    async def cluster(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every node the directory knows, this one first and as it is now; and why the
        others are missing, when the engine did not answer (this node is still shown: an
        outage is when its operator needs it most)."""
        now = time.time()
        mine = self.record()
        nodes = [self._shown(mine, now, now)]
        try:
            others = await self.directory.nodes()
        except ClarionError as exc:
            self.engine_errors += 1
            return nodes, exc.message
        for record, seen in others:
            if record.get("id") != self.node:
                nodes.append(self._shown(record, seen, now))
        return nodes, None

    @staticmethod
    def _shown(record: dict[str, Any], seen: float, now: float) -> dict[str, Any]:
        shown = {k: v for k, v in record.items() if k != "channels"}
        started = record.get("started")
        gone = now - seen > GONE_AFTER
        shown["state"] = "gone" if gone else "up"
        shown["last_seen"] = round(seen, 3)
        shown["uptime"] = (
            round((seen if gone else now) - started, 1)
            if isinstance(started, int | float)
            else None
        )
        return shown

    async def channels(
        self, node: str | None = None, search: str | None = None
    ) -> tuple[list[ChannelRow], bool]:
        """Channels with subscribers across the nodes that are up (or on ``node`` only), those
        whose name holds ``search`` if given, and whether the list is complete (each node
        announces its busiest ones only). Rows, not dictionaries: a node may hold a hundred
        thousand channels, and a caller shows a page of them."""
        now = time.time()
        mine = self.record()
        merged: dict[str, ChannelRow] = {}
        complete = True
        if node is None or node == self.node:
            me = [self.node]
            for name, local in self.hub.local_channels.local.items():
                if search is None or search in name:
                    merged[name] = [name, len(local), local.rate, me]
        if node != self.node:
            for record, seen in await self.directory.nodes():
                rid = record.get("id")
                if rid == mine["id"] or now - seen > GONE_AFTER or node not in (None, rid):
                    continue
                listed = record.get("channels") or []
                if record.get("channels_total", 0) > len(listed):
                    complete = False
                for name, count, rate in listed:
                    if search is not None and search not in name:
                        continue
                    row = merged.get(name)
                    if row is None:
                        merged[name] = [name, count, rate, [rid]]
                    else:
                        row[1] += count
                        # Every node with subscribers receives every publication: the
                        # channel's rate is the same on each, not a sum.
                        row[2] = max(row[2], rate)
                        row[3] = [*row[3], rid]  # a copy: the local rows share one list
        return list(merged.values()), complete


def channel_entry(row: ChannelRow) -> dict[str, Any]:
    """A row of :meth:`NodeReporter.channels` as ``GET /api/channels`` shows it."""
    name, subscribers, rate, nodes = row
    return {
        "channel": name,
        "subscribers": subscribers,
        "publication_rate": round(rate, 2),
        "nodes": nodes,
    }


class NodeCollector(Collector):
    """``/metrics``: which node this is, and the engine's round trips."""

    def __init__(self, reporter: NodeReporter) -> None:
        self.reporter = reporter

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        reporter = self.reporter
        info = GaugeMetricFamily(
            "clarion_node_info",
            "This node (one per hub process, worker or not): always 1",
            labels=["node", "version", "pid"],
        )
        info.add_metric([reporter.node, _version(), str(os.getpid())], 1)
        yield info
        latency = reporter.engine_latency
        yield HistogramMetricFamily(
            "clarion_engine_round_trip_seconds",
            "Round trips to the engine, measured by this node's announce once a second",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )
        yield CounterMetricFamily(
            "clarion_engine_errors",
            "Announces that failed (the engine did not answer)",
            value=reporter.engine_errors,
        )
