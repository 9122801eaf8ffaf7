"""Peers that make the hub write while they never read: every queued byte counts.

Pongs, STOMP receipts and heart-beats, error replies and close frames all go through the
connection's send budget (``limits.send_queue_bytes``); a peer that keeps the hub writing and
does not read is closed as a slow consumer (4001), its buffers are dropped, and other clients'
deliveries go on meanwhile. Both write paths: clarion's own server and a portable ASGI server
(uvicorn), where pings are the host server's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from clarion import Hub, Settings

from ..conftest import (
    RunningHub,
    clarion_server,
    start_clarion_hub,
    start_portable_hub,
    stop_hub,
    timeout,
)
from .rawws import PING, TEXT, masked, raw_ws
from .servers import SERVERS

BUDGET = 64 * 1024
# UNSUBSCRIBE and failing ops spend the command budget, which closes a flood of them (4505,
# tests/security/test_command_floods.py) before its replies fill the send budget: lifted
# here, to see what the send budget does on its own.
UNMETERED = {
    "send_queue_bytes": BUDGET,
    "client_command_rate": 1e9,
    "client_command_burst": 10**9,
}
STOMP_CONNECT = b"CONNECT\naccept-version:1.2\nhost:h\n\n\0"


def small_send_buffers(listener: Any) -> None:
    # Accepted sockets inherit the listener's send buffer: a small one (instead of the
    # kernel's megabytes) lets the hub's own buffers fill within a test's time.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)


@contextlib.asynccontextmanager
async def serve(kind: str, **settings: Any) -> AsyncIterator[RunningHub]:
    """A hub with ``settings`` on clarion's server or under uvicorn."""
    hub = Hub(Settings(**settings))
    if kind == "clarion":
        running = await start_clarion_hub(hub=hub)
    else:
        running = await start_portable_hub(hub=hub, mount=False)
    small_send_buffers(running.server.sockets[0])
    try:
        yield running
    finally:
        if kind != "clarion":
            # A socket whose peer never reads cannot be flushed: uvicorn would wait for it.
            running.server.uv.force_exit = True
        await stop_hub(running)


@contextlib.asynccontextmanager
async def watcher(running: RunningHub) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A well-behaved subscriber; ``await check()`` publishes and waits for its delivery."""
    async with running.ws() as ws:
        await ws.subscribe("news")
        count = 0

        async def check() -> None:
            nonlocal count
            count += 1
            await running.publish("news", {"n": count})
            while (await ws.recv()).get("data") != {"n": count}:
                pass

        yield check


async def flood_while_others_are_served(
    running: RunningHub, path: str, subprotocol: str, first: bytes, chunk: bytes
) -> None:
    """Flood ``chunk`` without reading until the hub closes the session as slow (4001)."""
    hub = running.hub
    before = hub.stats.slow_disconnects
    async with watcher(running) as check, raw_ws(running.port, path, subprotocol) as ws:
        if first:
            ws.writer.write(first)
        flooding = asyncio.create_task(
            ws.flood(chunk, lambda: hub.stats.slow_disconnects > before, timeout(30))
        )
        while not flooding.done():
            await check()  # other clients' deliveries go on during the flood
            await asyncio.sleep(0.05)
        assert await flooding, "the flooding peer was not closed as a slow consumer"
        assert len(hub.sessions) == 1  # only the watcher's
        await check()
        if running.server.__class__.__module__.startswith("clarion"):
            # The session is over, its socket not yet (the peer has close_timeout to finish
            # the close handshake): meanwhile it counts as a socket without a session.
            assert hub.pending.by_key == {"127.0.0.1": 1}
            # Its buffers are dropped and the socket ends (close frame, then a reset).
            assert await ws.ended(), "the flooding peer's socket was not closed"
        # Under uvicorn the socket is the host server's: it may stay until uvicorn's own
        # keepalive gives up on it. Once the socket is gone, nothing of it is counted.
    deadline = time.monotonic() + timeout(10)
    while hub.pending.total:
        assert time.monotonic() < deadline, hub.pending.by_key
        await asyncio.sleep(0.02)
    assert hub.stats.slow_disconnects == before + 1


@clarion_server("pongs are the host server's own on the portable path")
@pytest.mark.parametrize("payload", [b"", b"p" * 125], ids=["empty", "max-payload"])
@pytest.mark.parametrize("path", ["/ws", "/stomp"])
async def test_ping_flood_is_closed_as_slow(payload: bytes, path: str) -> None:
    async with serve("clarion", limits={"send_queue_bytes": BUDGET}) as running:
        subprotocol = "clarion.v1" if path == "/ws" else "v12.stomp"
        first = masked(TEXT, STOMP_CONNECT) if path == "/stomp" else b""
        chunk = masked(PING, payload) * (32768 // (len(payload) + 6))
        await flood_while_others_are_served(running, path, subprotocol, first, chunk)


@pytest.mark.parametrize("kind", SERVERS)
async def test_stomp_receipts_never_read(kind: str) -> None:
    async with serve(kind, limits=UNMETERED) as running:
        receipt = b"r" * 200
        frame = b"UNSUBSCRIBE\nid:nope\nreceipt:" + receipt + b"\n\n\0"
        chunk = masked(TEXT, frame * 16) * 20  # a WebSocket message holds at most 16 frames
        first = masked(TEXT, STOMP_CONNECT)
        await flood_while_others_are_served(running, "/stomp", "v12.stomp", first, chunk)


@pytest.mark.parametrize("kind", SERVERS)
async def test_failing_ops_never_read(kind: str) -> None:
    async with serve(kind, limits=UNMETERED) as running:
        # Each op fails (not subscribed) without counting as a malformed frame: only the
        # error replies pile up.
        op = b'{"id": 1, "op": "unsubscribe", "channel": "%s"}' % (b"n" * 200)
        chunk = masked(TEXT, op) * 64
        await flood_while_others_are_served(running, "/ws", "clarion.v1", b"", chunk)


@clarion_server("the RSS of a `clarion serve` process under a ping flood")
async def test_ping_flood_keeps_hub_memory_bounded(hub_process: Any) -> None:
    """The attack on a real process: two clients send pings and never read."""
    hub = await hub_process()
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=timeout(10)) as api:
        assert (await api.get("/healthz")).status_code == 200
        rss_before = hub.rss_bytes()
        peak = rss_before
        chunk = masked(PING, b"p" * 125) * 256
        async with (
            raw_ws(hub.port, "/ws", "clarion.v1") as one,
            raw_ws(hub.port, "/ws", "clarion.v1") as two,
        ):

            def watch() -> bool:
                nonlocal peak
                peak = max(peak, hub.rss_bytes())
                return False

            await asyncio.gather(
                one.flood(chunk, watch, timeout(4)), two.flood(chunk, watch, timeout(4))
            )
            # Both are closed (default budget: 1 MiB each), and the hub still answers.
            assert await one.ended() and await two.ended()
            assert (await api.get("/healthz")).status_code == 200
        metrics = (await api.get("/metrics")).text
    assert "clarion_slow_disconnects_total 2.0" in metrics
    assert peak - rss_before < 48 * 1024 * 1024, peak - rss_before
