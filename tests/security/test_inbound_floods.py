"""Inbound floods: what one peer's frames make the hub do per turn of its loop, and hold.

Frames that make no message (pongs, pings, empty continuation frames) and messages that
inflate a hundredfold (permessage-deflate on /ws and /stomp, STOMP heart-beat EOLs among them)
once went through a whole socket read at a time: tens of thousands of frames, or hundreds of
megabytes inflated, in one turn, while every other connection waited. The reader now parses a
bounded number of frames and inflated bytes per call, the rest of what was read waits for a
later turn before the socket is read again, and the inbound queue is bounded in bytes too.

Measured by counting, not timing: frames parsed and bytes inflated between two turns of the
loop (a callback that schedules itself again counts turns), and bytes queued for the app.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from clarion.asgi.stomp import StompConnection
from clarion.protocol import wsreader
from clarion.protocol.cursor import encode_single
from clarion.protocol.deflate import Inflater
from clarion.protocol.stomp.parser import FrameParser
from clarion.protocol.stomp.session import MAX_FRAMES_PER_MESSAGE
from clarion.server import Server
from clarion.settings import NamespaceOptions

from ..conftest import RunningHub, clarion_server, timeout, until
from ..support.steps import python_steps

pytestmark = clarion_server("the frame reader and inbound queue of clarion's own server")

# One socket read holds thousands of the frames below; the bounds hold a few hundred.
FRAMES_PER_TURN = 512
INFLATED_PER_TURN = 2 << 20  # a read's worth, a message of max_message_bytes, and slack
QUEUED_BYTES = 4 << 20  # bytes received and not yet handled by the app, per connection
DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"


def settings() -> dict[str, Any]:
    return {"namespaces": {"pub": NamespaceOptions(anonymous=True)}}


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One masked client frame (a zero mask: the payload goes as is)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, 0x80 | 127)) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


def compressed(payload: bytes) -> bytes:
    """A permessage-deflate text message (RFC 7692: the sync flush trailer removed)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
    return frame(0x1, data[:-4], rsv1=True)


def connect(port: int, path: str, subprotocol: str, extra: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout(10))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {subprotocol}\r\n{extra}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert b" 101 " in head.split(b"\r\n")[0], head
    if extra:
        assert b"permessage-deflate" in head, head
    return sock


class Flood:
    """A thread writing ``chunk`` over and over (and reading what comes back) for ``seconds``,
    or until the hub closes the connection."""

    def __init__(self, sock: socket.socket, chunk: bytes, seconds: float) -> None:
        self.sock = sock
        self.chunk = chunk
        self.seconds = seconds
        self.received = bytearray()
        self.sent = 0
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while data := self.sock.recv(1 << 16):
                self.received += data
        except OSError:
            pass
        self.ended.set()

    def write(self) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            while time.monotonic() < deadline and not self.ended.is_set():
                self.sock.sendall(self.chunk)
                self.sent += len(self.chunk)
        except OSError:
            pass

    def close_code(self) -> int | None:
        """The code of the hub's close frame, if it sent one."""
        data = bytes(self.received)
        while len(data) >= 2:
            opcode, n, head = data[0] & 0x0F, data[1] & 0x7F, 2
            if n == 126:
                n, head = struct.unpack("!H", data[2:4])[0], 4
            elif n == 127:
                n, head = struct.unpack("!Q", data[2:10])[0], 10
            if opcode == 0x8:
                return int.from_bytes(data[head : head + 2], "big") if n >= 2 else None
            data = data[head + n :]
        return None


class Turns:
    """Per turn of the loop: the most frames parsed, bytes inflated and bytes queued."""

    def __init__(self, running: RunningHub) -> None:
        self.running = running
        self.frames = self.inflated = 0
        self.most_frames = self.most_inflated = self.most_queued = 0
        self.turns = 0
        self._loop = asyncio.get_running_loop()
        self._on = True
        self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.turns += 1
        self.most_frames = max(self.most_frames, self.frames)
        self.most_inflated = max(self.most_inflated, self.inflated)
        self.frames = self.inflated = 0
        for conn in list(self.running.server.registry.connections):
            inbound = getattr(conn, "_inbound", None)
            if inbound:
                queued = sum(len(m.get("text") or m.get("bytes") or b"") for m in inbound)
                self.most_queued = max(self.most_queued, queued)
        if self._on:
            self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._on = False


@asynccontextmanager
async def counted(
    hub_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RunningHub, Turns]]:
    frame_of = wsreader.FrameReader._frame
    feed = Inflater.feed
    turns: list[Turns] = []

    def counting_frame(self: wsreader.FrameReader, *args: Any) -> bool:
        turns[0].frames += 1
        return frame_of(self, *args)

    def counting_feed(self: Inflater, *args: Any) -> bytes:
        out = feed(self, *args)
        turns[0].inflated += len(out)
        return out

    monkeypatch.setattr(wsreader.FrameReader, "_frame", counting_frame)
    monkeypatch.setattr(Inflater, "feed", counting_feed)
    running: RunningHub = await hub_factory(**settings())
    turns.append(Turns(running))
    try:
        yield running, turns[0]
    finally:
        turns[0].stop()


async def flooded(sock: socket.socket, chunk: bytes, seconds: float = 1.5) -> Flood:
    flood = Flood(sock, chunk, seconds)
    await asyncio.to_thread(flood.write)
    return flood


async def still_served(running: RunningHub) -> None:
    """Another client is answered once the flood stops."""
    async with running.ws() as ws:
        reply = await asyncio.wait_for(ws.call("ping"), timeout(10))
        assert "ok" in reply, reply


async def test_a_deflate_bomb_on_ws_is_inflated_a_read_s_worth_a_turn(
    hub_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~100 bytes on the wire, 65 KB of a valid op once inflated: a 256 KB read holds 2,600.
    bomb = compressed(b'{"op":"ping"' + b" " * 65000 + b"}")
    async with counted(hub_factory, monkeypatch) as (running, turns):
        sock = await asyncio.to_thread(connect, running.port, "/ws", "clarion.v1", DEFLATE)
        try:
            await flooded(sock, bomb * 1000)
            assert turns.most_inflated <= INFLATED_PER_TURN, turns.most_inflated
            assert turns.most_queued <= QUEUED_BYTES, turns.most_queued
        finally:
            sock.close()
        await still_served(running)


async def test_heart_beat_eols_compressed_on_stomp_are_bounded_per_turn(
    hub_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = compressed(b"\n" * 65000)
    async with counted(hub_factory, monkeypatch) as (running, turns):
        sock = await asyncio.to_thread(connect, running.port, "/stomp", "v12.stomp", DEFLATE)
        try:
            sock.sendall(frame(0x1, b"CONNECT\naccept-version:1.2\nhost:x\n\n\0"))
            assert b"CONNECTED" in await asyncio.to_thread(sock.recv, 4096)
            await flooded(sock, bomb * 200)
            assert turns.most_inflated <= INFLATED_PER_TURN, turns.most_inflated
            assert turns.most_queued <= QUEUED_BYTES, turns.most_queued
        finally:
            sock.close()
        await still_served(running)


@pytest.mark.parametrize(
    ("opening", "chunk"),
    [
        pytest.param(b"", frame(0xA) * 5000, id="pongs"),
        pytest.param(b"", frame(0x9) * 5000, id="pings"),
        pytest.param(frame(0x1, fin=False), frame(0x0, fin=False) * 5000, id="continuations"),
    ],
)
async def test_frames_that_make_no_message_are_bounded_per_turn(
    hub_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, opening: bytes, chunk: bytes
) -> None:
    async with counted(hub_factory, monkeypatch) as (running, turns):
        sock = await asyncio.to_thread(connect, running.port, "/ws", "clarion.v1")
        try:
            sock.sendall(opening)
            await flooded(sock, chunk)
            assert turns.frames + turns.most_frames > 0
            assert turns.most_frames <= FRAMES_PER_TURN, turns.most_frames
        finally:
            sock.close()
        await still_served(running)


async def test_a_message_that_never_ends_is_closed_with_1009(
    hub_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty continuation frames add no byte to the message, but each one is a fragment."""
    async with counted(hub_factory, monkeypatch) as (running, _):
        sock = await asyncio.to_thread(connect, running.port, "/ws", "clarion.v1")
        try:
            sock.sendall(frame(0x1, b'{"op":', fin=False))
            flood = await flooded(sock, frame(0x0, fin=False) * 5000, seconds=timeout(5))
            assert await asyncio.to_thread(flood.ended.wait, timeout(5))
            assert flood.close_code() == 1009
        finally:
            sock.close()


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "closed"])
async def test_what_a_peer_sent_before_it_left_is_handled(reset: bool) -> None:
    """A peer that resets its connection, or closes it cleanly, has what it sent before
    handled (a publish just before a drop is made): the queue's bounds keep that small."""
    received: list[str] = []
    go = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()  # busy elsewhere while the messages come
        while (message := await receive())["type"] != "websocket.disconnect":
            received.append(message["text"])
        received.append(f"disconnect {message['code']}")

    server = Server(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        sock = await asyncio.to_thread(connect, server.port, "/", "x")
        sock.sendall(frame(0x1, b"m") * 10)
        if reset:
            await asyncio.sleep(0.2)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.sendall(frame(0x8, b"\x03\xe8"))
            await asyncio.sleep(0.2)
        sock.close()
        await asyncio.sleep(0.2)
        go.set()
        await until(lambda: received and received[-1].startswith("disconnect"))
        assert received == ["m"] * 10 + ["disconnect 1006" if reset else "disconnect 1000"]
    finally:
        await asyncio.wait_for(server.shutdown(timeout=1.0), timeout(5))


def _stomp_frame(command: str, *headers: str) -> bytes:
    return (command + "\n" + "".join(h + "\n" for h in headers) + "\n\0").encode()


ACK_ID = encode_single("pub:x", "e", 5)
# Frames that carry no receipt, so that nothing answers them: what the hub spends on them
# shows only in its loop. Each flood packs as many into one message as a message may hold.
PACKED = {
    "unsubscribe": _stomp_frame("UNSUBSCRIBE", "id:nope"),
    "ack": _stomp_frame("ACK", f"id:{ACK_ID}"),
    "nack": _stomp_frame("NACK", f"id:{ACK_ID}"),
    "begin-abort": _stomp_frame("BEGIN", "transaction:t") + _stomp_frame("ABORT", "transaction:t"),
}


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("kind", list(PACKED))
async def test_stomp_frames_packed_in_messages_are_bounded_per_turn(
    hub_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, kind: str, deflate: bool
) -> None:
    # Thousands of small STOMP frames in one WebSocket message, a few bytes each on the wire
    # once deflated, were all carried out in one turn: other clients waited for seconds.
    carried = [0]
    dispatch = StompConnection.dispatch

    async def counting(self: StompConnection, event: Any) -> None:
        carried[0] += 1
        await dispatch(self, event)

    monkeypatch.setattr(StompConnection, "dispatch", counting)
    running: RunningHub = await hub_factory(**settings())
    most = 0
    loop = asyncio.get_running_loop()
    ticking = True

    def tick() -> None:
        nonlocal most
        most = max(most, carried[0])
        carried[0] = 0
        if ticking:
            loop.call_soon(tick)

    message = PACKED[kind] * (MAX_FRAMES_PER_MESSAGE // PACKED[kind].count(b"\0"))
    chunk = (compressed(message) if deflate else frame(0x1, message)) * 200
    sock = await asyncio.to_thread(
        connect, running.port, "/stomp", "v12.stomp", DEFLATE if deflate else ""
    )
    try:
        sock.sendall(frame(0x1, b"CONNECT\naccept-version:1.2\nhost:x\n\n\0"))
        assert b"CONNECTED" in await asyncio.to_thread(sock.recv, 4096)
        sock.sendall(
            frame(0x1, _stomp_frame("SUBSCRIBE", "id:s", "destination:/topic/pub:x", "ack:client"))
        )
        loop.call_soon(tick)
        flood = await flooded(sock, chunk)
        assert flood.close_code() is None, flood.received[:200]  # within the rules
        assert most > 0
        assert most <= wsreader.FRAMES_PER_CALL, most
    finally:
        ticking = False
        sock.close()
    await still_served(running)


async def test_a_message_of_more_frames_than_allowed_ends_the_session(hub: RunningHub) -> None:
    sock = await asyncio.to_thread(connect, hub.port, "/stomp", "v12.stomp")
    try:
        sock.sendall(frame(0x1, b"CONNECT\naccept-version:1.2\nhost:x\n\n\0"))
        assert b"CONNECTED" in await asyncio.to_thread(sock.recv, 4096)
        packed = PACKED["unsubscribe"] * (MAX_FRAMES_PER_MESSAGE + 1)
        flood = await flooded(sock, frame(0x1, packed), seconds=timeout(2))
        assert b"ERROR" in flood.received, flood.received
        assert f"over {MAX_FRAMES_PER_MESSAGE} frames in one WebSocket message".encode() in (
            flood.received
        )
        assert flood.ended.is_set() or flood.close_code() is not None
    finally:
        sock.close()


def test_heart_beat_eols_are_skipped_without_a_python_step_per_byte() -> None:
    parser = FrameParser()
    parser.feed(b"\n" * 65000 + b"\r\n" * 1000)
    frames: list[object] = []
    lines = python_steps(lambda: frames.append(parser.next_frame()))
    assert frames == [None]
    assert parser.pending == 0
    assert lines < 1000, lines


def _deflated(payload: bytes, end: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(payload) + compressor.flush(end)


@pytest.mark.parametrize(
    ("path", "subprotocol"), [("/ws", "clarion.v1"), ("/stomp", "v12.stomp")], ids=["ws", "stomp"]
)
@pytest.mark.parametrize(
    ("opening", "chunk", "code"),
    [
        # A finished, empty deflate stream, then fragments of bytes after its end: each once
        # added to what zlib kept aside, copied again with every fragment.
        pytest.param(
            frame(0x1, b"\x03\x00", fin=False, rsv1=True),
            frame(0x0, b"\0" * 60_000, fin=False),
            1002,
            id="after-the-end",
        ),
        # Empty stored blocks inflate to nothing: only the message's bytes on the wire bound them.
        pytest.param(
            frame(0x1, b"\x00\x00\x00\xff\xff" * 12_000, fin=False, rsv1=True),
            frame(0x0, b"\x00\x00\x00\xff\xff" * 12_000, fin=False),
            1009,
            id="inflating-to-nothing",
        ),
    ],
)
async def test_a_compressed_message_is_bounded_by_its_bytes_on_the_wire(
    hub_factory: Callable[..., Any],
    path: str,
    subprotocol: str,
    opening: bytes,
    chunk: bytes,
    code: int,
) -> None:
    running: RunningHub = await hub_factory(**settings())
    sock = await asyncio.to_thread(connect, running.port, path, subprotocol, DEFLATE)
    try:
        sock.sendall(opening)
        flood = await flooded(sock, chunk, seconds=timeout(5))
        assert await asyncio.to_thread(flood.ended.wait, timeout(5))
        assert flood.close_code() == code
        # Cut at its first fragment too many, not after the 1,024 fragments (60 MB) a message
        # may have; what was sent meanwhile is that fragment and what the socket buffers held.
        assert flood.sent < 16 << 20, flood.sent
    finally:
        sock.close()
    await still_served(running)


@pytest.mark.parametrize(
    ("path", "subprotocol"), [("/ws", "clarion.v1"), ("/stomp", "v12.stomp")], ids=["ws", "stomp"]
)
async def test_a_message_whose_deflate_stream_ends_with_a_final_block_is_read(
    hub_factory: Callable[..., Any], path: str, subprotocol: str
) -> None:
    """RFC 7692 lets a sender end a message's stream with a final block: no false alarm."""
    running: RunningHub = await hub_factory(**settings())
    sock = await asyncio.to_thread(connect, running.port, path, subprotocol, DEFLATE)
    try:
        if path == "/stomp":
            message = b"CONNECT\naccept-version:1.2\nhost:x\n\n\0"
            expected = b"CONNECTED"
        else:
            message = b'{"op":"ping","id":1}'
            expected = b"ok"
        sock.sendall(frame(0x1, _deflated(message, zlib.Z_FINISH), rsv1=True))
        reply = b""
        deadline = time.monotonic() + timeout(10)
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = await asyncio.to_thread(sock.recv, 65536)
            assert data, reply
            reply += data
            frames = reply
            # The hub compresses too: inflate its first message to read it.
            if len(frames) >= 2:
                n, head = frames[1] & 0x7F, 2
                if n == 126:
                    n, head = struct.unpack("!H", frames[2:4])[0], 4
                if len(frames) >= head + n:
                    body = frames[head : head + n]
                    if frames[0] & 0x40:
                        body = zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")
                    assert expected in body, body
                    break
        else:
            raise AssertionError(f"no reply: {reply!r}")
    finally:
        sock.close()


def _accepted_after_the_close(sock: socket.socket, bad: bytes, seconds: float) -> tuple[int, int]:
    """Send ``bad``, read up to the hub's close frame, then go on sending for ``seconds`` as
    fast as the socket takes it; the close code and the bytes taken after it."""
    sock.sendall(bad)
    received = b""
    while len(received) < 4:  # a close frame: 0x88, its length, the code
        data = sock.recv(1 << 16)
        assert data, received
        received += data
    assert received[0] == 0x88, received
    code = int.from_bytes(received[2:4], "big")
    sock.setblocking(False)
    chunk, accepted = b"\0" * 65536, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            accepted += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.005)
        except OSError:
            break
    return code, accepted


@pytest.mark.parametrize(
    ("path", "subprotocol"), [("/ws", "clarion.v1"), ("/stomp", "v12.stomp")], ids=["ws", "stomp"]
)
@pytest.mark.parametrize(
    ("bad", "code"),
    [
        pytest.param(frame(0x1, b"x")[:1] + bytes((1,)) + b"x", 1002, id="unmasked"),
        pytest.param(frame(0x1, b"\xff\xfe"), 1007, id="not-utf-8"),
        pytest.param(frame(0x2, b"\0" * 70_000), 1009, id="too-big"),
        pytest.param(frame(0x0, b"x"), 1002, id="continuation-first"),
    ],
)
async def test_nothing_is_read_after_the_hub_fails_a_connection(
    hub_factory: Callable[..., Any], path: str, subprotocol: str, bad: bytes, code: int
) -> None:
    """A peer that goes on sending after it broke the protocol fills the socket buffers, not
    the hub's time: the hub reads nothing more (RFC 6455 §7.1.7) until its close timer ends the
    connection, and every other client is served meanwhile."""
    running: RunningHub = await hub_factory(**settings())
    sock = await asyncio.to_thread(connect, running.port, path, subprotocol)
    try:
        closed, accepted = await asyncio.to_thread(_accepted_after_the_close, sock, bad, 1.0)
        assert closed == code
        # Reading and dropping, the hub took hundreds of megabytes a second over loopback; not
        # reading, the kernel's buffers take a few.
        assert accepted < 16 << 20, accepted
    finally:
        sock.close()
    await still_served(running)
