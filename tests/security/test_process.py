"""Behaviour that needs a real `clarion serve` process: SIGTERM, memory under a slow reader."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from typing import Any

import httpx
import websockets
from websockets.exceptions import ConnectionClosed

from ..conftest import clarion_server, timeout

pytestmark = clarion_server("real `clarion serve` processes")


async def test_sigterm_tells_clients_to_reconnect_and_exits_0(hub_process: Any) -> None:
    hub = await hub_process()
    clients = [await websockets.connect(hub.ws_url) for _ in range(5)]
    for ws in clients:
        await ws.send('{"id": 1, "op": "subscribe", "channel": "c"}')
        assert "ok" in json.loads(await ws.recv())
    hub.proc.send_signal(signal.SIGTERM)
    for ws in clients:
        push = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
        assert push == {"disconnect": {"code": 4000, "reason": "shutdown", "reconnect": True}}
        try:
            await asyncio.wait_for(ws.recv(), timeout(5))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4000
    assert await asyncio.wait_for(hub.proc.wait(), timeout(15)) == 0


async def test_non_loopback_bind_is_refused_without_secrets() -> None:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clarion.cli", "serve", "--host", "0.0.0.0", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout(20))
    assert proc.returncode == 2
    assert b"refusing to listen on 0.0.0.0 without api_key and token_secret" in err


async def _collect(ws: Any, count: int, into: list[int]) -> None:
    """Read publications of channel "busy" until ``count`` of them have arrived."""
    while len(into) < count:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
        if "data" in msg:
            into.append(msg["data"]["n"])


async def test_reader_that_never_reads_is_bounded_and_harmless(hub_process: Any) -> None:
    queue_cap = 256 * 1024
    # A short history: kept with their encodings, 100 of these publications (the default) are
    # about 5 MB of the hub's memory by design, which would crowd the slack allowed below.
    env = {"CLARION_LIMITS__SEND_QUEUE_BYTES": str(queue_cap)}
    env["CLARION_NAMESPACES__DEFAULT__HISTORY_SIZE"] = "10"
    hub = await hub_process(env=env)
    async with (
        httpx.AsyncClient(base_url=hub.http_url, timeout=timeout(10)) as api,
        websockets.connect(hub.ws_url) as bystander,
    ):
        # A well-behaved subscriber on the same channel: it must get every publication, in
        # order, while the offender is fed and dropped (harm is judged by what it receives,
        # not by latency, which a shared machine makes too noisy to assert on).
        await bystander.send('{"id": 1, "op": "subscribe", "channel": "busy"}')
        assert "ok" in json.loads(await bystander.recv())
        received: list[int] = []
        reader = asyncio.create_task(_collect(bystander, 400, received))
        rss_before = hub.rss_bytes()
        # The offender: subscribes, then never reads, with a tiny receive buffer.
        sock = socket.create_connection(("127.0.0.1", hub.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        payload = b'{"id": 1, "op": "subscribe", "channel": "busy"}'
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        await asyncio.sleep(0.2)
        pad = "x" * 16000
        for n in range(400):  # ~6.4 MB towards the offender
            await api.post("/api/publish", json={"channel": "busy", "data": {"pad": pad, "n": n}})
        metrics = (await api.get("/metrics")).text
        assert "clarion_slow_disconnects_total 1.0" in metrics
        growth = hub.rss_bytes() - rss_before
        assert growth < queue_cap + 8 * 1024 * 1024, growth
        await asyncio.wait_for(reader, timeout(30))
        assert received == list(range(400))
        # The hub drops the offender's connection: within its close timeout the socket ends
        # (EOF or reset), even though the reader never drained what was queued.
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout(10)
        ended = False
        while time.monotonic() < deadline and not ended:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout(1))
                ended = chunk == b""
            except TimeoutError:
                continue
            except OSError:
                ended = True
        sock.close()
        assert ended, "the slow reader's connection was not dropped"
