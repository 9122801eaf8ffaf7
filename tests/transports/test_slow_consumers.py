"""A reader that stops reading, on every streaming transport and both server paths.

Once what the hub queues for it goes over ``limits.send_queue_bytes``, its session is ended as
slow (4001) — on the portable path by the queue pipe's overflow check, the only way there to a
slow disconnect — while every other session is served. What the reader got is an in-order
prefix of the channel that it can resume after, and its connection ends: with the transport's
"slow" signal (disconnect push, STOMP ``ERROR``, SSE ``disconnect`` event) and close code when
it reads again, or cut short by a reset on clarion's server, which resets a peer that does not
finish the close handshake in time. Nothing of it stays behind.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from clarion.protocol.codes import CloseCode

from ..conftest import RunningHub, both_servers, timeout, until
from ..security.rawws import TEXT, masked
from ..stomp.client import Received, frame
from ..stomp.client import parse as parse_stomp
from .streams import Baseline
from .test_sse import _unchunk
from .test_sse_encoding import parse as parse_sse

BUDGET = 64 * 1024
PAD = "x" * 20_000  # raw clients offer no compression: these bytes are what is queued
CHANNEL = "chat:busy"
TRANSPORTS = ["ws", "stomp", "sse"]


async def stalled_socket(hub: RunningHub, request: bytes) -> socket.socket:
    """A connection with a small receive buffer that sent ``request`` and reads only when told."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", hub.port)), timeout(5))
        await loop.sock_sendall(sock, request)
    except BaseException:
        sock.close()
        raise
    return sock


async def upgraded(hub: RunningHub, path: str, subprotocol: str) -> tuple[socket.socket, bytes]:
    """A WebSocket connection to ``path`` once the hub answered 101, and what it read so far."""
    sock = await stalled_socket(
        hub,
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        ).encode(),
    )
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), 5)
        assert chunk, received
        received += chunk
    return sock, received


async def open_stalled(hub: RunningHub, transport: str) -> tuple[socket.socket, bytes]:
    """A subscriber of ``CHANNEL`` on ``transport`` that reads nothing more for now, and what
    it has read."""
    loop = asyncio.get_running_loop()
    received = b""
    if transport == "ws":
        sock, received = await upgraded(hub, "/ws", "clarion.v1")
        subscribe = json.dumps({"id": 1, "op": "subscribe", "channel": CHANNEL}).encode()
        await loop.sock_sendall(sock, masked(TEXT, subscribe))
    elif transport == "stomp":
        sock, received = await upgraded(hub, "/stomp", "v12.stomp")
        connect = frame("CONNECT", accept_version="1.2", host="h", heart_beat="0,0")
        subscribe = frame("SUBSCRIBE", id="s", destination=f"/topic/{CHANNEL}")
        await loop.sock_sendall(sock, masked(TEXT, connect) + masked(TEXT, subscribe))
    else:
        request = f"GET /sse?channel={CHANNEL} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        sock = await stalled_socket(hub, request)
    await until(lambda: any(CHANNEL in s.subscriptions for s in hub.hub.sessions.values()))
    return sock, received


async def read_to_end(sock: socket.socket) -> bytes:
    """Everything the hub sends until the connection ends (a reset ends it too)."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    try:
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout(15)):
            received += chunk
    except ConnectionResetError:
        pass
    return bytes(received)


def websocket_messages(data: bytes) -> tuple[list[bytes], int | None]:
    """The text messages of a server's WebSocket stream (after the 101 head), and the close
    code if its close frame came; a stream cut short ends at its last whole frame."""
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    messages: list[bytes] = []
    while len(data) >= 2:
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            start = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            start = 10
        if len(data) < start + length:
            break
        payload, data = data[start : start + length], data[start + length :]
        if opcode == 0x8:
            return messages, int.from_bytes(payload[:2], "big")
        assert opcode == TEXT, opcode
        messages.append(payload)
    return messages, None


def ws_view(data: bytes) -> tuple[list[int], Any, int | None]:
    messages, code = websocket_messages(data)
    pushes = [json.loads(m) for m in messages]
    numbers = [p["data"]["n"] for p in pushes if "data" in p]
    ends = [p["disconnect"] for p in pushes if "disconnect" in p]
    return numbers, ends, code


def stomp_view(data: bytes) -> tuple[list[int], Any, int | None]:
    messages, code = websocket_messages(data)
    frames: list[Received] = [f for m in messages for f in parse_stomp(m)]
    assert frames[0].command == "CONNECTED", frames[0]
    numbers = [f.json()["n"] for f in frames if f.command == "MESSAGE"]
    ends = [f.headers for f in frames if f.command == "ERROR"]
    return numbers, ends, code


def sse_view(data: bytes) -> tuple[list[int], Any, int | None]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    events = parse_sse(_unchunk(body))
    numbers = [json.loads(e.data)["data"]["n"] for e in events if e.event == "message" and e.data]
    ends = [e.json() for e in events if e.event == "disconnect"]
    return numbers, ends, None


VIEWS: dict[str, Callable[[bytes], tuple[list[int], Any, int | None]]] = {
    "ws": ws_view,
    "stomp": stomp_view,
    "sse": sse_view,
}
# How each transport says "slow" before it ends the connection.
SLOW: dict[str, Any] = {
    "ws": {"code": CloseCode.SLOW, "reason": "slow", "reconnect": True},
    "sse": {"code": CloseCode.SLOW, "reason": "slow", "reconnect": True},
}


@both_servers
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reader_that_stops_reading_is_closed_as_slow_others_go_on(
    hub_factory: Any, transport: str
) -> None:
    hub: RunningHub = await hub_factory(limits={"send_queue_bytes": BUDGET})
    baseline = Baseline(hub)
    before = hub.hub.stats.slow_disconnects
    stalled, received = await open_stalled(hub, transport)
    try:
        async with hub.ws() as healthy:
            await healthy.subscribe(CHANNEL)
            sent = 0
            while hub.hub.stats.slow_disconnects == before:
                assert sent < 1000, "the reader that stopped reading was never closed as slow"
                sent += 1
                await hub.publish(CHANNEL, {"n": sent, "pad": PAD})
                # Every other session is served meanwhile, in order.
                assert (await healthy.recv())["data"]["n"] == sent
            # The reader reads again at once (clarion's server resets a peer that does not
            # finish the close handshake within seconds).
            rest = asyncio.create_task(read_to_end(stalled))
            assert hub.hub.stats.slow_disconnects == before + 1
            assert [s.transport.kind for s in hub.hub.sessions.values()] == ["ws"]  # healthy's
            for _ in range(3):  # the others go on after it too
                sent += 1
                await hub.publish(CHANNEL, {"n": sent, "pad": PAD})
                assert (await healthy.recv())["data"]["n"] == sent
        # What it got: an in-order prefix of what was published, then why it ended, and the end.
        numbers, ends, code = VIEWS[transport](received + await rest)
    finally:
        stalled.close()
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) < sent
    if transport == "stomp":
        [end] = ends
        assert (end["message"], end["x-code"], end["x-close-code"]) == ("slow", "slow", "4001")
    else:
        assert ends == [SLOW[transport]]
    assert code == (None if transport == "sse" else CloseCode.SLOW)
    await baseline.restored()
    await until(lambda: not hub.hub.pending.total)
