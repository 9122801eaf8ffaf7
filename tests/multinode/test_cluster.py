"""Two hub processes on a Redis Cluster of three primaries with a replica each.

Sharded pub/sub carries each channel's publications within its shard; a primary killed with
SIGKILL while publications flow is replaced by its replica, and every subscriber ends with
every publication in order, or with a reset where the new primary never got some — never a
silent gap, never a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from redis.exceptions import ResponseError
from websockets.exceptions import ConnectionClosed

from clarion.engines.redis.keys import Keys
from clarion.protocol.codes import CloseCode

from ..conftest import timeout
from ..redis_cluster import RedisCluster
from .conftest import CONFIG
from .helpers import Node, Publisher, Tracker, eventually
from .test_multinode import run_trackers
from .test_revocation import SECRET, disconnect, outcome, token

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed"),
]

# Channels whose slots fall on different primaries of a three-primary cluster.
CHANNELS = ["a", "b", "c"]


class Hubs:
    def __init__(self, cluster: RedisCluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.nodes: list[Node] = []

    async def start(self, config_text: str = CONFIG, env: dict[str, str] | None = None) -> Node:
        config = self.tmp_path / f"clarion-{len(self.nodes)}.toml"
        config.write_text(config_text)
        engine = f"{self.cluster.url}?check_interval=0.5&presence_ttl=2"
        node = Node(engine, config, self.tmp_path, env or {})
        self.nodes.append(node)
        await node.wait_healthy(timeout=timeout(30))
        return node


async def user_connections(cluster: RedisCluster, user: str) -> int:
    """The user's connections as the hubs count them, read from the primary holding the key."""
    key = Keys("clarion").connections("user", user)
    total = 0
    for port in cluster.ports:
        client = aioredis.Redis(port=port)
        try:
            total += await client.zcard(key)
        except ResponseError:  # MOVED: another node's slot
            pass
        finally:
            await client.aclose()
    return total


@pytest.fixture
def hubs(redis_cluster: RedisCluster, tmp_path: Path) -> Iterator[Hubs]:
    h = Hubs(redis_cluster, tmp_path)
    try:
        yield h
    finally:
        for node in h.nodes:
            node.kill()


def test_the_channels_span_every_primary(redis_cluster: RedisCluster) -> None:
    owners = {redis_cluster.owner(f"clarion:{{{c}}}:meta") for c in CHANNELS}
    # Else the failover test would not cover shards that keep their primary.
    assert len(owners) == 3 and None not in owners


async def test_cross_node_delivery_presence_and_resume(hubs: Hubs) -> None:
    a = await hubs.start()
    b = await hubs.start()
    trackers = [Tracker(c) for c in CHANNELS for _ in range(2)]
    stop_clients, stop_publishing = asyncio.Event(), asyncio.Event()
    tasks = await run_trackers(trackers, [a.ws_url, b.ws_url], stop_clients)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
        # Presence on a channel, read on the other node.
        for channel in CHANNELS:

            async def listed(channel: str = channel) -> bool:
                r = await api.get("/api/presence", params={"channel": channel})
                return len(r.json()["clients"]) == 2

            await eventually(listed, timeout=timeout(10))
    publishers = [Publisher(b.http_url, c, rate=30) for c in CHANNELS]
    publishing = [asyncio.create_task(p.run(stop_publishing)) for p in publishers]
    await eventually(lambda: all(len(p.published) >= 20 for p in publishers), timeout=timeout(15))
    a.kill()  # its clients resume on b from their cursors
    await eventually(lambda: all(t.connections == 2 for t in trackers), timeout=timeout(15))
    moved = [len(p.published) for p in publishers]
    await eventually(
        lambda: all(len(p.published) >= n + 20 for p, n in zip(publishers, moved, strict=True)),
        timeout=timeout(15),
    )
    stop_publishing.set()
    await asyncio.gather(*publishing)
    last = {p.channel: p.published[-1] for p in publishers}
    assert all(p.failures == [] for p in publishers)
    await eventually(lambda: all(t.last == last[t.channel] for t in trackers), timeout=timeout(15))
    for t in trackers:
        t.assert_clean()
        assert t.resets == []
        first = t.offsets[0][1]
        assert [o for _, o in t.offsets] == list(range(first, last[t.channel][1] + 1))
    stop_clients.set()
    await asyncio.gather(*tasks)


async def test_a_primary_killed_during_publishing_leaves_no_silent_gap(hubs: Hubs) -> None:
    cluster = hubs.cluster
    a = await hubs.start()
    b = await hubs.start()
    trackers = [Tracker(c) for c in CHANNELS for _ in range(4)]
    stop_clients, stop_publishing = asyncio.Event(), asyncio.Event()
    # Half the subscribers start on each node.
    tasks = await run_trackers(trackers[::2], [a.ws_url, b.ws_url], stop_clients)
    tasks += await run_trackers(trackers[1::2], [b.ws_url, a.ws_url], stop_clients)
    # About 200 publications/s in all, through both nodes.
    publishers = [Publisher(node.http_url, c, rate=33) for c in CHANNELS for node in (a, b)]
    publishing = [asyncio.create_task(p.run(stop_publishing)) for p in publishers]
    await eventually(lambda: sum(len(p.published) for p in publishers) >= 200, timeout=timeout(20))
    victim = cluster.owner("clarion:{a}:meta")
    assert victim is not None
    cluster.kill(victim)
    before = sum(len(p.published) for p in publishers)
    # The replica takes over; publications to its channels fail until then, then go on.
    await eventually(
        lambda: cluster.owner("clarion:{a}:meta") not in (None, victim), timeout=timeout(30)
    )
    for_a = [p for p in publishers if p.channel == "a"]
    after_a = sum(len(p.published) for p in for_a)
    await eventually(
        lambda: sum(len(p.published) for p in for_a) >= after_a + 100, timeout=timeout(30)
    )
    assert sum(len(p.published) for p in publishers) > before
    stop_publishing.set()
    await asyncio.gather(*publishing)

    # Every subscriber reaches the newest stored publication of its channel (a publish that
    # failed for its caller may still have been stored).
    last: dict[str, tuple[str, int]] = {}
    async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
        for channel in CHANNELS:
            params = {"channel": channel, "limit": "1", "reverse": "1"}
            newest = (await api.get("/api/history", params=params)).json()["publications"][0]
            last[channel] = (newest["epoch"], newest["offset"])
    await eventually(lambda: all(t.last == last[t.channel] for t in trackers), timeout=timeout(20))
    for t in trackers:
        t.assert_clean()  # no gap, no duplicate, no epoch change without a reset
        if t.channel != "a":
            assert t.resets == []  # their shards were not touched
    stop_clients.set()
    await asyncio.gather(*tasks)


async def test_a_slot_moved_to_another_primary_keeps_every_subscriber_whole(hubs: Hubs) -> None:
    cluster = hubs.cluster
    a = await hubs.start()
    b = await hubs.start()
    trackers = [Tracker("a") for _ in range(4)]
    stop_clients, stop_publishing = asyncio.Event(), asyncio.Event()
    tasks = await run_trackers(trackers[::2], [a.ws_url, b.ws_url], stop_clients)
    tasks += await run_trackers(trackers[1::2], [b.ws_url, a.ws_url], stop_clients)
    publishers = [Publisher(node.http_url, "a", rate=50) for node in (a, b)]
    publishing = [asyncio.create_task(p.run(stop_publishing)) for p in publishers]
    await eventually(lambda: sum(len(p.published) for p in publishers) >= 100, timeout=timeout(20))
    source = cluster.owner("clarion:{a}:meta")
    target = cluster.owner("clarion:{b}:meta")
    assert target is not None
    cluster.move_slot("clarion:{a}:meta", target)  # keys, then the slot: MOVED and ASK meanwhile
    assert cluster.owner("clarion:{a}:meta") == target != source
    goals = [(p, len(p.published) + 100) for p in publishers]
    await eventually(lambda: all(len(p.published) >= n for p, n in goals), timeout=timeout(30))
    stop_publishing.set()
    await asyncio.gather(*publishing)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
        params = {"channel": "a", "limit": "1", "reverse": "1"}
        newest = (await api.get("/api/history", params=params)).json()["publications"][0]
    last = (newest["epoch"], newest["offset"])
    await eventually(lambda: all(t.last == last for t in trackers), timeout=timeout(20))
    for t in trackers:
        t.assert_clean()
        assert t.resets == []  # the stream moved with the slot: nothing to reset
    stop_clients.set()
    await asyncio.gather(*tasks)


async def test_shared_connection_caps_and_revocations_span_the_cluster(hubs: Hubs) -> None:
    """A per-user cap counts the user's connections on both hubs; a token revoked through one
    hub is refused by the other, and the user's open session there is closed."""
    config = f'token_secret = "{SECRET}"\napi_key = "k"\n' + CONFIG
    env = {"CLARION_LIMITS__MAX_CONNECTIONS_PER_USER": "2"}
    a = await hubs.start(config, env)
    b = await hubs.start(config, env)
    headers = {"Authorization": f"Bearer {token('u1', 'j1')}"}
    first = await websockets.connect(a.ws_url, additional_headers=headers)
    second = await websockets.connect(b.ws_url, additional_headers=headers)
    try:
        for ws in (first, second):  # both admitted: one per hub, within the cap of 2
            await ws.send('{"id": 1, "op": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), timeout(5))) == {"id": 1, "ok": {}}

        async def both_counted() -> bool:
            # A session is counted cluster-wide just after it opens: until both are, a third
            # could be counted before the second, and the second be the one refused.
            return await user_connections(hubs.cluster, "u1") == 2

        await eventually(both_counted, timeout=timeout(10))
        async with websockets.connect(a.ws_url, additional_headers=headers) as third:
            push = json.loads(await asyncio.wait_for(third.recv(), timeout(5)))
            assert push["disconnect"]["code"] == CloseCode.TOO_MANY_CONNECTIONS
    finally:
        await first.close()
        await second.close()

    async def admitted() -> bool:  # closed on both hubs: the slots are given back
        return await outcome(b, token("u1", "j2")) == "ok"

    await eventually(admitted, timeout=timeout(10))

    # Revoked through a: the open session of that user on b is closed, new ones refused.
    headers = {"Authorization": f"Bearer {token('alice', 'j3')}"}
    async with websockets.connect(
        b.ws_url, subprotocols=["clarion.v1"], additional_headers=headers
    ) as open_on_b:  # type: ignore[list-item]
        await open_on_b.send('{"id": 1, "op": "ping"}')
        assert "ok" in json.loads(await asyncio.wait_for(open_on_b.recv(), timeout(5)))
        await disconnect(a, user="alice", until=time.time() + 60)
        await disconnect(a, jti="j-bob")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(open_on_b.recv(), timeout(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4501
    for node in (a, b):
        assert await outcome(node, token("alice", "j4")) == 4501
        assert await outcome(node, token("bob", "j-bob")) == 4501
        assert await outcome(node, token("bob", "j-bob-2")) == "ok"  # only that token
