"""The node directory of each engine: announce, list, withdraw."""

from __future__ import annotations

import time

from clarion.engines.base import NodeDirectoryStorage
from clarion.engines.redis import RedisEngine
from clarion.settings import Settings

from ..redis_fixture import RedisServer
from .helpers import Subject


async def test_a_node_lists_its_record_and_withdraws(engine: Subject) -> None:
    assert isinstance(engine.engine, NodeDirectoryStorage)
    directory = engine.engine.node_directory()
    try:
        assert await directory.nodes() == []
        before = time.time()
        await directory.announce({"id": directory.node, "figure": 1})
        await directory.announce({"id": directory.node, "figure": 2})
        [(record, seen)] = await directory.nodes()
        assert record == {"id": directory.node, "figure": 2}
        assert before - 1 <= seen <= time.time() + 1  # Redis' clock on Redis: a second's leeway
        await directory.withdraw()
        assert await directory.nodes() == []
    finally:
        await directory.close()


async def test_redis_nodes_see_each_other(redis_server: RedisServer) -> None:
    one, other = (
        RedisEngine(redis_server.url, Settings()),
        RedisEngine(redis_server.url, Settings()),
    )
    mine, theirs = one.node_directory(), other.node_directory()
    try:
        assert mine.node != theirs.node
        await mine.announce({"id": mine.node})
        await theirs.announce({"id": theirs.node})
        for directory in (mine, theirs):
            ids = sorted(record["id"] for record, _ in await directory.nodes())
            assert ids == sorted([mine.node, theirs.node])
        await theirs.withdraw()
        assert [r["id"] for r, _ in await mine.nodes()] == [mine.node]
    finally:
        await mine.close()
        await theirs.close()
