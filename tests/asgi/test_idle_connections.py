"""Idle connections on clarion's own server hold no coroutine or task.

The server hands each inbound message to the endpoint's handler (``clarion.fast_websocket``'s
``listen``) instead of a ``receive()`` loop per connection: a task exists only while a message
is being carried out. Counted with ``asyncio.all_tasks()`` over many idle subscribed
connections, whose clients are raw sockets (asyncio streams start no task).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..conftest import RunningHub, clarion_server, until
from ..security.rawws import CLOSE, TEXT, RawWebSocket, masked, open_raw

pytestmark = clarion_server("fast_websocket's listen; elsewhere a receive() loop per connection")

CONNECTIONS = 40
SLACK = 3  # tasks the hub may start meanwhile on its own (timers, presence), never one each


async def _tasks_settle(baseline: int) -> int:
    await until(lambda: len(asyncio.all_tasks()) <= baseline + SLACK)
    return len(asyncio.all_tasks())


async def _text(ws: RawWebSocket) -> str:
    while True:
        opcode, payload = await asyncio.wait_for(ws.read_frame(), 10)
        if opcode == TEXT:
            return payload.decode()


async def _close_all(hub: RunningHub, sockets: list[RawWebSocket]) -> None:
    """Close every socket with 1000; the disconnect reaches each handler, so every session ends."""
    for ws in sockets:
        ws.writer.write(masked(CLOSE, b"\x03\xe8"))
    await until(lambda: not hub.hub.sessions)
    for ws in sockets:
        ws.close()


async def test_idle_subscribed_websockets_hold_no_task(hub: RunningHub) -> None:
    baseline = len(asyncio.all_tasks())
    sockets = [await open_raw(hub.port, "/ws", "clarion.v1") for _ in range(CONNECTIONS)]
    try:
        for ws in sockets:
            ws.writer.write(masked(TEXT, b'{"id":1,"op":"subscribe","channel":"idle"}'))
        for ws in sockets:
            assert json.loads(await _text(ws))["id"] == 1
        await until(lambda: len(hub.hub.sessions) == CONNECTIONS)
        await _tasks_settle(baseline)

        # Idle, and alive: a publication reaches every one, a command is answered.
        await hub.publish("idle", {"n": 1})
        for ws in sockets:
            assert json.loads(await _text(ws))["data"] == {"n": 1}
        sockets[0].writer.write(masked(TEXT, b'{"id":2,"op":"ping"}'))
        assert json.loads(await _text(sockets[0])) == {"id": 2, "ok": {}}
        await _tasks_settle(baseline)
    finally:
        await _close_all(hub, sockets)


async def test_idle_stomp_subscriptions_hold_no_task(hub: RunningHub) -> None:
    baseline = len(asyncio.all_tasks())
    sockets = [await open_raw(hub.port, "/stomp", "v12.stomp") for _ in range(CONNECTIONS)]
    frames: dict[RawWebSocket, Any] = {}
    try:
        for ws in sockets:
            ws.writer.write(masked(TEXT, b"CONNECT\naccept-version:1.2\nhost:h\n\n\0"))
            subscribe = b"SUBSCRIBE\nid:0\ndestination:/topic/idle\nreceipt:r\n\n\0"
            ws.writer.write(masked(TEXT, subscribe))
        for ws in sockets:
            assert (await _text(ws)).startswith("CONNECTED\n")
            assert (await _text(ws)).startswith("RECEIPT\n")
        await until(lambda: len(hub.hub.sessions) == CONNECTIONS)
        await _tasks_settle(baseline)

        await hub.publish("idle", {"n": 1})
        for ws in sockets:
            frames[ws] = await _text(ws)
        assert all(frame.startswith("MESSAGE\n") for frame in frames.values())
        await _tasks_settle(baseline)
    finally:
        await _close_all(hub, sockets)
