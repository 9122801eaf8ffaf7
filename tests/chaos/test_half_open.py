"""Clients whose connections went half-open (the peer silent, no FIN, no RST): the hub's pings
find them out, ends their sessions, and what they held returns to the baseline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from ..conftest import RunningHub, clarion_server, timeout
from ..multinode.helpers import eventually
from ..support.proxy import FaultProxy

pytestmark = [
    pytest.mark.timeout(int(timeout(60))),
    clarion_server("the hub's WebSocket pings: another ASGI server pings on its own settings"),
]

CLIENTS = 20


async def test_half_open_clients_are_ended_by_the_hubs_pings(
    hub_factory: Callable[..., Any],
) -> None:
    # Short, but not so short that a loaded machine's pause ends the live client too.
    hub: RunningHub = await hub_factory(limits={"ping_interval": 1, "pong_timeout": 2})
    baseline = len(hub.hub.sessions)
    proxy = await FaultProxy(hub.port).start()
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    direct = await websockets.connect(hub.ws_url, subprotocols=["clarion.v1"])
    clients = []
    try:
        for i in range(CLIENTS):
            ws = await websockets.connect(url, subprotocols=["clarion.v1"], ping_interval=None)
            await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": f"h:{i % 4}"}))
            assert "ok" in json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
            clients.append(ws)
        await direct.send(json.dumps({"id": 1, "op": "subscribe", "channel": "h:0"}))
        assert "ok" in json.loads(await asyncio.wait_for(direct.recv(), timeout(5)))
        assert len(hub.hub.sessions) == baseline + CLIENTS + 1

        proxy.stall()  # every proxied client goes silent: no pong, no FIN
        await eventually(lambda: len(hub.hub.sessions) == baseline + 1, timeout=timeout(20))
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=timeout(5)) as api:
            presence = (await api.get("/api/presence", params={"channel": "h:1"})).json()
            assert presence["clients"] == []
            channels = (await api.get("/api/channels")).json()
            assert json.dumps(channels).count('"h:') == 1  # only the direct client's channel
            # The live client did not notice: it still gets what is published.
            r = await api.post("/api/publish", json={"channel": "h:0", "data": "still here"})
            assert r.status_code == 200
        assert json.loads(await asyncio.wait_for(direct.recv(), timeout(5)))["data"] == "still here"
    finally:
        proxy.resume()
        await proxy.close()
        await direct.close()
        for ws in clients:
            ws.transport.abort()


async def test_a_hub_that_could_not_run_for_a_while_ends_no_live_session(
    hub_process: Callable[..., Any],
) -> None:
    """The hub's process stopped (a paused VM, a machine out of CPU) for longer than a ping's
    interval and timeout together. Its clients were silent because it sent them no ping, and
    a live one's pong to its last ping waits unread: neither makes a session dead. Before, the
    first sweep after the stall ended every session with 4002, a reconnect storm of the whole
    node."""
    hub = await hub_process(
        env={"CLARION_LIMITS__PING_INTERVAL": "1", "CLARION_LIMITS__PONG_TIMEOUT": "1"}
    )
    clients = []
    for n in range(5):
        ws = await websockets.connect(hub.ws_url, subprotocols=["clarion.v1"], ping_interval=None)
        await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": "h:stall"}))
        assert "ok" in json.loads(await asyncio.wait_for(ws.recv(), timeout(5))), n
        clients.append(ws)
    try:
        await asyncio.sleep(1.5)  # pinged at least once, answered
        os.kill(hub.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(3)
        finally:
            os.kill(hub.proc.pid, signal.SIGCONT)
        await asyncio.sleep(2)  # the sweeps after it: pings again, answered
        async with httpx.AsyncClient() as api:
            r = await api.post(
                f"{hub.http_url}/api/publish", json={"channel": "h:stall", "data": "after"}
            )
            assert r.status_code == 200, r.text
        for n, ws in enumerate(clients):
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
            assert msg.get("data") == "after", (n, msg)
    finally:
        for ws in clients:
            await ws.close()
