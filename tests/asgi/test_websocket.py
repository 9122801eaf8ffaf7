"""The clarion protocol at /ws over real sockets: subscribe, resume, reset, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import struct
from collections.abc import Iterable
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from clarion.protocol.cursor import encode_single

from ..conftest import WS, RunningHub, both_servers, timeout, until


@both_servers
async def test_subscribe_and_receive(hub: RunningHub) -> None:
    async with hub.ws() as ws:
        assert ws.conn.subprotocol == "clarion.v1"
        reply = await ws.subscribe("chat:lobby")
        ok = reply["ok"]
        assert ok["channel"] == "chat:lobby" and ok["offset"] == 0 and ok["recovered"] is True
        published = await hub.publish("chat:lobby", {"text": "hi"})
        pub = await ws.recv()
        assert pub["data"] == {"text": "hi"} and pub["offset"] == 1
        assert pub["epoch"] == published["epoch"] == ok["epoch"]
        assert pub["cursor"] == published["cursor"]
        assert isinstance(pub["time"], int)


async def test_no_subprotocol_is_accepted(hub: RunningHub) -> None:
    async with hub.ws(subprotocols=None) as ws:
        assert ws.conn.subprotocol is None
        assert (await ws.call("ping")) == {"id": 1, "ok": {}}


@both_servers
async def test_away_for_three_gets_exactly_three_then_live(hub: RunningHub) -> None:
    async with hub.ws() as ws:
        await ws.subscribe("chat:lobby")
        await hub.publish("chat:lobby", "before")
        cursor = (await ws.recv())["cursor"]
    for n in range(3):
        await hub.publish("chat:lobby", f"missed {n}")
    async with hub.ws() as ws:
        reply = await ws.subscribe("chat:lobby", since=cursor)
        assert reply["ok"]["recovered"] is True
        missed = [await ws.recv() for _ in range(3)]
        assert [m["data"] for m in missed] == ["missed 0", "missed 1", "missed 2"]
        assert [m["offset"] for m in missed] == [2, 3, 4]
        await hub.publish("chat:lobby", "live")
        live = await ws.recv()
        assert (live["data"], live["offset"]) == ("live", 5)
        with pytest.raises(asyncio.TimeoutError):
            await ws.recv(wait=0.2)  # and nothing else: no duplicate


@both_servers
async def test_away_longer_than_history_gets_reset_then_live(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(namespaces={"default": {"history_size": 3}})
    async with hub.ws() as ws:
        await ws.subscribe("news")
        await hub.publish("news", 0)
        cursor = (await ws.recv())["cursor"]
    for n in range(4):  # one more than history holds
        await hub.publish("news", n + 1)
    async with hub.ws() as ws:
        reply = await ws.subscribe("news", since=cursor)
        assert reply["ok"]["recovered"] is False and reply["ok"]["reset"] == "trimmed"
        reset = await ws.recv()
        assert reset["reset"]["channel"] == "news" and reset["reset"]["reason"] == "trimmed"
        await hub.publish("news", "live")
        live = await ws.recv()
        assert live["data"] == "live" and live["offset"] == 6


async def test_history_exactly_covering_the_gap_resumes(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(namespaces={"default": {"history_size": 3}})
    first = await hub.publish("news", 0)
    for n in range(3):
        await hub.publish("news", n + 1)
    async with hub.ws() as ws:
        reply = await ws.subscribe("news", since=first["cursor"])
        assert reply["ok"]["recovered"] is True
        assert [(await ws.recv())["offset"] for _ in range(3)] == [2, 3, 4]


async def test_unknown_epoch_gets_reset(hub: RunningHub) -> None:
    await hub.publish("c", 1)
    async with hub.ws() as ws:
        reply = await ws.subscribe("c", since=encode_single("c", "0ldep0ch", 1))
        assert reply["ok"]["reset"] == "epoch"
        assert (await ws.recv())["reset"]["reason"] == "epoch"


@both_servers
async def test_many_subscribers_same_bytes(
    hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(hub.ws()) for _ in range(20)]
        for ws in conns:
            await ws.subscribe("fan")
        # Every subscriber is live under one wire format: spy on that format's encoder and on
        # its fan-out loop (both still run), to see what each connection is handed.
        [(fmt, targets)] = hub.hub.local["fan"].by_format.items()
        assert len(targets) == 20
        encodings: list[object] = []
        handed: list[tuple[int, object]] = []
        encode, deliver = fmt.encode, fmt.deliver

        def counting_encode(pub: Any) -> Any:
            encodings.append(encode(pub))
            return encodings[-1]

        def recording_deliver(to: Iterable[Any], data: Any) -> None:
            to = list(to)
            handed.append((len(to), data))
            deliver(to, data)

        monkeypatch.setattr(fmt, "encode", counting_encode)
        monkeypatch.setattr(fmt, "deliver", recording_deliver)
        await hub.publish("fan", {"n": 1})
        received = [await ws.conn.recv() for ws in conns]
        assert len(encodings) == 1  # encoded once for all twenty
        assert sum(n for n, _ in handed) == 20
        assert all(data is encodings[0] for _, data in handed)  # the very same bytes object
        assert len(set(received)) == 1


@both_servers
async def test_publish_history_presence_ops(hub: RunningHub) -> None:
    async with hub.ws() as ws:
        await ws.subscribe("room")
        reply = await ws.call("publish", channel="room", data={"x": 1}, pub_id="once")
        assert reply["ok"]["offset"] == 1
        again = await ws.call("publish", channel="room", data={"x": 2}, pub_id="once")
        assert again["ok"]["offset"] == 1
        history = await ws.call("history", channel="room")
        assert [p["data"] for p in history["ok"]["publications"]] == [{"x": 1}]
        presence = await ws.call("presence", channel="room")
        assert len(presence["ok"]["clients"]) == 1
        assert (await ws.call("unsubscribe", channel="room"))["ok"] == {}
        missing = await ws.call("unsubscribe", channel="room")
        assert missing["error"]["code"] == "not_subscribed"
        dup = await ws.subscribe("room")
        assert "ok" in dup
        assert (await ws.subscribe("room"))["error"]["code"] == "already_subscribed"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_request"),
        ('"a string"', "bad_request"),
        ('{"id": 1, "op": "fly"}', "unknown_op"),
        ('{"id": 1, "op": "subscribe"}', "bad_channel"),
        ('{"id": 1, "op": "subscribe", "channel": 42}', "bad_channel"),
        ('{"id": 1, "op": "subscribe", "channel": ""}', "bad_channel"),
        ('{"id": 1, "op": "subscribe", "channel": "' + "x" * 256 + '"}', "bad_channel"),
        ('{"id": 1, "op": "subscribe", "channel": "a b"}', "bad_channel"),
        ('{"id": 1, "op": "subscribe", "channel": "a\\u0000b"}', "bad_channel"),
        ('{"id": 1, "op": "subscribe", "channel": "c", "since": "garbage"}', "bad_cursor"),
        ('{"id": 1, "op": "subscribe", "channel": "c", "since": 5}', "bad_cursor"),
        ('{"id": 1, "op": "history", "channel": "c", "limit": "x"}', "bad_request"),
        ('{"id": 1, "op": "publish", "channel": "c"}', "bad_request"),
    ],
)
async def test_bad_input_gets_an_error_and_the_session_goes_on(
    hub: RunningHub, frame: str, code: str
) -> None:
    async with hub.ws() as bystander, hub.ws() as ws:
        await bystander.subscribe("c")
        await ws.send(frame)
        reply = await ws.recv()
        assert reply["error"]["code"] == code
        assert reply["error"]["message"]
        assert (await ws.call("ping"))["ok"] == {}  # still serving this session
        await hub.publish("c", "still here")
        assert (await bystander.recv())["data"] == "still here"


async def test_tampered_cursor(hub: RunningHub) -> None:
    good = (await hub.publish("c", 1))["cursor"]
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    async with hub.ws() as ws:
        assert (await ws.subscribe("c", since=tampered))["error"]["code"] == "bad_cursor"
        other = encode_single("other", "e", 1)
        assert (await ws.subscribe("c", since=other))["error"]["code"] == "bad_cursor"


async def test_binary_frame_closes_1003(hub: RunningHub) -> None:
    async with hub.ws() as ws:
        await ws.conn.send(b"\x00\x01")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.conn.recv(), timeout(5))
            await asyncio.wait_for(ws.conn.recv(), timeout(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1003


@both_servers
@pytest.mark.parametrize("pad", ["x" * 5000, "é" * 600], ids=["ascii", "two-byte-chars"])
async def test_oversized_frame_closes_1009(hub_factory: Any, pad: str) -> None:
    hub = await hub_factory(limits={"max_message_bytes": 1024})
    async with hub.ws() as ws:
        # 600 two-byte characters: under the limit in characters, over it in bytes.
        await ws.conn.send(json.dumps({"id": 1, "op": "ping", "pad": pad}, ensure_ascii=False))
        with pytest.raises(ConnectionClosed) as info:
            # Clarion's server refuses the frame as it comes in; another ASGI server receives
            # it whole and the hub ends the session, saying why first.
            push = await asyncio.wait_for(ws.conn.recv(), timeout(5))
            assert json.loads(push)["disconnect"]["code"] == 1009, push
            await asyncio.wait_for(ws.conn.recv(), timeout(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    async with hub.ws() as ws:  # the hub goes on
        assert (await ws.call("ping"))["ok"] == {}


async def test_oversized_publish_is_refused(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"max_message_bytes": 1024})
    async with hub.http() as http:
        r = await http.post("/api/publish", json={"channel": "c", "data": "x" * 2000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


async def test_invalid_utf8_closes_1007(hub: RunningHub) -> None:
    reader, writer = await raw_upgrade(hub)
    # A masked text frame whose payload is not UTF-8.
    payload = b"\xff\xfe"
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(64), timeout(5))
    assert data[0] == 0x88 and int.from_bytes(data[2:4], "big") == 1007
    writer.close()


async def raw_upgrade(hub: RunningHub) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_disconnect_mid_handshake_and_mid_resume(hub: RunningHub) -> None:
    # Half a request line, then gone.
    _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.")
    await writer.drain()
    writer.close()
    # Subscribe with a long resume, then vanish before reading it.
    first = await hub.publish("c", 0)
    for n in range(50):
        await hub.publish("c", n)
    _reader, writer = await raw_upgrade(hub)
    command = json.dumps({"id": 1, "op": "subscribe", "channel": "c", "since": first["cursor"]})
    payload = command.encode()
    mask = b"\x00\x00\x00\x00"
    writer.write(bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + payload)
    await writer.drain()
    writer.transport.abort()
    for _ in range(100):
        if not hub.hub.sessions:
            break
        await asyncio.sleep(0.02)
    assert hub.hub.sessions == {}
    assert hub.hub.local == {}
    async with hub.ws() as ws:  # the hub goes on
        assert (await ws.subscribe("c"))["ok"]["offset"] == 51


@both_servers
async def test_server_closes_with_disconnect_push(hub: RunningHub) -> None:
    async with hub.ws() as ws:
        await ws.subscribe("c")
        session = next(iter(hub.hub.sessions.values()))
        session.close(4000)
        push = await ws.recv()
        assert push == {"disconnect": {"code": 4000, "reason": "shutdown", "reconnect": True}}
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000


@both_servers
async def test_slow_consumer_is_closed_4001(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(limits={"send_queue_bytes": 64 * 1024})
    _reader, writer = await raw_upgrade(hub)
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    payload = json.dumps({"id": 1, "op": "subscribe", "channel": "busy"}).encode()
    writer.write(bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload)
    await writer.drain()
    await asyncio.sleep(0.1)
    async with hub.ws() as healthy:
        await healthy.subscribe("busy")
        big = "x" * 20000
        for n in range(400):  # ~8 MB to a reader that never reads: beyond socket buffers
            await hub.publish("busy", {"n": n, "pad": big})
            got = await healthy.recv()
            assert got["data"]["n"] == n
        assert hub.hub.stats.slow_disconnects == 1
    writer.transport.abort()


async def test_command_without_id_is_answered(hub: RunningHub) -> None:
    async with websockets.connect(hub.ws_url) as raw:
        await raw.send('{"op":"ping"}')
        assert json.loads(await raw.recv()) == {"id": None, "ok": {}}


@both_servers
async def test_an_ended_connection_is_freed_without_the_collector(hub: RunningHub) -> None:
    """What a dropped connection held is freed by reference counting once its session ends,
    not kept in reference cycles until the collector walks every live object (10,000 clients
    dropped at once left 18 objects each for it)."""
    from clarion.asgi.pipe import Pipe
    from clarion.asgi.websocket import _Connection
    from clarion.asgi.wstransport import WsTransport
    from clarion.core.session import Session
    from clarion.server.websocket import WebSocketProtocol

    ours = (Session, _Connection, WsTransport, Pipe, WebSocketProtocol)
    clients = []
    for _ in range(20):
        conn = await websockets.connect(
            hub.ws_url, subprotocols=["clarion.v1"], open_timeout=timeout(5)
        )
        clients.append(conn)
        await WS(conn).subscribe("chat:lobby")
    gc.collect()  # what connecting left: only the drop's is looked at
    gc.disable()
    try:
        for i, conn in enumerate(clients):
            if i % 2:
                await conn.close()  # the close handshake
            else:  # RST, as a client whose network went away
                sock = conn.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.transport.abort()
        await until(lambda: not hub.hub.sessions)
        await asyncio.sleep(0.1)  # the connections' last callbacks
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage if isinstance(o, ours)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
