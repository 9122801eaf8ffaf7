"""Several ``clarion serve`` processes sharing one test-started ``redis-server``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..redis_cluster import RedisCluster
from ..redis_fixture import RedisServer, redis_server
from .helpers import Node

__all__ = ["Cluster", "cluster", "redis_cluster", "redis_server"]

CONFIG = """
[namespaces.default]
history_size = 10000
"""


class Cluster:
    def __init__(self, redis: RedisServer, tmp_path: Path) -> None:
        self.redis = redis
        self.tmp_path = tmp_path
        self.nodes: list[Node] = []

    def engine_url(self, query: str = "check_interval=0.5&presence_ttl=2") -> str:
        return f"{self.redis.url}?{query}"

    async def start(
        self, *, config: str = CONFIG, query: str | None = None, env: dict[str, str] | None = None
    ) -> Node:
        path = self.tmp_path / f"clarion-{len(self.nodes)}.toml"
        path.write_text(config)
        engine = self.engine_url() if query is None else self.engine_url(query)
        node = Node(engine, path, self.tmp_path, env or {})
        self.nodes.append(node)
        await node.wait_healthy()
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_server, tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    """Three primaries with a replica each, started by the test."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    cluster = RedisCluster(primaries=3, replicas=1)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.cleanup()
