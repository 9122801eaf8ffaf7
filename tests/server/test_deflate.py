"""permessage-deflate on clarion's server: negotiation, compressed echoes, and inbound bounds."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from clarion.protocol import deflate

from .helpers import TIMEOUT, connect, read_head
from .test_websocket import Recorder, closed, open_ws, recv

NO_TAKEOVER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
TEXT = '{"channel":"ticker:ACME","data":{"price":101.25,"bid":101.2,"ask":101.3}} ' * 20


@pytest.mark.parametrize("offer_window", [None, 9, 15])
async def test_compressed_echo_matches_uncompressed(
    start_server: Any, offer_window: int | None
) -> None:
    server = await start_server(Recorder())
    factory = ClientPerMessageDeflateFactory(
        server_max_window_bits=offer_window, client_max_window_bits=True
    )
    messages: list[str | bytes] = [TEXT, "short", TEXT.encode() * 3, "é" * 5000, ""]
    async with open_ws(server.port, extensions=[factory], compression=None) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith(NO_TAKEOVER)
        for message in messages:
            await ws.send(message)
            assert await recv(ws) == message
    async with open_ws(server.port, compression=None) as plain:
        assert "Sec-WebSocket-Extensions" not in plain.response.headers
        for message in messages:
            await plain.send(message)
            assert await recv(plain) == message


async def test_compression_can_be_turned_off(start_server: Any) -> None:
    server = await start_server(Recorder(), permessage_deflate=False)
    async with open_ws(server.port) as ws:  # the client offers it by default
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send(TEXT)
        assert await recv(ws) == TEXT


# -- what goes over the wire -------------------------------------------------------------------


async def upgrade(port: int, extensions: str | None) -> tuple[Any, Any, dict[bytes, bytes]]:
    reader, writer = await connect(port)
    offer = "" if extensions is None else f"Sec-WebSocket-Extensions: {extensions}\r\n"
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + os.urandom(16).hex()[:22].encode() + b"==\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + offer.encode() + b"\r\n"
    )
    head = await read_head(reader)
    assert head.status == 101
    return reader, writer, head.headers


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        head = bytes((first, 0x80 | length))
    elif length < 65536:
        head = bytes((first, 0x80 | 126)) + struct.pack("!H", length)
    else:
        head = bytes((first, 0x80 | 127)) + struct.pack("!Q", length)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: Any) -> tuple[int, bytes]:
    """The first byte (FIN, RSV1, opcode) and payload of one server frame."""
    head = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    length = head[1]
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return head[0], await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


def squeeze(payload: bytes) -> bytes:
    """``payload`` compressed as a client would (trailer removed)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


async def test_long_messages_go_compressed_short_ones_as_they_are(start_server: Any) -> None:
    server = await start_server(Recorder())
    reader, writer, headers = await upgrade(server.port, "permessage-deflate")
    assert headers[b"sec-websocket-extensions"] == NO_TAKEOVER.encode()
    writer.write(client_frame(0x1, squeeze(TEXT.encode()), rsv1=True))
    first, payload = await read_frame(reader)
    assert first == 0xC1  # FIN, RSV1, text
    assert len(payload) < len(TEXT) // 4
    assert zlib.decompressobj(-15).decompress(payload + deflate.TRAILER) == TEXT.encode()
    writer.write(client_frame(0x1, b"hi"))  # an uncompressed message is fine too
    assert await read_frame(reader) == (0x81, b"hi")
    writer.close()


async def _fails_with(server: Any, frames: list[bytes], code: int, offer: str | None) -> None:
    reader, writer, _ = await upgrade(server.port, offer)
    for frame in frames:
        writer.write(frame)
    first, payload = await read_frame(reader)
    assert first == 0x88, (first, payload)
    assert struct.unpack("!H", payload[:2])[0] == code, payload
    writer.close()  # the close handshake is not the subject: do not make the server wait on it


BOMB = squeeze(b"0" * (1 << 20))  # a MiB of text in about a KiB


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([client_frame(0x1, BOMB, rsv1=True)], 1009),
        # a fragmented bomb: each fragment inflates to less than the limit, the message does not
        (
            [client_frame(0x1, BOMB[:200], fin=False, rsv1=True)]
            + [client_frame(0x0, BOMB[i : i + 200], fin=False) for i in range(200, 800, 200)]
            + [client_frame(0x0, BOMB[800:])],
            1009,
        ),
        ([client_frame(0x2, squeeze(bytes(70000)), rsv1=True)], 1009),  # binary, just over
        ([client_frame(0x1, b"\xff\xfe\xfd garbage", rsv1=True)], 1002),
        (
            [
                client_frame(0x1, BOMB[:10], fin=False, rsv1=True),
                client_frame(0x0, b"x", rsv1=True),
            ],
            1002,  # RSV1 on a continuation frame
        ),
        ([client_frame(0x9, b"", rsv1=True)], 1002),  # on a control frame
        ([client_frame(0x1, squeeze(b"\xff" * 200), rsv1=True)], 1007),  # inflates to bad UTF-8
    ],
    ids=["bomb", "fragmented-bomb", "binary-bomb", "corrupt", "rsv1-cont", "rsv1-ping", "utf8"],
)
async def test_bad_compressed_input_closes_with_its_code(
    start_server: Any, frames: list[bytes], code: int
) -> None:
    app = Recorder()
    server = await start_server(app, max_message_bytes=65536)
    await _fails_with(server, frames, code, "permessage-deflate")
    # Nothing of it reached the app, and the server goes on serving others.
    assert not [m for m in app.messages if m["type"] == "websocket.receive"]
    async with open_ws(server.port) as ws:
        await ws.send(TEXT)
        assert await recv(ws) == TEXT


async def test_a_message_at_the_limit_inflates_whole(start_server: Any) -> None:
    server = await start_server(Recorder(), max_message_bytes=65536)
    reader, writer, _ = await upgrade(server.port, "permessage-deflate")
    writer.write(client_frame(0x2, squeeze(bytes(65536)), rsv1=True))
    first, payload = await read_frame(reader)
    assert first == 0xC2
    assert zlib.decompressobj(-15).decompress(payload + deflate.TRAILER) == bytes(65536)
    writer.close()


async def test_rsv1_without_negotiation_is_a_protocol_error(start_server: Any) -> None:
    server = await start_server(Recorder())
    await _fails_with(server, [client_frame(0x1, squeeze(TEXT.encode()), rsv1=True)], 1002, None)
    off = await start_server(Recorder(), permessage_deflate=False)
    frame = client_frame(0x1, squeeze(TEXT.encode()), rsv1=True)
    await _fails_with(off, [frame], 1002, "permessage-deflate")


async def test_a_bomb_through_the_client_library_is_closed_with_1009(start_server: Any) -> None:
    app = Recorder()
    server = await start_server(app, max_message_bytes=4096)
    async with open_ws(server.port, max_size=None) as ws:
        await ws.send("x" * 4096)  # compresses to a few bytes: the limit is what it inflates to
        assert await recv(ws) == "x" * 4096
        await ws.send("x" * 4097)
        code, _ = await closed(ws)
    assert code == 1009
