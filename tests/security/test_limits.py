"""Limits over real sockets: caps, rates, deadlines and heartbeats, hitting only the offender."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from functools import partial
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clarion.core.auth import mint_token

from ..conftest import RunningHub, clarion_server, timeout, until
from ..redis_fixture import RedisServer, redis_server

__all__ = ["redis_server"]

SECRET = "a-long-enough-test-secret-0123456789"


async def closed_with(ws: Any, wait: float = 5) -> tuple[int | None, dict[str, Any] | None]:
    """Read until the hub closes; return the close code and the disconnect push, if any."""
    push = None
    try:
        while True:
            msg = json.loads(await asyncio.wait_for(ws.conn.recv(), timeout(wait)))
            if "disconnect" in msg:
                push = msg["disconnect"]
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), push


async def test_cross_origin_upgrade_is_refused(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(
        token_secret=SECRET, api_key="k", allowed_origins=["https://app.example.com"]
    )
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(hub.ws_url, origin="https://evil.example.com"):
            pass
    assert info.value.response.status_code == 403
    async with hub.ws(origin="https://app.example.com") as ws:
        assert (await ws.call("ping"))["ok"] == {}
    async with hub.ws() as ws:  # no Origin: a non-browser client, allowed by default
        assert (await ws.call("ping"))["ok"] == {}


async def test_requests_without_origin_can_be_refused(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(token_secret=SECRET, api_key="k", allow_no_origin=False)
    with pytest.raises(InvalidStatus):
        async with websockets.connect(hub.ws_url):
            pass


async def test_per_ip_cap(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"max_connections_per_ip": 3})
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(hub.ws()) for _ in range(3)]
        async with hub.ws() as extra:
            code, push = await closed_with(extra)
            assert code == 4503 and push is not None and push["reconnect"] is False
        assert (await held[0].call("ping"))["ok"] == {}  # the others go on
    async with hub.ws() as again:  # slots are given back when connections close
        assert (await again.call("ping"))["ok"] == {}


async def test_per_user_cap(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(
        token_secret=SECRET, api_key="k", limits={"max_connections_per_user": 2}
    )
    token = mint_token(SECRET, "alice", ["*"])
    headers = {"Authorization": f"Bearer {token}"}
    async with hub.ws(additional_headers=headers), hub.ws(additional_headers=headers):
        async with hub.ws(additional_headers=headers) as third:
            assert (await closed_with(third))[0] == 4503
        other = {"Authorization": f"Bearer {mint_token(SECRET, 'bob', ['*'])}"}
        async with hub.ws(additional_headers=other) as bob:
            assert (await bob.call("ping"))["ok"] == {}


async def test_per_user_cap_spans_nodes_when_the_token_comes_in_the_connect_op(
    hub_factory: Any, redis_server: RedisServer
) -> None:
    """The browser and Python clients send their token in the ``connect`` op, after the
    session opened without a user: the user's count on every node was then never taken, and
    each node held the cap's worth."""
    settings = {
        "token_secret": SECRET,
        "api_key": "k",
        "engine": redis_server.url,
        "limits": {"max_connections_per_user": 3},
    }
    nodes = [await hub_factory(**settings) for _ in range(2)]
    token = mint_token(SECRET, "alice", ["*"])
    async with contextlib.AsyncExitStack() as stack:
        sockets = []
        for n in range(6):
            node = nodes[n % 2].hub
            ws = await stack.enter_async_context(nodes[n % 2].ws())
            reply = await ws.call("connect", token=token)
            assert "ok" in reply, reply
            sockets.append(ws)
            if n < 3:
                # Counted after the reply, on the engine, in whatever order the nodes' calls
                # reach it: the test waits, so that the three first are the three counted.
                counted = partial(node.admission.holds, reply["ok"]["client"], "alice")
                await until(counted)
        for ws in sockets[3:]:  # over the cap on the whole cluster: told 4503
            code, _ = await closed_with(ws)
            assert code == 4503
        for ws in sockets[:3]:
            assert (await ws.call("ping"))["ok"] == {}
        # One of alice's goes: her count on the cluster makes room for one more.
        admission = nodes[0].hub.admission
        held = {sid for sid in nodes[0].hub.sessions if admission.holds(sid)}
        await sockets[0].conn.close()
        await until(lambda: len({sid for sid in held if admission.holds(sid)}) == len(held) - 1)
        ws = await stack.enter_async_context(nodes[1].ws())
        assert "ok" in await ws.call("connect", token=token)
        await asyncio.sleep(0.3)
        assert (await ws.call("ping"))["ok"] == {}


async def test_node_cap(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"max_connections": 1})
    async with hub.ws(), hub.ws() as second:
        code, push = await closed_with(second)
        assert code == 4005 and push is not None and push["reconnect"] is True


async def test_subscription_cap(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"max_subscriptions_per_connection": 2})
    async with hub.ws() as ws:
        assert "ok" in await ws.subscribe("a")
        assert "ok" in await ws.subscribe("b")
        assert (await ws.subscribe("c"))["error"]["code"] == "too_many_subscriptions"


async def test_publish_rate_then_abuse(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"client_publish_rate": 5, "client_publish_burst": 5})
    async with hub.ws() as ws, hub.ws() as bystander:
        codes = []
        for n in range(8):
            reply = await ws.call("publish", channel="c", data=n)
            codes.append("ok" if "ok" in reply else reply["error"]["code"])
        assert codes[:5] == ["ok"] * 5 and "rate_limited" in codes[5:]
        # Persistent abuse: keep hammering until the hub disconnects.
        for n in range(100):
            try:
                await ws.send({"id": 100 + n, "op": "publish", "channel": "c", "data": n})
            except ConnectionClosed:
                break
        code, push = await closed_with(ws)
        assert code == 4505 and push is not None and push["reconnect"] is False
        assert (await bystander.call("ping"))["ok"] == {}


async def test_idle_and_connect_deadline(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"idle_timeout": 1})
    async with hub.ws() as idle:
        assert (await closed_with(idle, wait=5))[0] == 4504
    secured = await hub_factory(token_secret=SECRET, api_key="k", limits={"handshake_timeout": 1})
    async with secured.ws() as anonymous:
        assert (await closed_with(anonymous, wait=5))[0] == 4506


async def test_the_connect_deadline_is_for_sessions_that_never_began(hub_factory) -> None:  # type: ignore[no-untyped-def]
    # An anonymous client that subscribed, then let its channels go, finished connecting long
    # ago: the sweep once closed it with 4506 (do not reconnect) if it found it between two
    # subscriptions after handshake_timeout. Holding nothing, it is idle (4504, reconnect).
    secured = await hub_factory(
        token_secret=SECRET,
        api_key="k",
        namespaces={"pub": {"anonymous": True}},
        limits={"handshake_timeout": 1, "idle_timeout": 3},
    )
    async with secured.ws() as anonymous:
        started = time.monotonic()
        assert "ok" in await anonymous.subscribe("pub:room")
        assert "ok" in await anonymous.call("unsubscribe", channel="pub:room")
        code, _ = await closed_with(anonymous, wait=10)
        assert code == 4504, code
        assert time.monotonic() - started >= 2.5


@clarion_server("pings are the host server's on the portable path (uvicorn: --ws-ping-interval)")
async def test_peer_that_stops_answering_pings_is_removed(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"ping_interval": 1, "pong_timeout": 1})
    start = time.monotonic()
    # A websockets client with its own pings off and its reading stopped cannot answer pings.
    raw = await websockets.connect(hub.ws_url, ping_interval=None)
    await raw.send('{"id": 1, "op": "subscribe", "channel": "c"}')
    await asyncio.sleep(0.2)
    raw.transport.pause_reading()  # frozen peer: pings go unanswered
    for _ in range(100):
        if not hub.hub.sessions:
            break
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - start
    assert hub.hub.sessions == {}
    assert elapsed < timeout(1 + 1 + 1.5)  # ping interval + pong timeout + tick slack
    raw.transport.abort()
    # A live peer answers pings and stays: the peer shares this loop with the hub, so its
    # pong may wait on a busy machine; a peer that never answered would be cut at 2.5 s.
    lenient = await hub_factory(limits={"ping_interval": 0.5, "pong_timeout": 2})
    async with lenient.ws() as alive:
        await asyncio.sleep(4)
        assert (await alive.call("ping"))["ok"] == {}
        assert len(lenient.hub.sessions) == 1


async def test_revoke_refuses_until(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(token_secret=SECRET, api_key="k")
    headers = {"Authorization": f"Bearer {mint_token(SECRET, 'alice', ['*'])}"}
    async with hub.ws(additional_headers=headers) as ws:
        async with hub.http(headers={"Authorization": "apikey k"}) as http:
            r = await http.post("/api/disconnect", json={"user": "alice", "until": time.time() + 2})
            assert r.status_code == 200
        assert (await closed_with(ws))[0] == 4501
    async with hub.ws(additional_headers=headers) as again:
        code, push = await closed_with(again)
        assert code == 4501 and push is not None and "revoked" in push["reason"]
    await asyncio.sleep(2.2)
    async with hub.ws(additional_headers=headers) as later:
        assert (await later.call("ping"))["ok"] == {}


@clarion_server("the handshake of an HTTP connection is the host server's on the portable path")
async def test_trickled_handshake_is_cut(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"handshake_timeout": 1})
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    start = time.monotonic()
    closed = False
    for byte in b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n":
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        if reader.at_eof():
            closed = True
            break
        await asyncio.sleep(0.2)
        if time.monotonic() - start > timeout(4):
            break
    if not closed:
        closed = (await asyncio.wait_for(reader.read(), timeout(3))) == b"" or reader.at_eof()
    assert closed
    assert time.monotonic() - start < timeout(4)
    writer.close()
    async with hub.ws() as ws:
        assert (await ws.call("ping"))["ok"] == {}


async def test_conflate_policy_keeps_latest(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub: RunningHub = await hub_factory(
        limits={"send_queue_bytes": 64 * 1024},
        namespaces={"ticker": {"slow_consumer": "conflate"}},
    )
    # Uncompressed: the padding is what fills the send queue.
    async with websockets.connect(hub.ws_url, max_queue=1, compression=None) as slow:
        await slow.send('{"id": 1, "op": "subscribe", "channel": "ticker:btc"}')
        await asyncio.sleep(0.2)
        slow.transport.pause_reading()
        for n in range(400):
            await hub.hub.publish("ticker:btc", {"n": n, "pad": "x" * 20000})
            await asyncio.sleep(0)  # publications arrive over the network, between writes
        assert hub.hub.stats.conflations >= 1 and hub.hub.stats.slow_disconnects == 0
        slow.transport.resume_reading()
        last = None
        deadline = time.monotonic() + timeout(10)
        while time.monotonic() < deadline:
            msg = json.loads(await asyncio.wait_for(slow.recv(), timeout(5)))
            if msg.get("data", {}).get("n") == 399:
                last = msg
                break
        assert last is not None, "the latest publication reaches a conflated reader"
        await hub.hub.publish("ticker:btc", {"n": 400})
        msg = json.loads(await asyncio.wait_for(slow.recv(), timeout(5)))
        assert msg["data"]["n"] == 400  # and then it is live again


async def test_publish_rate_per_user_spans_connections(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(
        token_secret=SECRET,
        api_key="k",
        limits={"client_publish_rate_per_user": 1, "client_publish_burst": 4},
    )
    headers = {"Authorization": f"Bearer {mint_token(SECRET, 'alice', ['*'], publish=['*'])}"}
    async with hub.ws(additional_headers=headers) as a, hub.ws(additional_headers=headers) as b:
        replies = []
        for n in range(3):
            replies.append(await a.call("publish", channel="c", data=n))
            replies.append(await b.call("publish", channel="c", data=n))
        codes = ["ok" if "ok" in r else r["error"]["code"] for r in replies]
        assert codes[:4] == ["ok"] * 4 and set(codes[4:]) == {"rate_limited"}
