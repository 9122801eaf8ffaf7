"""Every byte queued for a peer is bounded: past twice ``limits.send_queue_bytes``, nothing more.

A connection that does not read is closed as slow (4001) once what waits for it passes its
budget; what is queued meanwhile — the rest of one publication's fan-out to many subscriptions
of one destination, a burst of publications in one loop iteration, keyed live signals held in
their slots — never takes it past twice the budget, and costs the loop time linear in what is
pushed. Raw peers with small receive buffers that never read; the hub on clarion's server (its
compiled loops and the Python ones) and under uvicorn (the portable queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from clarion import Hub, Settings
from clarion.asgi.pipe import FastPipe
from clarion.core.session import Session
from clarion.server import fastws

from ..conftest import RunningHub, start_clarion_hub, start_portable_hub, stop_hub, timeout
from .rawws import CLOSE, TEXT, RawWebSocket, masked, open_raw
from .servers import SERVERS

BUDGET = 64 * 1024
# Commands are not what these tests are about: many SUBSCRIBEs on one connection pass.
LIMITS = {
    "send_queue_bytes": BUDGET,
    "client_command_rate": 1e9,
    "client_command_burst": 10**9,
}
# clarion's server on its compiled loops and on the Python ones, and uvicorn (portable path).
SERVER_KINDS = [
    "clarion-compiled",
    "clarion-python",
    *(["uvicorn"] if "uvicorn" in SERVERS else []),
]
CLARION_KINDS = [kind for kind in SERVER_KINDS if kind.startswith("clarion")]


@contextlib.asynccontextmanager
async def serve(
    kind: str, policy: str = "disconnect", **settings: Any
) -> AsyncIterator[RunningHub]:
    if kind == "clarion-compiled" and not fastws.use_compiled(True):
        pytest.skip("clarion.server._fastloop is not built (no C compiler at install)")
    hub = Hub(
        Settings(
            limits={**LIMITS, **settings},
            namespaces={"default": {"slow_consumer": policy}},
            compiled=kind == "clarion-compiled",
        )
    )
    if kind == "uvicorn":
        running = await start_portable_hub(hub=hub, mount=False)
    else:
        running = await start_clarion_hub(hub=hub)
        assert fastws.COMPILED is (kind == "clarion-compiled")
    # Accepted sockets inherit the listener's send buffer: a small one lets the hub's own
    # queues fill within a test's time.
    running.server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    try:
        yield running
    finally:
        if kind == "uvicorn":
            running.server.uv.force_exit = True  # it would wait for sockets nobody reads
        await stop_hub(running)


def queued(session: Session) -> int:
    """What the hub holds for ``session``'s connection, counted from its queues and its
    transport's buffer themselves (not from the running count under test)."""
    pipe = session.transport.pipe  # type: ignore[attr-defined]
    if not isinstance(pipe, FastPipe):  # the portable path's queue: its frames' bytes
        frames = [getattr(item, "item", item) for item in pipe._queue]  # a slot's: its frame
        return sum(
            len(f.encode() if isinstance(f, str) else f)
            for f in frames
            if isinstance(f, str | bytes)  # not the end (the close frame)
        )
    conn: Any = pipe.conn
    held = conn._held or {}
    transport = conn.transport
    return (
        sum(map(len, conn._out))
        + sum(map(len, conn._tail))
        + sum(map(len, held.values()))
        + (0 if transport.is_closing() else transport.get_write_buffer_size())
    )


def only_session(hub: Hub) -> Session:
    (session,) = hub.sessions.values()
    return session


async def closed_with(ws: RawWebSocket) -> int:
    """Read (and drop) what the hub sends until its close frame; the close code."""
    async with asyncio.timeout(timeout(10)):
        while True:
            opcode, payload = await ws.read_frame()
            if opcode == CLOSE:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code


async def stomp_reader(running: RunningHub, channel: str, subscriptions: int) -> RawWebSocket:
    """A STOMP peer with ``subscriptions`` subscriptions to ``channel`` that reads no more."""
    ws = await open_raw(running.port, "/stomp", "v12.stomp")
    frames = [b"CONNECT\naccept-version:1.2\nhost:h\n\n\0"]
    destination = b"/topic/" + channel.replace(":", "\\c").encode()
    for i in range(subscriptions):
        receipt = b"receipt:last\n" if i == subscriptions - 1 else b""
        frames.append(b"SUBSCRIBE\nid:s%d\ndestination:%s\n%s\n\0" % (i, destination, receipt))
    for frame in frames:
        ws.writer.write(masked(TEXT, frame))
    async with asyncio.timeout(timeout(10)):
        while b"receipt-id:last" not in (await ws.read_frame())[1]:
            pass
    return ws


async def ws_reader(running: RunningHub, channel: str) -> RawWebSocket:
    """A ``/ws`` peer subscribed to ``channel`` that reads no more."""
    ws = await open_raw(running.port, "/ws", "clarion.v1")
    command = {"id": 1, "op": "subscribe", "channel": channel}
    ws.writer.write(masked(TEXT, json.dumps(command).encode()))
    async with asyncio.timeout(timeout(10)):
        while b'"id":1' not in (await ws.read_frame())[1]:
            pass
    return ws


async def reader(transport: str, running: RunningHub, channel: str) -> RawWebSocket:
    if transport == "stomp":
        return await stomp_reader(running, channel, 1)
    return await ws_reader(running, channel)


@dataclass
class Behind:
    """A hub and one peer of it that reads no more."""

    running: RunningHub
    ws: RawWebSocket
    session: Session
    before: int  # the hub's slow disconnects before the test pushed anything

    @property
    def hub(self) -> Hub:
        return self.running.hub

    @property
    def cut(self) -> bool:
        """Closed as slow since the test began."""
        return self.hub.stats.slow_disconnects > self.before

    async def until_cut(self) -> None:
        deadline = time.monotonic() + timeout(10)
        while not self.cut:
            assert time.monotonic() < deadline, "the reader was not closed as slow"
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def behind(
    kind: str,
    open_reader: Callable[[RunningHub], Awaitable[RawWebSocket]],
    policy: str = "disconnect",
    **settings: Any,
) -> AsyncIterator[Behind]:
    """A hub of ``kind`` and the one peer ``open_reader`` connects, which reads no more."""
    async with serve(kind, policy, **settings) as running:
        ws = await open_reader(running)
        try:
            hub = running.hub
            yield Behind(running, ws, only_session(hub), hub.stats.slow_disconnects)
        finally:
            ws.close()


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_one_publication_to_many_subscriptions_of_a_destination(kind: str) -> None:
    """64 subscriptions of one connection to one destination, one publication of 50 KB: 3 MB
    of frames, once queued at once. Past twice the budget nothing more is taken, even within
    that fan-out, and the reader is closed as slow."""
    async with behind(kind, lambda running: stomp_reader(running, "big", 64)) as peer:
        await peer.hub.publish("big", "y" * 50_000)  # the fan-out, in this iteration
        assert queued(peer.session) <= 2 * BUDGET
        await peer.until_cut()
        assert queued(peer.session) <= 2 * BUDGET
        assert await closed_with(peer.ws) == 4001


@pytest.mark.parametrize("policy", ["disconnect", "conflate"])
@pytest.mark.parametrize("kind", CLARION_KINDS)
async def test_a_burst_of_publications_to_a_slow_ws_reader(kind: str, policy: str) -> None:
    """App code publishing 100 publications of 20 KB in a row (one loop iteration): the
    server's fan-out loop (push_many) counts each frame against the budget as it appends. Past
    twice the budget the reader missed what was dropped: it is closed as slow (and resumes from
    its cursor), even in a namespace that conflates."""
    async with behind(kind, lambda running: ws_reader(running, "burst"), policy) as peer:
        for i in range(100):
            await peer.hub.publish("burst", {"n": i, "pad": "x" * 20_000})
        assert queued(peer.session) <= 2 * BUDGET
        await peer.until_cut()
        assert queued(peer.session) <= 2 * BUDGET
        assert peer.hub.stats.conflations == 0
        assert await closed_with(peer.ws) == 4001


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_text_beyond_ascii_counts_by_its_bytes(kind: str) -> None:
    """A frame costs its UTF-8 bytes, not its characters: publications of euro signs (three
    bytes each) are cut at the same budget as ASCII ones, not three times as late."""
    async with behind(kind, lambda running: ws_reader(running, "euro")) as peer:
        for i in range(100):
            await peer.hub.publish("euro", {"n": i, "pad": "€" * 7_000})
            assert queued(peer.session) <= 2 * BUDGET
        await peer.until_cut()
        assert await closed_with(peer.ws) == 4001


@pytest.mark.parametrize("transport", ["ws", "stomp"])
@pytest.mark.parametrize("kind", CLARION_KINDS)
async def test_keyed_signals_of_new_keys_count_against_the_budget(
    kind: str, transport: str
) -> None:
    """A reader behind keeps the latest signal per key in a slot: 300 signals of 20 KB, each
    of a new key, are 6 MB of slots unless they count like any queued byte."""
    async with behind(kind, lambda running: reader(transport, running, "cursors:doc")) as peer:
        peak = 0
        for i in range(300):
            if peer.cut:
                break
            await peer.hub.publish("cursors:doc", "x" * 20_000, ephemeral=True, key=f"k{i}")
            peak = max(peak, queued(peer.session))
            await asyncio.sleep(0)  # written, or held while the connection is behind
        await peer.until_cut()
        assert peak <= 2 * BUDGET
        assert await closed_with(peer.ws) == 4001


@pytest.mark.parametrize("transport", ["ws", "stomp"])
@pytest.mark.parametrize("kind", CLARION_KINDS)
async def test_replaced_signals_count_by_the_difference(kind: str, transport: str) -> None:
    """Signals that replace the one waiting in their slot count by the difference: four keys
    replaced 200 times by bigger and smaller signals stay within the budget, however many bytes
    went by; signals of new keys then count in full, and past the budget the reader is closed
    as slow."""
    budget = 4 * BUDGET

    async def open_reader(running: RunningHub) -> RawWebSocket:
        return await reader(transport, running, "cursors:doc")

    async with behind(kind, open_reader, send_queue_bytes=budget) as peer:
        hub = peer.hub
        await hub.publish("cursors:doc", "f" * 60_000)  # behind from now on
        await asyncio.sleep(0.05)
        peak = 0
        for round_ in range(200):
            size = 12_000 if round_ % 2 else 1_000
            for key in range(4):
                await hub.publish("cursors:doc", "x" * size, ephemeral=True, key=f"k{key}")
            peak = max(peak, queued(peer.session))
            await asyncio.sleep(0)
        assert not peer.cut, "replacements were counted in full"
        assert peak <= budget
        for i in range(100):
            if peer.cut:
                break
            await hub.publish("cursors:doc", "x" * 12_000, ephemeral=True, key=f"new{i}")
            peak = max(peak, queued(peer.session))
            await asyncio.sleep(0)
        await peer.until_cut()
        assert peak <= 2 * budget
        assert await closed_with(peer.ws) == 4001


@pytest.mark.parametrize("kind", CLARION_KINDS)
async def test_slow_connections_with_many_subscriptions_do_not_hold_the_loop(kind: str) -> None:
    """Once a connection is over its budget, each further push costs the same as the first:
    100 publications to four slow connections of 128 subscriptions each (51,200 pushes) take
    a fraction of a second, not seconds of a loop every other client waits on."""
    async with serve(kind) as running:
        hub = running.hub
        readers = [await stomp_reader(running, "many", 128) for _ in range(4)]
        try:
            started = time.perf_counter()
            for i in range(100):
                await hub.publish("many", i)
            took = time.perf_counter() - started
            assert took < timeout(1.5), f"100 publications took {took:.2f} s"
        finally:
            for ws in readers:
                ws.close()
