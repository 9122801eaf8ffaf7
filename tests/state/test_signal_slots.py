"""A keyed live signal waits for a reader that is behind in a slot of its publisher: a signal of
another publisher with the same key never replaces it. Over real sockets on both engines (on
Redis, the publishers on two nodes, the reader on one of them), on each transport that keeps
only the latest signal per slot."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
import websockets

from ..conftest import WS, RunningHub, timeout, until
from ..stomp.client import parse
from .test_ephemeral import STALLED, fill_until_behind, small_receive_buffer, stomp_reader

pytestmark = pytest.mark.timeout(90)

SECRET = "a-long-enough-test-secret-0123456789"
SETTINGS: dict[str, Any] = {
    "token_secret": SECRET,
    "api_key": "backend-key",
    "limits": {"send_queue_bytes": 32 * 1024 * 1024},
    "namespaces": {"cur": {"history_size": 4, "anonymous": True}},
}


def token(user: str) -> str:
    body = {"sub": user, "channels": ["cur:*"], "publish": ["cur:*"], "exp": int(time.time()) + 600}
    return jwt.encode(body, SECRET, algorithm="HS256")


@asynccontextmanager
async def user(hub: RunningHub, name: str) -> AsyncIterator[WS]:
    async with hub.ws(additional_headers={"Authorization": f"Bearer {token(name)}"}) as ws:
        yield ws


async def signal(ws: WS, data: Any, key: str) -> None:
    reply = await ws.call("publish", channel="cur:doc", data=data, ephemeral=True, key=key)
    assert reply.get("ok") == {"ephemeral": True}, reply


DONE = ("done", None)  # what a reader gives for the stored "done"


class Reader:
    """A subscriber to ``cur:doc`` that stops reading until told: what the hub sends it waits
    on the hub's side."""

    conn: Any

    async def read(self, wait: float) -> list[tuple[str, Any]]:
        """What comes next: ``(key, data)`` of signals, :data:`DONE` for the stored ``"done"``;
        a timeout error after ``wait`` seconds of nothing."""
        raise NotImplementedError

    async def rest(self, quiet: float = 1) -> list[tuple[str, Any]]:
        """The signals, up to the stored ``"done"`` and after it (held signals go out once the
        backlog has drained) until ``quiet`` seconds pass without any."""
        got: list[tuple[str, Any]] = []
        while DONE not in got:
            got += await self.read(timeout(20))
        while True:
            try:
                got += await self.read(quiet)
            except TimeoutError:
                return [item for item in got if item != DONE]


class WsReader(Reader):
    async def read(self, wait: float) -> list[tuple[str, Any]]:
        msg = json.loads(await asyncio.wait_for(self.conn.recv(), wait))
        if msg.get("ephemeral"):
            return [(msg["key"], msg["data"])]
        return [DONE] if msg.get("data") == "done" else []


class StompReader(Reader):
    async def read(self, wait: float) -> list[tuple[str, Any]]:
        got = []
        raw = await asyncio.wait_for(self.conn.recv(), wait)
        for msg in parse(raw.encode() if isinstance(raw, str) else raw):
            if msg.headers.get("x-ephemeral") == "true":
                got.append((msg.headers["x-key"], msg.json()))
            elif msg.body == b'"done"':
                got.append(DONE)
        return got


SSE_EVENT = re.compile(rb"^data: (.*)\n\n", re.MULTILINE)


class SseReader(Reader):
    received = b""

    async def read(self, wait: float) -> list[tuple[str, Any]]:
        self.received += await asyncio.wait_for(self.conn.read(1 << 20), wait)
        got = []
        last = 0
        for match in SSE_EVENT.finditer(self.received):
            event = json.loads(match[1])
            if event.get("ephemeral"):
                got.append((event["key"], event["data"]))
            elif event.get("data") == "done":
                got.append(DONE)
            last = match.end()
        self.received = self.received[last:]
        return got


@asynccontextmanager
async def reader_on(hub: RunningHub, transport: str) -> AsyncIterator[Reader]:
    if transport == "ws":
        async with websockets.connect(hub.ws_url, subprotocols=["clarion.v1"], **STALLED) as conn:
            small_receive_buffer(conn)
            await conn.send(json.dumps({"id": 1, "op": "subscribe", "channel": "cur:doc"}))
            assert "ok" in json.loads(await asyncio.wait_for(conn.recv(), timeout(5)))
            reader: Reader = WsReader()
            reader.conn = conn
            yield reader
    elif transport == "stomp":
        async with stomp_reader(hub.port) as conn:
            reader = StompReader()
            reader.conn = conn
            yield reader
    else:
        stream, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        try:
            writer.write(b"GET /sse?channel=cur:doc HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(stream.readuntil(b"\r\n\r\n"), timeout(5))
            assert head.startswith(b"HTTP/1.1 200"), head
            await until(
                lambda: any("cur:doc" in s.subscriptions for s in hub.hub.sessions.values())
            )
            reader = SseReader()
            reader.conn = stream
            yield reader
        finally:
            writer.close()


@pytest.mark.parametrize("transport", ["ws", "sse", "stomp"])
async def test_a_signal_of_another_publisher_does_not_take_the_slot_of_a_key(
    nodes: Callable[..., Any], transport: str
) -> None:
    alice_node: RunningHub = await nodes(**SETTINGS)
    node: RunningHub = await nodes(**SETTINGS)  # the reader's, and Mallory's
    async with reader_on(node, transport) as reader:
        session = next(s for s in node.hub.sessions.values() if "cur:doc" in s.subscriptions)
        await fill_until_behind(alice_node, session)
        signals_before = node.hub.stats.signals
        async with user(alice_node, "alice") as alice, user(node, "mallory") as mallory:
            for i in range(5):
                await signal(alice, {"x": i}, "alice")
            # Mallory takes Alice's key, and so does the backend: neither is Alice.
            await signal(mallory, {"x": 666}, "alice")
            await alice_node.publish("cur:doc", {"x": 0}, ephemeral=True, key="alice")
            await signal(alice, {"x": 5}, "alice")
        await alice_node.publish("cur:doc", "done")
        await until(lambda: node.hub.stats.signals >= signals_before + 8, wait=20)
        got = await reader.rest()
    # Alice's latest, Mallory's, the backend's: one each, in the order their slots came.
    assert got == [("alice", {"x": 5}), ("alice", {"x": 666}), ("alice", {"x": 0})]
