"""A deliberately plain STOMP client for the tests: raw frames over the ``websockets`` library.

It parses what the hub sends with its own few lines (not clarion's parser), so that a bug in the
codec cannot hide itself in both directions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..conftest import RunningHub, timeout


@dataclass
class Received:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\":
            out.append({"c": ":", "n": "\n", "r": "\r", "\\": "\\"}[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse(raw: bytes, *, escaped: bool = True) -> list[Received]:
    """Every frame in one WebSocket message (heart-beat EOLs become ``HEARTBEAT``)."""
    frames = []
    while raw:
        if raw[:1] in (b"\n", b"\r"):
            frames.append(Received("HEARTBEAT"))
            raw = raw[2:] if raw.startswith(b"\r\n") else raw[1:]
            continue
        head, _, rest = raw.partition(b"\n\n")
        lines = head.decode().split("\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if lines[0] != "CONNECTED" and escaped:
                name, value = unescape(name), unescape(value)
            headers.setdefault(name, value)
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, raw = rest[:size], rest[size:]
            assert raw[:1] == b"\0", "frame not NUL-terminated after content-length"
            raw = raw[1:]
        else:
            body, _, raw = rest.partition(b"\0")
        frames.append(Received(lines[0], headers, body))
    return frames


def frame(command: str, body: bytes | str = b"", **headers: str) -> bytes:
    """A client frame; header names use ``_`` for ``-``; values are sent as given."""
    lines = [command] + [f"{k.replace('_', '-')}:{v}" for k, v in headers.items()]
    payload = body.encode() if isinstance(body, str) else body
    return ("\n".join(lines) + "\n\n").encode() + payload + b"\0"


class StompClient:
    def __init__(self, conn: ClientConnection, *, escaped: bool = True) -> None:
        self.conn = conn
        self.escaped = escaped
        self._frames: list[Received] = []

    async def send_raw(self, data: bytes | str) -> None:
        await self.conn.send(data)

    async def send(self, command: str, body: bytes | str = b"", **headers: str) -> None:
        await self.conn.send(frame(command, body, **headers).decode())

    async def recv(self, wait: float = 5, *, heart_beats: bool = False) -> Received:
        """The next frame (heart-beats skipped unless asked for)."""
        while True:
            while self._frames:
                got = self._frames.pop(0)
                if got.command != "HEARTBEAT" or heart_beats:
                    return got
            raw = await asyncio.wait_for(self.conn.recv(), timeout(wait))
            self._frames = parse(
                raw.encode() if isinstance(raw, str) else raw, escaped=self.escaped
            )

    async def expect(self, command: str, wait: float = 5) -> Received:
        got = await self.recv(wait)
        assert got.command == command, f"expected {command}, got {got}"
        return got

    async def connect(self, version: str = "1.2", **headers: str) -> Received:
        headers.setdefault("host", "clarion")
        await self.send("CONNECT", accept_version=version, **headers)
        connected = await self.expect("CONNECTED")
        self.escaped = connected.headers["version"] != "1.0"
        return connected

    async def closed(self, wait: float = 5) -> int | None:
        """Wait for the hub to close the connection; return the close code."""
        try:
            while True:
                await asyncio.wait_for(self.conn.recv(), timeout(wait))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None


@asynccontextmanager
async def stomp(
    hub: RunningHub, subprotocols: list[str] | None = None, query: str = "", **kw: Any
) -> AsyncIterator[StompClient]:
    url = f"ws://127.0.0.1:{hub.port}/stomp{query}"
    if subprotocols is None:
        subprotocols = ["v12.stomp", "v11.stomp", "v10.stomp"]
    async with websockets.connect(
        url,
        subprotocols=subprotocols or None,  # type: ignore[arg-type]
        open_timeout=timeout(5),
        **kw,
    ) as conn:
        yield StompClient(conn)
