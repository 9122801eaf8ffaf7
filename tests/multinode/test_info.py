"""``GET /api/info`` and ``GET /api/channels`` across two ``clarion serve`` processes on Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import websockets

from ..conftest import timeout, until
from .conftest import Cluster
from .helpers import Node
from .test_cluster import Hubs, hubs

__all__ = ["hubs"]  # the fixture, for the Redis Cluster test (redis_cluster: conftest)

CONFIG = """
api_key = "k"
[namespaces.room]
anonymous = true
"""


async def get(hub: Node, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(timeout=timeout(5)) as http:
        r = await http.get(
            hub.http_url + path, params=params, headers={"Authorization": "apikey k"}
        )
        assert r.status_code == 200, r.text
        return r.json()


async def test_nodes_see_each_other_and_a_killed_one_goes(cluster: Cluster) -> None:
    first = await cluster.start(config=CONFIG)
    second = await cluster.start(config=CONFIG)
    second_id = (await get(second, "/api/info"))["node"]
    async with websockets.connect(second.ws_url, subprotocols=["clarion.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": "room:x"}))
        assert "ok" in json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))

        async def both() -> dict[str, Any] | None:
            info: dict[str, Any] = await get(first, "/api/info")
            nodes = {n["id"]: n for n in info["nodes"]}
            theirs = nodes.get(second_id)
            if theirs is None or theirs["connections"]["ws"] != 1:
                return None
            # The announce after the subscription (a record may be older than it).
            if not (await get(first, "/api/channels"))["channels"]:
                return None
            return info

        info = await until(both, 15, 0.1)
        assert info["engine"] == "redis" and len(info["nodes"]) == 2
        assert all(n["state"] == "up" for n in info["nodes"])
        theirs = next(n for n in info["nodes"] if n["id"] == second_id)
        assert theirs["address"] == f"127.0.0.1:{second.port}"
        assert theirs["pid"] == second.process.pid
        channels = await get(first, "/api/channels")
        assert [(c["channel"], c["subscribers"], c["nodes"]) for c in channels["channels"]] == [
            ("room:x", 1, [second_id])
        ]
        assert (await get(first, "/api/channels", node=info["node"]))["channels"] == []
    second.kill()

    async def gone() -> dict[str, Any] | None:
        info: dict[str, Any] = await get(first, "/api/info")
        states = {n["id"]: n["state"] for n in info["nodes"]}
        return info if states.get(second_id) == "gone" else None

    info = await until(gone, 15, 0.1)
    assert info["nodes"][0]["state"] == "up"
    assert (await get(first, "/api/channels"))["channels"] == []
    # Redis away: the node still answers for itself, and says why it is alone.
    cluster.redis.stop()
    info = await get(first, "/api/info")
    assert [n["id"] for n in info["nodes"]] == [info["node"]] and info["engine_error"]


async def test_nodes_see_each_other_on_a_redis_cluster(hubs: Hubs) -> None:
    first = await hubs.start()
    second = await hubs.start()
    second_id = (await get(second, "/api/info"))["node"]

    async def both() -> dict[str, Any] | None:
        info: dict[str, Any] = await get(first, "/api/info")
        states = {n["id"]: n["state"] for n in info["nodes"]}
        return info if states.get(second_id) == "up" and len(states) == 2 else None

    info = await until(both, 30, 0.1)
    assert info["engine"] == "redis"
