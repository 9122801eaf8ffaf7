"""Server-side subscriptions reach sessions on every node through the engine."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import websockets

from ..conftest import timeout
from .conftest import Cluster
from .helpers import Node

SECRET = "a-long-enough-test-secret-0123456789"
CONFIG = f"""
token_secret = "{SECRET}"
api_key = "k"
"""


async def api(node: Node, path: str, **body: Any) -> None:
    async with httpx.AsyncClient(timeout=timeout(5)) as http:
        r = await http.post(node.http_url + path, json=body, headers={"Authorization": "apikey k"})
        assert r.status_code == 200, r.text


async def test_the_backend_subscribes_a_user_on_another_node(cluster: Cluster) -> None:
    first = await cluster.start(config=CONFIG)
    second = await cluster.start(config=CONFIG)
    claims = {"sub": "alice", "channels": [], "exp": int(time.time()) + 600}
    headers = {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}
    async with websockets.connect(
        second.ws_url, subprotocols=["clarion.v1"], additional_headers=headers
    ) as ws:  # type: ignore[list-item]

        async def recv() -> dict[str, Any]:
            msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
            return msg

        await ws.send(json.dumps({"id": 1, "op": "ping"}))
        assert (await recv())["id"] == 1
        await api(first, "/api/subscribe", user="alice", channel="room:1")
        assert (await recv())["subscribe"]["channel"] == "room:1"
        async with httpx.AsyncClient(timeout=timeout(5)) as http:
            r = await http.post(
                first.http_url + "/api/publish",
                json={"channel": "room:1", "data": "across nodes"},
                headers={"Authorization": "apikey k"},
            )
            assert r.status_code == 200
        assert (await recv())["data"] == "across nodes"
        await api(first, "/api/unsubscribe", user="alice", channel="room:1")
        assert (await recv()) == {"unsubscribe": {"channel": "room:1", "reason": "server"}}
