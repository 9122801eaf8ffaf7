"""Faults between hubs and Redis, and hubs killed, while publishing goes on: every client ends
with every acknowledged publication, or an explicit reset over it — never a silent gap.

Two ``clarion serve`` processes share one ``redis-server``; WebSocket trackers record what they
receive and the history checker (:mod:`tests.support.history`) judges their logs against what
the publisher was acknowledged. ``CLARION_CHAOS_SECONDS=60`` runs the fault loops for longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..conftest import CHAOS_SECONDS, clarion_server, timeout
from ..multinode.conftest import CONFIG, Cluster
from ..multinode.helpers import Node, Publisher, Tracker, assert_history, eventually
from ..multinode.test_multinode import run_trackers
from ..redis_fixture import REDIS_SERVER, RedisServer
from ..support.proxy import FaultProxy

pytestmark = [
    pytest.mark.timeout(int(timeout(60 + 2 * CHAOS_SECONDS))),
    clarion_server("real `clarion serve` processes on a faulty Redis"),
]

QUERY = "check_interval=0.5&presence_ttl=2"


async def more(publisher: Publisher, n: int) -> None:
    """Wait for ``n`` more acknowledged publications (counted, not timed: a loaded machine
    publishes fewer per second)."""
    target = len(publisher.published) + n
    await eventually(lambda: len(publisher.published) >= target, timeout=timeout(15))


async def publish_last(url: str, channel: str) -> tuple[str, int]:
    """One more publication once the faults are over, retried until a node takes it."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout(5)) as api:
        deadline = time.monotonic() + timeout(15)
        while True:
            r = await api.post("/api/publish", json={"channel": channel, "data": "last"})
            if r.status_code == 200:
                return r.json()["epoch"], r.json()["offset"]
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.1)


async def finish(
    trackers: list[Tracker],
    publisher: Publisher,
    publishing: asyncio.Task[None],
    stop_publisher: asyncio.Event,
    url: str,
) -> tuple[str, int]:
    stop_publisher.set()
    await publishing
    last = await publish_last(url, trackers[0].channel)
    publisher.log.ack(trackers[0].channel, last[0], last[1], "last")
    await eventually(lambda: all(t.last == last for t in trackers), timeout=timeout(20))
    assert_history(trackers, [publisher])
    return last


async def test_resets_and_stalls_between_a_hub_and_redis(cluster: Cluster) -> None:
    """The subscribers' node loses its Redis link (RST), or hears nothing on it for a while,
    again and again; the publishers' node goes on publishing."""
    proxy = await FaultProxy(cluster.redis.port).start()
    a = Node(f"redis://127.0.0.1:{proxy.port}/0?{QUERY}", _config(cluster), cluster.tmp_path, {})
    cluster.nodes.append(a)
    await a.wait_healthy()
    b = await cluster.start()
    trackers = [Tracker("c") for _ in range(4)]
    stop_clients, stop_publisher = asyncio.Event(), asyncio.Event()
    tasks = await run_trackers(trackers, [a.ws_url], stop_clients)
    publisher = Publisher(b.http_url, "c", rate=100)
    publishing = asyncio.create_task(publisher.run(stop_publisher))
    try:
        rounds = max(3, int(CHAOS_SECONDS / 2))
        for i in range(rounds):
            await more(publisher, 30)
            if i % 3 == 2:
                proxy.stall()  # silence, no FIN: as a half-open link
                await asyncio.sleep(1.5)
                proxy.resume()
            else:
                # The node reconnects when it next needs Redis: reset it once it has.
                await eventually(lambda: proxy.connections >= 1, timeout=timeout(15))
                assert proxy.reset() >= 1
        await more(publisher, 30)
        await finish(trackers, publisher, publishing, stop_publisher, b.http_url)
        assert publisher.failures == []  # b's own link was never touched
    finally:
        stop_clients.set()
        stop_publisher.set()
        await asyncio.gather(*tasks, publishing, return_exceptions=True)
        await proxy.close()


async def test_one_of_two_nodes_killed_again_and_again(cluster: Cluster) -> None:
    """kill -9 of one node every couple of seconds, restarted on its port each time; clients
    move between the two nodes and resume from their cursors."""
    a = await cluster.start()
    b = await cluster.start()
    trackers = [Tracker("k") for _ in range(6)]
    stop_clients, stop_publisher = asyncio.Event(), asyncio.Event()
    tasks = await run_trackers(trackers, [a.ws_url, b.ws_url], stop_clients)
    publisher = Publisher(b.http_url, "k", rate=100)
    publishing = asyncio.create_task(publisher.run(stop_publisher))
    kills = max(2, int(CHAOS_SECONDS / 3))
    try:
        for _ in range(kills):
            await more(publisher, 50)
            a.kill()
            a = Node(cluster.engine_url(), _config(cluster), cluster.tmp_path, {}, port=a.port)
            cluster.nodes.append(a)
            await a.wait_healthy()
        await more(publisher, 50)
        await finish(trackers, publisher, publishing, stop_publisher, b.http_url)
        assert publisher.failures == []
        assert sum(t.connections for t in trackers) > len(trackers)  # they did move
    finally:
        stop_clients.set()
        stop_publisher.set()
        await asyncio.gather(*tasks, publishing, return_exceptions=True)


@pytest.fixture
def restartable_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(persistent=request.param)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.mark.parametrize(
    "restartable_redis", [True, False], ids=["persistent", "volatile"], indirect=True
)
async def test_redis_restarted_while_publishing(
    restartable_redis: RedisServer, tmp_path: Path
) -> None:
    """Persistent, Redis comes back with its streams: clients recover without a reset.
    Volatile, it comes back empty: clients are reset to the new epoch. Silent in neither."""
    persistent = restartable_redis.persistent
    cluster = Cluster(restartable_redis, tmp_path)
    try:
        a = await cluster.start()
        b = await cluster.start()
        trackers = [Tracker("r") for _ in range(4)]
        stop_clients, stop_publisher = asyncio.Event(), asyncio.Event()
        tasks = await run_trackers(trackers, [a.ws_url, b.ws_url], stop_clients)
        publisher = Publisher(b.http_url, "r", rate=100)
        publishing = asyncio.create_task(publisher.run(stop_publisher))
        try:
            await eventually(lambda: len(publisher.published) >= 50)
            cluster.redis.restart()
            await more(publisher, 50)
            await finish(trackers, publisher, publishing, stop_publisher, b.http_url)
            resets = {r for t in trackers for r in t.resets}
            assert resets == (set() if persistent else {"epoch"})
        finally:
            stop_clients.set()
            stop_publisher.set()
            await asyncio.gather(*tasks, publishing, return_exceptions=True)
    finally:
        with contextlib.suppress(Exception):
            cluster.stop_all()


def _config(cluster: Cluster) -> Path:
    path = cluster.tmp_path / "chaos.toml"
    path.write_text(CONFIG)
    return path
