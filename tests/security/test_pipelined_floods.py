"""Pipelined request floods: what one read of tiny requests makes the hub hold.

A client that writes a socket read's worth of ``GET / HTTP/1.1\\r\\n\\r\\n`` (14,560 of them in
256 KiB) and never reads its answers once had every one of them parsed at once, each a scope
and a cycle queued on its connection: a hundred such connections took a hub from 60 MB to 1 GB
and held other clients up for seconds. The server now parses at most ``MAX_QUEUED`` requests
behind the one in flight; the rest of what it read waits unparsed until those are answered.

Measured by counting the cycles alive in the hub (it runs in the test's process) while the
flood is under way, and by a bystander's requests answered meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from typing import Any

from clarion.server.cycle import HttpCycle
from clarion.server.http import MAX_QUEUED

from ..conftest import RunningHub, clarion_server, timeout
from .test_stalled_requests import HEALTHZ, read_response

pytestmark = clarion_server("the request queue of clarion's own server")

FLOODERS = 6
TINY = b"GET / HTTP/1.1\r\n\r\n"
READ = 256 * 1024  # what one socket read of the event loops holds at most


def cycles() -> int:
    return sum(isinstance(o, HttpCycle) for o in gc.get_objects())


async def test_a_flood_of_pipelined_requests_is_parsed_a_bounded_queue_at_a_time(
    hub_factory: Any,
) -> None:
    hub: RunningHub = await hub_factory()
    loop = asyncio.get_running_loop()
    flood = TINY * (READ // len(TINY))
    flooders: list[socket.socket] = []
    writes: list[asyncio.Task[None]] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        writer.write(HEALTHZ)  # the bystander's connection is open and served before the flood
        assert b" 200 " in await read_response(reader)
        gc.collect()
        before = cycles()
        for _ in range(FLOODERS):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", hub.port))
            flooders.append(sock)
            writes.append(asyncio.create_task(loop.sock_sendall(sock, flood)))
        most = 0
        slowest = 0.0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            most = max(most, cycles() - before)
            queued = [conn.queued for conn in hub.server.registry.connections]
            assert max(queued) <= MAX_QUEUED, max(queued)
            started = time.monotonic()
            writer.write(HEALTHZ)
            assert b" 200 " in await read_response(reader)
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.02)
        # Each flooder: its queue, the request in flight, and one whose app has not returned.
        assert most <= FLOODERS * (MAX_QUEUED + 2), most
        assert slowest < timeout(0.5), slowest
    finally:
        for task in writes:
            task.cancel()
        for sock in flooders:
            sock.close()
        writer.close()
