"""The client reads within its limits from whatever answers at the hub's URL (docs/client.md,
"Limits on what the client reads").

A hostile peer on loopback answers every request with a head and then bytes that never end,
counting what it wrote until the client hangs up. What it managed to write is the client's
limit plus what the two sockets' buffers hold; without the limits it writes until its own cap.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import logging
import struct
import sys
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from clarion.client import ConnectFailed, ConnectionLost, connect

from ..conftest import timeout, until
from .conftest import fixed_backoff

# What a peer writes at most before it gives up: far past any limit, so that a client without
# one is caught by the assertions below, not by the test machine's memory.
CAP = 160 * 1024 * 1024
# Loopback's send and receive buffers (Linux autotunes them to a few MiB each): written, yet
# never read by the client.
IN_FLIGHT = 16 * 1024 * 1024
SMALL = 256 * 1024  # the limits the tests give the client
UNIT = 64 * 1024


class EndlessPeer:
    """A foreign server: each connection gets ``head`` and then ``unit`` over and over."""

    def __init__(self, head: bytes, unit: bytes) -> None:
        self.head = head
        self.unit = unit
        self.sent: list[int] = []  # per connection, once the client hung up (or the cap)
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = 0
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(request)
            writer.write(self.head_for(request))
            while sent < CAP:
                writer.write(self.unit)
                await writer.drain()
                sent += len(self.unit)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.sent.append(sent)
            writer.close()

    def head_for(self, request: bytes) -> bytes:
        return self.head


class EndlessWebSocket(EndlessPeer):
    """Accepts the upgrade with ``clarion.v1``, then sends text frames of 48 MiB, each declared
    in its header before its payload."""

    def __init__(self) -> None:
        frame = struct.pack("!BBQ", 0x81, 127, 48 * 1024 * 1024)
        super().__init__(b"", frame + b"x" * (UNIT - len(frame)))
        self.payload = b"x" * UNIT

    def head_for(self, request: bytes) -> bytes:
        key = b""
        for line in request.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1(key + guid).digest())
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Protocol: clarion.v1\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )


@pytest.fixture
async def peer(request: pytest.FixtureRequest) -> AsyncIterator[EndlessPeer]:
    made: EndlessPeer = copy.copy(request.param)  # a parameter's instance serves many tests
    made.sent, made.requests = [], []
    made.server = await asyncio.start_server(made._serve, "127.0.0.1", 0)
    try:
        yield made
    finally:
        made.server.close()
        await made.server.wait_closed()


def http_head(status: str, kind: str) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n\r\n".encode()


def dropped_within(peer: EndlessPeer, limit: int) -> None:
    """Every connection ended before its cap, within ``limit`` and what sockets hold."""
    assert peer.sent, "no connection ended"
    assert max(peer.sent) < limit + IN_FLIGHT, peer.sent


async def retried(peer: EndlessPeer, transport: Any, **options: Any) -> None:
    """A subscription over ``transport`` until the client dropped ``peer`` and tried again."""
    async with connect(
        peer.url, transport=transport, backoff=fixed_backoff(0.05), **options
    ) as client:
        reading = asyncio.ensure_future(anext(client.subscribe("chat:lobby")))
        await until(lambda: len(peer.sent) >= 2, wait=20)
        reading.cancel()


SSE = http_head("200 OK", "text/event-stream")


@pytest.mark.parametrize(
    ("peer", "transport", "option"),
    [
        pytest.param(
            EndlessPeer(SSE + b"data: ", b"x" * UNIT), "sse", "max_event_bytes",
            id="a line without end",
        ),
        pytest.param(
            EndlessPeer(SSE, b": c\n" * (UNIT // 4)), "sse", "max_event_bytes",
            id="comments without an event",
        ),
        pytest.param(
            EndlessPeer(SSE, b"data: x\n" * (UNIT // 8)), "sse", "max_event_bytes",
            id="an event without end",
        ),
        pytest.param(
            EndlessPeer(http_head("200 OK", "application/json") + b"[", b"1," * (UNIT // 2)),
            "poll", "max_reply_bytes",
            id="a poll reply without end",
        ),
    ],
    indirect=["peer"],
)  # fmt: skip
async def test_an_endless_event_or_reply_is_dropped_and_the_stream_retried(
    peer: EndlessPeer, transport: Any, option: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "clarion.client")
    await retried(peer, transport, **{option: SMALL})
    dropped_within(peer, SMALL)
    assert f"more than 262144 bytes ({option})" in caplog.text


@pytest.mark.parametrize(
    "peer",
    [pytest.param(EndlessPeer(http_head("403 Forbidden", "text/html"), b"<p>" * (UNIT // 3)))],
    indirect=True,
)
@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_an_endless_error_body_is_dropped_and_the_stream_retried(
    peer: EndlessPeer, transport: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "clarion.client")
    await retried(peer, transport, open_timeout=None)
    dropped_within(peer, 64 * 1024)
    assert "an HTTP 403 body of more than 65536 bytes" in caplog.text


@pytest.mark.parametrize("peer", [pytest.param(EndlessWebSocket())], indirect=True)
async def test_an_oversized_websocket_message_is_dropped_and_the_connection_retried(
    peer: EndlessPeer,
) -> None:
    client = connect(
        peer.url,
        transport="ws",
        backoff=fixed_backoff(0.05),
        max_reply_bytes=SMALL,
        open_timeout=timeout(3),
    )
    # The first connection never opens: the deadline ends it, naming why each try failed.
    with pytest.raises(ConnectFailed, match=r"more than 262144 bytes \(max_reply_bytes\)"):
        await client.open()
    await client.close()
    assert len(peer.sent) >= 2
    dropped_within(peer, SMALL)


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(
            EndlessPeer(http_head("200 OK", "application/json") + b"[", b"1," * (UNIT // 2))
        )
    ],
    indirect=True,
)
async def test_an_endless_api_reply_fails_the_request(peer: EndlessPeer) -> None:
    async with connect(peer.url, api_key="k", max_reply_bytes=SMALL) as client:
        with pytest.raises(ConnectionLost, match=r"more than 262144 bytes \(max_reply_bytes\)"):
            await client.publish("chat:lobby", {"text": "hi"})
        with pytest.raises(ConnectionLost, match="max_reply_bytes"):
            await client.history("chat:lobby")
    dropped_within(peer, SMALL)


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(
            EndlessPeer(http_head("200 OK", "application/json") + b"[", b"1," * (UNIT // 2)),
            id="reply",
        ),
        pytest.param(
            EndlessPeer(http_head("500 Internal Server Error", "text/html"), b"x" * UNIT),
            id="error",
        ),
    ],
    indirect=True,
)
@pytest.mark.parametrize("command", [["publish", "chat:lobby", "{}"], ["webhooks", "list"]])
async def test_the_cli_reports_an_endless_answer_in_one_line(
    peer: EndlessPeer, command: list[str]
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clarion", *command, "--url", peer.url, "--api-key", "k",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), timeout(60))
    assert proc.returncode not in (0, None)
    assert b"Traceback" not in err
    assert b"bytes: the connection was dropped" in err, err
    dropped_within(peer, 8 * 1024 * 1024)


def _gzip_of_zeros() -> tuple[bytes, bytes]:
    """A gzip stream's header and a block that repeats without end, each block 64 MiB of zeros
    in 64 KiB: a full flush leaves nothing for the next block to refer back to."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = packer.compress(b"")
    return header, packer.compress(bytes(64 * 1024 * 1024)) + packer.flush(zlib.Z_FULL_FLUSH)


GZIP_HEADER, GZIP_BLOCK = _gzip_of_zeros()


def gzipped(status: str, kind: str) -> EndlessPeer:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Encoding: gzip\r\n\r\n"
    return EndlessPeer(head.encode() + GZIP_HEADER, GZIP_BLOCK)


def asked_uncompressed(peer: EndlessPeer) -> None:
    assert peer.requests
    for request in peer.requests:
        assert b"\r\naccept-encoding: identity\r\n" in request.lower(), request


GZIPPED = "an answer with content-encoding 'gzip', not asked for: the connection was dropped"


@pytest.mark.parametrize(
    ("peer", "transport"),
    [
        pytest.param(gzipped("200 OK", "text/event-stream"), "sse", id="sse"),
        pytest.param(gzipped("200 OK", "application/json"), "poll", id="poll"),
        pytest.param(gzipped("403 Forbidden", "text/html"), "sse", id="sse error"),
    ],
    indirect=["peer"],
)
async def test_a_compressed_answer_is_refused_unread_and_the_stream_retried(
    peer: EndlessPeer, transport: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Inflated, each 64 KiB the peer sends is 64 MiB: counted after inflating, one read would
    # be past every limit before the count saw it.
    caplog.set_level(logging.INFO, "clarion.client")
    await retried(peer, transport, open_timeout=None)
    asked_uncompressed(peer)
    dropped_within(peer, 0)
    assert GZIPPED in caplog.text


@pytest.mark.parametrize("peer", [gzipped("200 OK", "application/json")], indirect=True)
async def test_a_compressed_api_reply_fails_the_request_unread(peer: EndlessPeer) -> None:
    async with connect(peer.url, api_key="k") as client:
        with pytest.raises(ConnectionLost, match="content-encoding 'gzip'"):
            await client.history("chat:lobby")
    asked_uncompressed(peer)
    await until(lambda: peer.sent, wait=20)  # the peer sees the hang-up after the client
    dropped_within(peer, 0)


@pytest.mark.parametrize("peer", [gzipped("200 OK", "application/json")], indirect=True)
async def test_the_cli_refuses_a_compressed_answer_in_one_line(peer: EndlessPeer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clarion", "publish", "chat:lobby", "{}", "--url", peer.url,
        "--api-key", "k", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), timeout(60))
    assert proc.returncode not in (0, None)
    assert b"Traceback" not in err
    assert GZIPPED.encode() in err, err
    asked_uncompressed(peer)
    dropped_within(peer, 0)
