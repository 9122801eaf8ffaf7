"""Revocations last: every node refuses them, nodes started afterwards and restarted ones too."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio as redis
import websockets
from websockets.exceptions import ConnectionClosed

from clarion.engines.redis import scripts
from clarion.engines.redis.keys import Keys

from ..conftest import timeout
from .conftest import Cluster
from .helpers import Node

SECRET = "a-long-enough-test-secret-0123456789"
CONFIG = f"""
token_secret = "{SECRET}"
api_key = "k"
"""


def token(user: str, jti: str, ttl: int = 600) -> str:
    claims = {"sub": user, "jti": jti, "channels": ["*"], "exp": int(time.time()) + ttl}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def disconnect(node: Node, **body: Any) -> None:
    async with httpx.AsyncClient(timeout=timeout(5)) as http:
        r = await http.post(
            node.http_url + "/api/disconnect", json=body, headers={"Authorization": "apikey k"}
        )
        assert r.status_code == 200, r.text


async def outcome(node: Node, tok: str) -> int | str:
    """``"ok"`` when a session with ``tok`` answers a ping, else the close code it gets."""
    headers = {"Authorization": f"Bearer {tok}"}
    async with websockets.connect(
        node.ws_url, subprotocols=["clarion.v1"], additional_headers=headers
    ) as ws:  # type: ignore[list-item]
        try:
            await ws.send(json.dumps({"id": 1, "op": "ping"}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
                if msg.get("id") == 1 and "ok" in msg:
                    return "ok"
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else -1


async def test_a_node_started_after_the_revocation_refuses_it(cluster: Cluster) -> None:
    first = await cluster.start(config=CONFIG)
    assert await outcome(first, token("alice", "t1")) == "ok"
    await disconnect(first, user="alice", until=time.time() + 60)
    await disconnect(first, jti="t-bob")  # no until: until the token's own exp
    later = await cluster.start(config=CONFIG)
    for node in (first, later):
        assert await outcome(node, token("alice", "t2")) == 4501
        assert await outcome(node, token("bob", "t-bob")) == 4501
        assert await outcome(node, token("bob", "t-bob-2")) == "ok"  # only that token
        assert await outcome(node, token("carol", "t3")) == "ok"


async def test_a_revocation_lapses_everywhere(cluster: Cluster) -> None:
    first = await cluster.start(config=CONFIG)
    later = await cluster.start(config=CONFIG)
    until = time.time() + timeout(5)
    await disconnect(first, user="alice", until=until)
    assert await outcome(later, token("alice", "t1")) == 4501
    await asyncio.sleep(until - time.time() + 0.2)
    for node in (first, later):
        assert await outcome(node, token("alice", "t1")) == "ok"


async def store_unannounced(url: str, member: str, *, with_log: bool = True) -> None:
    """A revocation written into Redis and announced to no node: as if every message was lost.
    Without its log: as an earlier version kept them (one sorted set)."""
    client = redis.Redis.from_url(url)
    try:
        if with_log:
            keys = Keys("clarion").revocations()
            args = [member, repr(time.time() + 60), repr(time.time()), "test"]
            await client.eval(scripts.REVOKE, len(keys), *keys, *args)
        else:
            await client.zadd("clarion:revoked", {member: time.time() + 60})
    finally:
        await client.aclose()


@pytest.mark.parametrize("with_log", [True, False], ids=["logged", "earlier-format"])
async def test_a_node_that_missed_the_announcement_catches_up(
    cluster: Cluster, with_log: bool
) -> None:
    """The revocation reaches a node by the engine even when the pub/sub message is lost. Logged:
    both nodes have read the revocations since an earlier one (their marks are current). In the
    earlier format: a set kept before the log existed, read whole."""
    first = await cluster.start(config=CONFIG)
    second = await cluster.start(config=CONFIG)
    if with_log:
        await disconnect(first, user="mallory", until=time.time() + 60)  # announced
        await asyncio.sleep(6)  # each node has read the engine since, from its last mark
    await store_unannounced(cluster.redis.url, "user:alice", with_log=with_log)
    headers = {"Authorization": f"Bearer {token('alice', 't1')}"}
    async with websockets.connect(
        second.ws_url, subprotocols=["clarion.v1"], additional_headers=headers
    ) as ws:  # type: ignore[list-item]
        # An open session of that user is closed by the node's next sync (every 5 s).
        with_code = None
        try:
            while True:
                await asyncio.wait_for(ws.recv(), timeout(12))
        except ConnectionClosed as exc:
            with_code = exc.rcvd.code if exc.rcvd else None
        assert with_code == 4501
    # The first node reads the engine on its own schedule: it refuses within one interval.
    deadline = time.monotonic() + timeout(12)
    while await outcome(first, token("alice", "t2")) != 4501:
        assert time.monotonic() < deadline, "the first node never refused"
        await asyncio.sleep(0.5)


async def test_a_memory_hub_remembers_revocations_across_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "clarion.toml"
    config.write_text(CONFIG + f'data_dir = "{tmp_path / "data"}"\n')
    node = Node("memory", config, tmp_path, {})
    try:
        await node.wait_healthy()
        await disconnect(node, user="alice", until=time.time() + 60)
        await disconnect(node, jti="t-bob", exp=time.time() + 60)
        await disconnect(node, user="dave", until=time.time() - 1)  # lapsed: nothing kept
    finally:
        node.kill()
    restarted = Node("memory", config, tmp_path, {})
    try:
        await restarted.wait_healthy()
        assert await outcome(restarted, token("alice", "t1")) == 4501
        assert await outcome(restarted, token("bob", "t-bob")) == 4501
        assert await outcome(restarted, token("bob", "t-other")) == "ok"
        assert await outcome(restarted, token("dave", "t4")) == "ok"
    finally:
        restarted.kill()
    kept = json.loads((tmp_path / "data" / "revocations.json").read_text())
    assert set(kept) == {"user:alice", "jti:t-bob"}
