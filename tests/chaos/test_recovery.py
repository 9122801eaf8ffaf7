"""A node that missed publications and cannot read them back resets its subscribers with a
cursor past the gap — the one they then continue from — never one before it.

Redis's ACLs make the faults exact: node A connects as its own Redis user; taking that user's
channel permission away drops A's pub/sub link (publications made meanwhile never reach it),
and taking ``XRANGE``/``XREVRANGE`` away makes every read back from history fail.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from ..conftest import clarion_server, timeout
from ..multinode.conftest import CONFIG, Cluster
from ..multinode.helpers import Node, Tracker, eventually
from ..multinode.test_multinode import run_trackers
from ..support.history import PublisherLog, assert_no_findings

pytestmark = [
    pytest.mark.timeout(int(timeout(60))),
    clarion_server("real `clarion serve` processes on a faulty Redis"),
]


async def _none(count: Any) -> bool:
    return await count == 0


async def pubsub_links_of_a(redis: aioredis.Redis) -> int:
    clients = (await redis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")).decode()
    return sum(" user=a " in f" {line} " for line in clients.splitlines())


async def test_a_gap_that_cannot_be_read_back_is_reset_past_the_gap(cluster: Cluster) -> None:
    redis = aioredis.Redis(port=cluster.redis.port)
    await redis.execute_command("ACL", "SETUSER", "a", "on", ">pw-a", "~*", "&*", "+@all")
    config = cluster.tmp_path / "a.toml"
    config.write_text(CONFIG)
    url = cluster.redis.url.replace("redis://", "redis://a:pw-a@")
    a = Node(f"{url}?check_interval=0.5&presence_ttl=2", config, cluster.tmp_path, {})
    cluster.nodes.append(a)
    await a.wait_healthy()
    b = await cluster.start()
    tracker = Tracker("g")
    stop = asyncio.Event()
    tasks = await run_trackers([tracker], [a.ws_url], stop)
    log = PublisherLog()
    try:
        async with httpx.AsyncClient(base_url=b.http_url, timeout=timeout(5)) as api:

            async def publish(n: int) -> None:
                r = await api.post("/api/publish", json={"channel": "g", "data": n})
                assert r.status_code == 200, r.text
                log.ack("g", r.json()["epoch"], r.json()["offset"], n)

            await publish(1)
            await eventually(lambda: len(tracker.offsets) == 1, timeout=timeout(10))
            # A hears nothing more, and can read nothing back.
            await redis.execute_command(
                "ACL", "SETUSER", "a", "resetchannels", "-xrange", "-xrevrange"
            )
            await eventually(
                lambda: _none(pubsub_links_of_a(redis)), timeout=timeout(10), interval=0.05
            )
            for n in (2, 3):
                await publish(n)
            await redis.execute_command("ACL", "SETUSER", "a", "&*")
            await eventually(lambda: pubsub_links_of_a(redis), timeout=timeout(15))
            await publish(4)  # after 1: a gap that history cannot fill for A
            await eventually(lambda: tracker.resets == ["lost"], timeout=timeout(15))
            await eventually(lambda: tracker.offsets[-1][1] == 4, timeout=timeout(10))
        # Told of 2 and 3 by the reset, then 4: nothing silent, nothing needless.
        assert_no_findings([tracker.log], [log])
        assert [o for _, o in tracker.offsets] == [1, 4]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
