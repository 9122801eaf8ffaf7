"""Webhooks on a Redis Cluster: the shared outbox, each endpoint's keys in one slot."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..redis_cluster import RedisCluster
from .conftest import register
from .receiver import Receiver
from .test_redis_outbox import QUERY, first_seen

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="redis-server and redis-cli are needed",
    ),
]


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster(primaries=3, replicas=0)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.cleanup()


async def test_an_endpoint_on_a_cluster_gets_every_publication_in_order(
    redis_cluster: RedisCluster, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    engine = f"{redis_cluster.url}?{QUERY}"
    a = await make_hub(engine=engine, data_dir=str(tmp_path / "a"))
    b = await make_hub(engine=engine, data_dir=str(tmp_path / "b"))
    async with Receiver() as receiver:
        created = await register(a, receiver, ["orders:*"])
        async with b.http() as http:
            listed = (await http.get("/api/webhooks")).json()["webhooks"]
        assert [w["id"] for w in listed] == [created["id"]]
        # Channels of several slots, published through both nodes.
        for i in range(30):
            await (a if i % 2 == 0 else b).publish(f"orders:{i % 3}", {"i": i})
        await receiver.wait_acknowledged(30, wait=20)
        assert all(r.verified for r in receiver.received)
        order = [r.payload["data"]["i"] for r in receiver.acknowledged]
        assert list(dict.fromkeys(order)) == list(range(30))
        assert len(first_seen(receiver.received)) == 30
        # Deleted through the other node: gone for both.
        async with b.http() as http:
            assert (await http.delete(f"/api/webhooks/{created['id']}")).status_code == 200
        async with a.http() as http:
            assert (await http.get("/api/webhooks")).json()["webhooks"] == []
