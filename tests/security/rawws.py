"""A raw WebSocket client for abuse tests: it writes what it likes and reads only when told.

A well-behaved client library reads (and answers pings) on its own; the attacks here need a
peer that floods frames and never reads, with a small receive buffer so that the hub's writes
back up quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable

from ..conftest import timeout

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
)

PING, TEXT, CLOSE = 0x9, 0x1, 0x8


def masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (clients must mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", length)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", length)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def flood(self, chunk: bytes, done: Callable[[], bool], seconds: float) -> bool:
        """Write ``chunk`` over and over, never reading, until ``done()`` or the socket ends.

        Returns whether ``done()`` became true within ``seconds``.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if done():
                return True
            try:
                self.writer.write(chunk)
                await asyncio.wait_for(self.writer.drain(), 0.05)
            except TimeoutError:
                await asyncio.sleep(0.01)  # the hub stopped reading us; keep checking
            except OSError:
                break
            await asyncio.sleep(0)
        return done()

    async def read_frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return head[0] & 0x0F, await self.reader.readexactly(length)

    async def ended(self, wait: float = 10) -> bool:
        """Read (and drop) everything until the hub ends the connection."""
        try:
            async with asyncio.timeout(timeout(wait)):
                while await self.reader.read(1 << 20):
                    pass
        except TimeoutError:
            return False
        except OSError:
            pass  # a reset ends it too
        return True

    def close(self) -> None:
        self.writer.close()


async def open_raw(
    port: int, path: str, subprotocol: str, source: str = "127.0.0.1"
) -> RawWebSocket:
    """Upgrade a socket with a 4 KiB receive buffer; return once the hub answered 101."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout(5))
    # A small stream limit too: the reader stops taking bytes from the socket early.
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(UPGRADE.format(path=path, subprotocol=subprotocol).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawWebSocket(reader, writer)


@contextlib.asynccontextmanager
async def raw_ws(port: int, path: str, subprotocol: str) -> AsyncIterator[RawWebSocket]:
    ws = await open_raw(port, path, subprotocol)
    try:
        yield ws
    finally:
        ws.close()
