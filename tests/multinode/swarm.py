"""Many WebSocket subscribers on raw sockets: a thousand fit in one test process.

Each :class:`Subscriber` is a small ``asyncio.Protocol`` (no task, no library per connection)
that upgrades, subscribes to one channel — from its cursor when it has one — and records what
it receives in a :class:`~tests.support.history.ClientLog`, as
:class:`~tests.multinode.helpers.Tracker` does, for the history checker to judge.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from clarion.protocol.cursor import Cursor

from ..support.history import ClientLog, check

MASK = b"\x5a\x13\xc7\x02"


def masked(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame (FIN set, masked); payloads up to 64 KiB."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode]) + size + MASK + body


class Subscriber:
    """What one client remembers across its connections, and what went wrong."""

    count = 0

    def __init__(self, channel: str, token: str | None = None) -> None:
        self.channel = channel
        self.token = token
        self.cursor: str | None = None
        self.last: tuple[str, int] | None = None
        self.received = 0
        self.connections = 0
        Subscriber.count += 1
        self.log = ClientLog(f"subscriber-{Subscriber.count}")
        self.resets: list[str] = []
        self.errors: list[dict[str, Any]] = []  # error replies to subscribe
        self.closes: list[int] = []  # close codes the hub sent
        self.protocol: _Protocol | None = None

    def handle(self, msg: dict[str, Any], subscribed: asyncio.Future[bool]) -> None:
        if "id" in msg:
            if "error" in msg:
                self.errors.append(msg["error"])
                if not subscribed.done():
                    subscribed.set_result(False)
                return
            ok = msg["ok"]
            if ok.get("reset") or self.last is None:
                self.last = (ok["epoch"], ok["offset"])
                self.cursor = ok["cursor"]
            if not ok.get("reset"):  # a reset reply is followed by the reset push
                self.log.subscribed(self.channel, ok["epoch"], ok["offset"], ok["cursor"])
            if not subscribed.done():
                subscribed.set_result(True)
        elif "reset" in msg:
            reset = msg["reset"]
            self.resets.append(reset["reason"])
            position = Cursor.decode(reset["cursor"]).get(self.channel)
            if position is not None:
                self.log.reset(
                    self.channel, position.epoch, position.offset, reset["reason"], reset["cursor"]
                )
        elif msg.get("channel") == self.channel and "offset" in msg:
            here = (msg["epoch"], msg["offset"])
            self.log.publication(self.channel, here[0], here[1], msg["cursor"])
            if self.last is not None and here[0] == self.last[0] and here[1] <= self.last[1]:
                return  # a duplicate, or late: the checker reports it
            self.last = here
            self.cursor = msg["cursor"]
            self.received += 1

    def anomalies(self) -> list[str]:
        """The history checker's findings, then any reset, refused subscribe or close."""
        out = [str(f) for f in check([self.log])[:3]]
        for name in ("resets", "errors", "closes"):
            value = getattr(self, name)
            if value:
                out.append(f"{name}: {value[:3]}")
        return out

    def drop(self) -> None:
        """Vanish without a close handshake (RST), as a network blip does."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abort()
        self.protocol = None


class _Protocol(asyncio.Protocol):
    def __init__(self, sub: Subscriber, host: str, port: int) -> None:
        self.sub = sub
        self.host = host
        self.port = port
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[bool] = loop.create_future()
        self.subscribed: asyncio.Future[bool] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.lost = False  # the connection ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/ws" if self.sub.token is None else f"/ws?token={self.sub.token}"
        transport.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: clarion.v1\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for fut in (self.upgraded, self.subscribed):
            if not fut.done():
                fut.set_result(False)

    def subscribe(self) -> None:
        op: dict[str, Any] = {"id": 1, "op": "subscribe", "channel": self.sub.channel}
        if self.sub.cursor is not None:
            op["since"] = self.sub.cursor
        assert self.transport is not None
        self.transport.write(masked(json.dumps(op).encode()))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.sub.errors.append({"upgrade": bytes(buf[:80]).decode(errors="replace")})
                self.upgraded.set_result(False)
                assert self.transport is not None
                self.transport.close()
                return
            del buf[: end + 4]
            self.open = True
            self.upgraded.set_result(True)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            opcode = buf[pos] & 0x0F
            length, head = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if opcode == 1:
                self.sub.handle(json.loads(payload), self.subscribed)
            elif opcode == 8:
                self.sub.closes.append(int.from_bytes(payload[:2], "big") if payload else 1005)
            elif opcode == 9 and self.transport is not None:
                self.transport.write(masked(payload, opcode=10))
        del buf[:pos]


async def connect_all(
    subs: Sequence[Subscriber],
    ports: Sequence[int],
    *,
    host: str = "127.0.0.1",
    handshakes: int = 256,
    timeout: float = 30.0,
) -> float:
    """Connect and subscribe every subscriber (``subs[i]`` to ``ports[i % len(ports)]``) at once.

    At most ``handshakes`` TCP connects + upgrades are in flight (the hub's listen backlog);
    the subscribes themselves all go out as soon as their upgrade is answered. Returns the
    seconds until every subscribe was answered; a refused subscribe is recorded, not retried.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(handshakes)
    started = time.monotonic()

    async def one(i: int, sub: Subscriber) -> None:
        port = ports[i % len(ports)]
        proto = _Protocol(sub, host, port)
        sub.protocol = proto
        async with gate:
            await loop.create_connection(lambda: proto, host, port)
            upgraded = await proto.upgraded
        if not upgraded:
            return
        sub.connections += 1
        proto.subscribe()
        await proto.subscribed

    await asyncio.wait_for(asyncio.gather(*(one(i, s) for i, s in enumerate(subs))), timeout)
    return time.monotonic() - started
