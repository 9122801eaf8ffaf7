"""A stream or poll refused with ``429 rate_limited`` waits its ``Retry-After`` and opens again.

The hub refuses an ``/sse`` stream whose channels its user (its address) may not start now
(``limits.client_subscribe_rate``), with ``Retry-After``; a proxy in front may refuse a poll the
same way. The client used to take the refusal for the end (``Disconnected``, 4505); it now
waits at least the time named, jittered, and goes on, as a ``subscribe`` refused over WebSocket
does. What is counted is the refusals, not the seconds: a client that did not wait would be
refused at every try of its short backoff.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import httpx
import pytest

from clarion.asgi.responses import send_error
from clarion.client import connect
from clarion.errors import LimitExceeded
from clarion.protocol.errors import ErrorCode

from ..conftest import RunningHub
from .conftest import fixed_backoff, next_message, serve_front, session_of

pytestmark = pytest.mark.timeout(60)

LIMITS = {
    "max_subscriptions_per_connection": 2,
    "client_subscribe_burst": 2,
    # A subscription every 2 s: a stream asked again at once is refused however slow the
    # machine; one asked after its Retry-After is not.
    "client_subscribe_rate": 0.5,
}


async def test_an_sse_stream_refused_for_its_user_s_subscriptions_opens_after_retry_after(
    hub_factory: Callable[..., Any],
) -> None:
    running: RunningHub = await hub_factory(limits=LIMITS)
    # Another tab from the same address takes the allowance.
    async with (
        running.http() as http,
        http.stream("GET", "/sse", params={"channel": ["a", "b"]}) as other,
    ):
        assert other.status_code == 200
        client = connect(running.http_url, transport="sse", backoff=fixed_backoff(0.05))
        async with client, client.subscribe("chat:lobby") as sub:
            await session_of(running, "sse", "chat:lobby", wait=15)
            await running.publish("chat:lobby", "through")
            assert (await next_message(sub)).data == "through"
    # Each try after the wait named finds the subscription there: one refusal, or two where
    # the machine took a moment more; not one per 50 ms backoff.
    assert 1 <= running.hub.stats.errors["rate_limited"] <= 2


async def test_a_subscribe_refused_for_its_user_waits_the_retry_after_named(
    hub_factory: Callable[..., Any],
) -> None:
    running: RunningHub = await hub_factory(limits=LIMITS)
    async with running.ws() as other:
        for channel in ("a", "b"):
            assert "ok" in await other.subscribe(channel)
        async with (
            connect(running.http_url, transport="ws") as client,
            client.subscribe("chat:lobby") as sub,
        ):
            await session_of(running, "ws", "chat:lobby", wait=15)
            await running.publish("chat:lobby", "through")
            assert (await next_message(sub)).data == "through"
    # Asked again once its retry_after has passed, when the allowance holds it: its fallback
    # of about a second would be refused first (the reply's retry_after was once dropped).
    assert running.hub.stats.errors["rate_limited"] == 1


@pytest.fixture
async def limiting_front(hub: RunningHub) -> Any:
    """A server in front of ``hub`` (as a rate-limiting proxy would be) that refuses the first
    two polls with the hub's own ``429 rate_limited`` and ``Retry-After: 1``."""
    app = hub.hub.asgi_app()
    refused: list[str] = []

    async def front(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/poll" and len(refused) < 2:
            refused.append(scope["query_string"].decode())
            exc = LimitExceeded("slow down", code=ErrorCode.RATE_LIMITED, retry_after=1)
            await send_error(send, exc)
            return
        await app(scope, receive, send)

    server = await serve_front(front)
    try:
        yield f"http://127.0.0.1:{server.port}", refused
    finally:
        await server.shutdown(timeout=1.0)


async def test_a_poll_refused_with_429_rate_limited_polls_again_after_retry_after(
    hub: RunningHub, limiting_front: tuple[str, list[str]]
) -> None:
    url, refused = limiting_front
    # A backoff far shorter than the Retry-After: the refusals would come at its pace.
    client = connect(url, transport="poll", backoff=fixed_backoff(0.01))
    async with client, client.subscribe("chat:lobby") as sub:
        await session_of(hub, "poll", "chat:lobby", wait=15)
        await hub.publish("chat:lobby", "through")
        assert (await next_message(sub, wait=15)).data == "through"
    assert len(refused) == 2
    async with httpx.AsyncClient() as http:  # the front answers as the hub does past them
        assert (await http.get(f"{url}/poll", params={"channel": "x", "timeout": 0})).is_success
