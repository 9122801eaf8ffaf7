"""Helpers for the client tests: deterministic backoff, server-side sessions, a picky front."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from clarion.client import Backoff, Message, Reset, Subscription
from clarion.core.session import Session
from clarion.server import Server

from ..conftest import TEST_SERVER, PortableServer, RunningHub, start_uvicorn, timeout
from ..support.proxy import FaultProxy

TRANSPORTS = ["ws", "sse", "poll"]


def fixed_backoff(delay: float) -> Backoff:
    """Every reconnect waits exactly ``delay``: the top of the jitter window, every time."""
    return Backoff(base=delay, cap=delay, rng=lambda: 1.0)


async def next_item(sub: Subscription, wait: float = 5) -> Message | Reset:
    return await asyncio.wait_for(anext(sub), timeout(wait))


async def next_message(sub: Subscription, wait: float = 5) -> Message:
    item = await next_item(sub, wait)
    assert isinstance(item, Message), item
    return item


def sessions(running: RunningHub, kind: str, channel: str | None = None) -> list[Session]:
    return [
        s
        for s in running.hub.sessions.values()
        if s.transport.kind == kind and (channel is None or channel in s.subscriptions)
    ]


async def session_of(running: RunningHub, kind: str, channel: str, wait: float = 5) -> Session:
    """The hub's session of ``kind`` subscribed to ``channel`` (a poll: the one waiting now)."""
    async with asyncio.timeout(timeout(wait)):
        while True:
            found = sessions(running, kind, channel)
            if found:
                return found[0]
            await asyncio.sleep(0.01)


@pytest.fixture
async def proxy(hub: RunningHub) -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of ``hub`` (``http://127.0.0.1:{proxy.port}``)."""
    running = await FaultProxy(hub.port).start()
    try:
        yield running
    finally:
        await running.close()


FrontFactory = Callable[..., Awaitable[str]]


async def serve_front(app: Any) -> Server | PortableServer:
    """``app`` served on a port of its own, on the suite's server path: a server in front of a
    hub (as a proxy would be)."""
    if TEST_SERVER == "asgi":
        return await start_uvicorn(app)
    server = Server(app, host="127.0.0.1", port=0)
    await server.start()
    return server


@pytest.fixture
async def front(hub: RunningHub) -> AsyncIterator[FrontFactory]:
    """``await front(refuse_ws=True, missing=("/sse",))`` → the base URL of a second server (on
    the suite's server path) for the same hub that refuses WebSocket upgrades and answers 404
    on ``missing`` paths, as a proxy without WebSocket (or SSE) support would."""
    servers: list[Server | PortableServer] = []
    app = hub.hub.asgi_app()

    async def start(*, refuse_ws: bool = True, missing: tuple[str, ...] = ()) -> str:
        async def picky(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "websocket" and refuse_ws:
                await receive()
                await send({"type": "websocket.close", "code": 1008})
                return
            if scope["type"] == "http" and scope["path"] in missing:
                body = b'{"error":{"code":"not_found","message":"no such endpoint"}}'
                headers = [(b"content-type", b"application/json")]
                await send({"type": "http.response.start", "status": 404, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await app(scope, receive, send)

        server = await serve_front(picky)
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await asyncio.wait_for(server.shutdown(timeout=1.0), timeout(5))
