"""permessage-deflate on /ws and /stomp: the same messages, each publication compressed once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from clarion import Settings
from clarion.protocol import deflate

from ..conftest import WS, RunningHub, clarion_server, timeout
from ..stomp.client import StompClient, frame, stomp

# Under another ASGI server the host server negotiates and compresses, each connection itself.
HUB_DEFLATE = clarion_server("the hub's own permessage-deflate, which clarion's server offers")

NO_TAKEOVER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
CHAT = {
    "user": "alice",
    "text": "Anyone up for lunch at the new ramen place on 5th? They have a vegetarian broth now.",
}
TICK = {"symbol": "ACME", "price": 101.25, "change": -0.37, "volume": 51234567, "bid": 101.2}


async def _recv_raw(ws: WS) -> str:
    raw = await asyncio.wait_for(ws.conn.recv(), timeout(5))
    assert isinstance(raw, str)
    return raw


async def _connect(hub: RunningHub, **kw: Any) -> Any:
    return await websockets.connect(
        hub.ws_url, subprotocols=["clarion.v1"], open_timeout=timeout(5), **kw
    )


@HUB_DEFLATE
async def test_compressed_and_plain_subscribers_get_the_same_messages(hub: RunningHub) -> None:
    squeezed = WS(await _connect(hub))
    plain = WS(await _connect(hub, compression=None))
    try:
        assert squeezed.conn.response.headers["Sec-WebSocket-Extensions"] == NO_TAKEOVER
        assert "Sec-WebSocket-Extensions" not in plain.conn.response.headers
        for ws in (squeezed, plain):
            assert "ok" in await ws.subscribe("chat:lobby")
        before = deflate.TOTALS.messages
        datas = [CHAT, TICK, {"n": 1}, "x" * 5000, [CHAT] * 30]
        for data in datas:
            await hub.publish("chat:lobby", data)
        raw = [[await _recv_raw(ws) for _ in datas] for ws in (squeezed, plain)]
        assert raw[0] == raw[1]
        assert [json.loads(m)["data"] for m in raw[0]] == datas
        # Each publication of MIN_SIZE bytes or more was compressed once (the envelope alone
        # takes most of them there); the others went as they were.
        long = [m for m in raw[0] if len(m.encode()) >= deflate.MIN_SIZE]
        assert deflate.TOTALS.messages - before == len(long) >= 4
        # The compressed client publishes compressed too: its messages reach both.
        await squeezed.call("publish", channel="chat:lobby", data=[TICK] * 20)
        assert (await plain.recv())["data"] == [TICK] * 20
    finally:
        await squeezed.conn.close()
        await plain.conn.close()


@HUB_DEFLATE
async def test_a_publication_is_compressed_once_for_all_its_subscribers(hub: RunningHub) -> None:
    conns = [WS(await _connect(hub)) for _ in range(5)]
    try:
        for ws in conns:
            await ws.subscribe("ticker:ACME")
        before = deflate.TOTALS.messages
        for price in range(20):
            await hub.publish("ticker:ACME", {**TICK, "price": 100 + price / 100})
        for ws in conns:
            prices = [(await ws.recv())["data"]["price"] for _ in range(20)]
            assert prices == [100 + p / 100 for p in range(20)]
        assert deflate.TOTALS.messages - before == 20  # not 100
    finally:
        for ws in conns:
            await ws.conn.close()


@HUB_DEFLATE
async def test_turned_off_no_offer_is_answered(hub_factory: Any) -> None:
    hub = await hub_factory(permessage_deflate=False)
    ws = WS(await _connect(hub))
    try:
        assert "Sec-WebSocket-Extensions" not in ws.conn.response.headers
        await ws.subscribe("chat:lobby")
        before = deflate.TOTALS.messages
        await hub.publish("chat:lobby", CHAT)
        assert (await ws.recv())["data"] == CHAT
        assert deflate.TOTALS.messages == before
    finally:
        await ws.conn.close()


async def test_a_compressed_message_over_the_limit_closes_with_1009(hub_factory: Any) -> None:
    hub = await hub_factory(Settings(limits={"max_message_bytes": 4096}))
    ws = WS(await _connect(hub, max_size=None))
    # Far under the limit on the wire, far over it once inflated.
    await ws.send(json.dumps({"id": 1, "op": "publish", "channel": "c", "data": "0" * 100_000}))
    with pytest.raises(websockets.ConnectionClosed):
        # Clarion's server stops inflating at the limit; another ASGI server inflates it whole
        # (up to its own cap) and the hub ends the session, saying why first.
        while True:
            assert (await ws.recv())["disconnect"]["code"] == 1009
    assert ws.conn.close_code == 1009


async def _stomp_messages(client: StompClient, count: int) -> list[Any]:
    out = []
    for _ in range(count):
        message = await client.expect("MESSAGE")
        assert int(message.headers["content-length"]) == len(message.body)
        out.append((message.headers["subscription"], message.json()))
    return out


@HUB_DEFLATE
async def test_stomp_compressed_and_plain_get_the_same_frames(hub: RunningHub) -> None:
    async with stomp(hub) as squeezed, stomp(hub, compression=None) as plain:
        assert squeezed.conn.response.headers["Sec-WebSocket-Extensions"] == NO_TAKEOVER
        for client in (squeezed, plain):
            await client.connect(heart_beat="0,0")
            # Two subscriptions to one channel on one connection: two prefixes, one tail.
            await client.send("SUBSCRIBE", id="a", destination="/topic/chat:lobby")
            await client.send("SUBSCRIBE", id="b", destination="/topic/chat:lobby", receipt="r")
            await client.expect("RECEIPT")
        before = deflate.TOTALS.messages
        datas = [CHAT, {"n": 1}, [TICK] * 10]
        for data in datas:
            await hub.publish("chat:lobby", data)
        expected = [(sub, data) for data in datas for sub in ("a", "b")]
        assert await _stomp_messages(squeezed, 6) == expected
        assert await _stomp_messages(plain, 6) == expected
        # One compression per publication and flavour, shared by both subscriptions (the
        # headers alone make every tail long enough to compress).
        assert deflate.TOTALS.messages - before == len(datas)


async def test_stomp_single_subscription_and_binary_bodies(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect(heart_beat="0,0")
        await client.send("SUBSCRIBE", id="only", destination="/topic/feed", receipt="r")
        await client.expect("RECEIPT")
        await hub.publish("feed", TICK)
        await hub.publish("feed", [CHAT] * 5)
        assert await _stomp_messages(client, 2) == [("only", TICK), ("only", [CHAT] * 5)]
        body = bytes(range(256)) * 4 + b"\xff" * 500  # not UTF-8: a binary MESSAGE
        await client.send_raw(
            frame(
                "SEND",
                body,
                destination="/topic/feed",
                content_type="application/octet-stream",
                content_length=str(len(body)),
            )
        )
        message = await client.expect("MESSAGE")
        assert message.body == body


async def test_many_compressed_subscribers_on_a_busy_channel(hub: RunningHub) -> None:
    conns = [WS(await _connect(hub, compression=None if i % 3 else "deflate")) for i in range(9)]
    try:
        for ws in conns:
            await ws.subscribe("room")

        async def publish_all() -> None:
            await asyncio.gather(*(hub.publish("room", {**CHAT, "n": n}) for n in range(50)))

        await publish_all()
        for ws in conns:
            got = sorted([(await ws.recv())["data"]["n"] for _ in range(50)])
            assert got == list(range(50))
    finally:
        for ws in conns:
            await ws.conn.close()


@pytest.mark.parametrize("server_path", ["asgi"], indirect=True)
async def test_under_uvicorn_the_server_compresses_per_connection(hub: RunningHub) -> None:
    # The hub sees no frames there: uvicorn negotiates (with context takeover) and compresses
    # each message for each connection; the hub's own compressor is not used.
    squeezed = WS(await _connect(hub))
    plain = WS(await _connect(hub, compression=None))
    try:
        offer = squeezed.conn.response.headers["Sec-WebSocket-Extensions"]
        assert offer.startswith("permessage-deflate") and "server_no_context_takeover" not in offer
        for ws in (squeezed, plain):
            await ws.subscribe("chat:lobby")
        before = deflate.TOTALS.messages
        for data in (CHAT, [TICK] * 10):
            await hub.publish("chat:lobby", data)
        raw = [[await _recv_raw(ws) for _ in range(2)] for ws in (squeezed, plain)]
        assert raw[0] == raw[1]
        assert deflate.TOTALS.messages == before
    finally:
        await squeezed.conn.close()
        await plain.conn.close()
