"""Connection bursts on the Redis engine: a thousand clients at once, none refused or lost.

A deploy or a network blip makes every client of a node connect within a second. Each
connection costs the node several Redis calls (shared connection counts, history, presence);
they must queue for the node's bounded pool of Redis connections, not fail.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from clarion import mint_token

from ..conftest import heavy, timeout
from ..support.history import assert_no_findings
from .conftest import Cluster
from .helpers import Node, Publisher, eventually
from .swarm import Subscriber, connect_all

pytestmark = [pytest.mark.timeout(int(timeout(120))), heavy]

CLIENTS = 1000
SECRET = "s" * 32
API_KEY = "k" * 32
CONFIG = """
[limits]
max_connections_per_ip = 5000

[namespaces.default]
history_size = 10000
"""


def assert_no_errors_logged(*nodes: Node) -> None:
    for node in nodes:
        log = node.log_path.read_text(errors="replace")
        bad = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
        assert bad == [], "\n".join(bad[:10])


def assert_clean(subs: list[Subscriber]) -> None:
    broken = {i: s.anomalies() for i, s in enumerate(subs) if s.anomalies()}
    assert broken == {}, f"{len(broken)} of {len(subs)} clients: {list(broken.items())[:5]}"


async def test_a_thousand_clients_subscribe_at_once_to_one_redis_node(cluster: Cluster) -> None:
    env = {"CLARION_TOKEN_SECRET": SECRET, "CLARION_API_KEY": API_KEY}
    node = await cluster.start(config=CONFIG, env=env)
    # Tokens for 100 users: each connection is counted per user and per address in Redis.
    tokens = [mint_token(SECRET, f"u{i}", ["burst:*"]) for i in range(100)]
    subs = [Subscriber("burst:1", tokens[i % 100]) for i in range(CLIENTS)]
    await connect_all(subs, [node.port], timeout=timeout(60))
    assert_clean(subs)
    assert all(s.last is not None for s in subs)

    headers = {"Authorization": f"apikey {API_KEY}"}
    async with httpx.AsyncClient(
        base_url=node.http_url, timeout=timeout(10), headers=headers
    ) as api:
        r = await api.post("/api/publish", json={"channel": "burst:1", "data": "to all"})
        assert r.status_code == 200
        offset = r.json()["offset"]
        await eventually(
            lambda: all(s.last is not None and s.last[1] == offset for s in subs),
            timeout=timeout(20),
        )
        assert [s.received for s in subs] == [1] * CLIENTS
        presence = (await api.get("/api/presence", params={"channel": "burst:1"})).json()
        assert len(presence["clients"]) == CLIENTS

        # All of them gone at once: every shared count and presence entry is released.
        for s in subs:
            s.drop()
        redis = aioredis.Redis(port=cluster.redis.port)
        try:

            async def released() -> bool:
                counts = [await redis.zcard("clarion:{conn:ip:127.0.0.1}")]
                counts += [await redis.zcard(f"clarion:{{conn:user:u{i}}}") for i in range(100)]
                r = await api.get("/api/presence", params={"channel": "burst:1"})
                return sum(counts) == 0 and r.json()["clients"] == []

            await eventually(released, timeout=timeout(20), interval=0.2)
        finally:
            await redis.aclose()
    assert_clean(subs)
    assert_no_errors_logged(node)


async def test_a_thousand_clients_dropped_at_once_resume_on_the_other_node(
    cluster: Cluster,
) -> None:
    """The reconnect storm on two nodes: every client resumes from its cursor on the other
    node while publishing goes on, with no gap, duplicate, reset or refused session."""
    a = await cluster.start(config=CONFIG)
    b = await cluster.start(config=CONFIG)
    subs = [Subscriber("storm") for _ in range(CLIENTS)]
    await connect_all(subs, [a.port, b.port], timeout=timeout(60))
    assert_clean(subs)

    stop = asyncio.Event()
    publisher = Publisher(a.http_url, "storm", rate=50)
    publishing = asyncio.create_task(publisher.run(stop))
    await eventually(lambda: len(publisher.published) >= 20, timeout=timeout(10))
    for s in subs:
        s.drop()
    dropped_at = len(publisher.published)
    # Away while publishing goes on: what is published meanwhile must come from history.
    await eventually(lambda: len(publisher.published) >= dropped_at + 10, timeout=timeout(10))
    await connect_all(subs, [b.port, a.port], timeout=timeout(60))
    await asyncio.sleep(1.0)
    stop.set()
    await publishing
    assert publisher.failures == []
    last = publisher.published[-1]
    await eventually(lambda: all(s.last == last for s in subs), timeout=timeout(30))
    assert_clean(subs)
    assert_no_findings([s.log for s in subs], [publisher.log])
    assert {s.connections for s in subs} == {2}
    # Every client got every publication since its first subscribe, exactly once.
    assert {s.received for s in subs} == {len(publisher.published)}
    assert_no_errors_logged(a, b)


async def test_with_redis_down_each_subscribe_fails_alone_and_sessions_stay(
    cluster: Cluster,
) -> None:
    """Redis really unavailable: every subscribe is answered engine_unavailable, no session is
    closed, the outage of the shared counts is logged once; once Redis is back, all subscribe."""
    node = await cluster.start(config=CONFIG)
    cluster.redis.stop()
    subs = [Subscriber("down") for _ in range(100)]
    await connect_all(subs, [node.port], timeout=timeout(30))
    assert {s.errors[0]["code"] for s in subs if s.errors} == {"engine_unavailable"}
    assert all(len(s.errors) == 1 and s.closes == [] for s in subs)
    await asyncio.sleep(0.5)  # a close would have arrived by now
    assert all(s.protocol is not None and not s.protocol.lost for s in subs)
    cluster.redis.start()
    await node.wait_healthy()
    again = [Subscriber("down") for _ in range(100)]
    await connect_all(again, [node.port], timeout=timeout(30))
    assert_clean(again)
    log = node.log_path.read_text(errors="replace")
    assert log.count("shared connection counts unavailable") == 1
    assert "shared connection counts available again" in log
    assert_no_errors_logged(node)
