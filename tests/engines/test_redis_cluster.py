"""The Redis engine on a Redis Cluster of three primaries, started by the test."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from clarion.engines.base import UNWRITTEN_TTL, PresenceEntry
from clarion.engines.redis import RedisEngine
from clarion.engines.redis.connect import parse_url
from clarion.engines.redis.sharded import ShardedLink
from clarion.errors import ConfigError
from clarion.settings import NamespaceOptions, Settings

from ..redis_cluster import RedisCluster, command
from .helpers import RecordingSink, eventually

pytestmark = [
    pytest.mark.timeout(90),
    # One worker runs the module: its tests share one cluster (a module fixture is per worker).
    pytest.mark.xdist_group("redis-cluster"),
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="redis-server and redis-cli are needed",
    ),
]

OPTS = NamespaceOptions()
CHANNELS = ["a", "b", "c"]  # one on each primary (checked by the multinode cluster test)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster(primaries=3, replicas=0)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
async def nodes(redis_cluster: RedisCluster) -> AsyncIterator[Callable[..., Any]]:
    started: list[RedisEngine] = []
    prefix = f"t{len(started)}{id(started)}"  # a key prefix of this test's own

    async def start(query: str = "") -> tuple[RedisEngine, RecordingSink]:
        url = f"{redis_cluster.url}?check_interval=0.3&presence_ttl=5&prefix={prefix}&{query}"
        engine = RedisEngine(url, Settings())
        sink = RecordingSink()
        await engine.start(sink)
        started.append(engine)
        return engine, sink

    yield start
    for engine in started:
        await engine.close()


def test_cluster_urls() -> None:
    target = parse_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001?pool_size=4")
    assert target.cluster == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert target.pool_size == 4
    for bad in ("redis+cluster://10.0.0.1", "redis+cluster://10.0.0.1:7000/3"):
        with pytest.raises(ConfigError):
            parse_url(bad)


async def test_publications_cross_nodes_on_every_shard(nodes: Callable[..., Any]) -> None:
    a, a_sink = await nodes()
    b, _ = await nodes()
    for channel in CHANNELS:
        await a.subscribe(channel)
    for channel in CHANNELS:
        for i in range(3):
            await b.publish(channel, i, OPTS)
    # Every publication arrives; the position check (every 0.3 s here) may read some back before
    # pub/sub brings them too, on a busy machine: such repeats are the hub's to drop.
    await eventually(lambda: all(sorted(set(a_sink.offsets(c))) == [1, 2, 3] for c in CHANNELS))
    assert all(set(a_sink.offsets(c)) == {1, 2, 3} for c in CHANNELS)
    await b.broadcast_event("a", "join", {"client": "x"})
    await eventually(lambda: ("a", "join", {"client": "x"}) in a_sink.events)
    await b.broadcast_control("disconnect", {"user": "u"})
    await eventually(lambda: ("disconnect", {"user": "u"}) in a_sink.controls)
    history = await a.history("b", OPTS)
    assert [p.data for p in history.publications] == [0, 1, 2]
    assert await a.healthy() and await b.healthy()


async def test_a_burst_of_calls_queues_for_the_pool(nodes: Callable[..., Any]) -> None:
    """Far more concurrent calls than pool_size: every one waits its turn, none fails."""
    a, sink = await nodes("pool_size=2")
    assert a.limits is not None
    n = 200
    for channel in CHANNELS:
        await a.subscribe(channel)
    results = await asyncio.gather(
        *(a.limits.acquire_connection("ip", "10.0.0.1", f"s{i}", n) for i in range(n)),
        *(a.presence_add(CHANNELS[i % 3], PresenceEntry(f"s{i}", None)) for i in range(n)),
        *(a.history(CHANNELS[i % 3], OPTS, limit=0) for i in range(n)),
        *(a.publish(CHANNELS[i % 3], i, OPTS) for i in range(n)),
    )
    assert results[:n] == [True] * n
    assert await a.limits.connection_count("ip", "10.0.0.1") == n
    assert sum([len(await a.presence(c)) for c in CHANNELS]) == n
    # Repeats read back by the position check before pub/sub brought them are the hub's to drop.
    await eventually(lambda: sum(len(set(sink.offsets(c))) for c in CHANNELS) == n)


async def test_batches_wait_for_a_connection_while_redis_is_slow(
    nodes: Callable[..., Any], redis_cluster: RedisCluster
) -> None:
    """Redis stalls while calls arrive one loop iteration apart: each iteration's batch waits
    for one of pool_size slots instead of failing for want of a connection."""
    a, _ = await nodes("pool_size=2")
    for port in redis_cluster.ports:
        command(port, "CLIENT", "PAUSE", "400", "ALL")
    calls = []
    for i in range(40):
        calls.append(asyncio.ensure_future(a.history(CHANNELS[i % 3], OPTS, limit=0)))
        await asyncio.sleep(0.002)  # every call in a batch of its own
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []


async def test_a_read_of_an_unwritten_channel_leaves_a_short_lived_meta_on_every_primary(
    redis_cluster: RedisCluster, nodes: Callable[..., Any]
) -> None:
    """The scripts are the cluster's too: a read's meta lives 120 s, a publication's a day."""
    engine, _ = await nodes()
    for channel in CHANNELS:  # one on each primary
        await engine.history(channel, OPTS, limit=0)

    def ttls() -> list[int]:
        port = redis_cluster.ports[0]
        return [
            int(command(port, "-c", "PTTL", engine.keys.meta(channel)).strip())
            for channel in CHANNELS
        ]

    assert all(0 < ttl <= UNWRITTEN_TTL * 1000 for ttl in ttls()), ttls()
    for channel in CHANNELS:
        await engine.publish(channel, 1, OPTS)
    assert all(ttl > OPTS.history_meta_ttl * 1000 - 60_000 for ttl in ttls()), ttls()


async def test_a_channel_subscribed_again_while_it_moves_stays_subscribed(
    redis_cluster: RedisCluster, nodes: Callable[..., Any]
) -> None:
    """Its slot moved, the node subscribes the channel on the new primary's link. If the
    channel is meanwhile unsubscribed and subscribed again (its subscribers' churn), the new
    subscription is on that same link: the move must not take it back as if no one wanted it."""
    engine, _ = await nodes()
    sharded = engine._link
    assert isinstance(sharded, ShardedLink)
    channel = f"moving-{os.urandom(4).hex()}"  # a slot of its own to move: the cluster is shared
    key = engine.keys.meta(channel)
    source = redis_cluster.owner(key)
    on_target = next(c for c in CHANNELS if redis_cluster.owner(c) != source)
    target = redis_cluster.owner(on_target)
    assert target is not None
    await engine.subscribe(channel)
    await engine.subscribe(on_target)  # the target's link, made
    link = next(link for name, link in sharded._links.items() if name.endswith(f":{target}"))
    real = link.subscribe
    entered, go = asyncio.Event(), asyncio.Event()

    async def first_held(name: str, wait: float) -> None:
        if name == channel and not entered.is_set():
            entered.set()
            await go.wait()  # the move's own, until the churn below is through
        await real(name, wait)

    link.subscribe = first_held  # type: ignore[method-assign]
    redis_cluster.move_slot(key, target)
    sharded._topology_changed()
    await asyncio.wait_for(entered.wait(), 20)
    await engine.unsubscribe(channel)
    await engine.subscribe(channel)
    go.set()
    assert sharded._rehoming is not None
    await asyncio.wait_for(sharded._rehoming, 20)
    assert channel in link.wanted
    subscribed = command(target, "PUBSUB", "SHARDCHANNELS", engine.keys.pubsub(channel))
    assert engine.keys.pubsub(channel) in subscribed
