"""The WebSocket transport: one connection for every subscription and request, its buffers,
its identity, and how it starts and stops."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from clarion.client import (
    ConnectFailed,
    Disconnected,
    Message,
    RequestFailed,
    connect,
)
from clarion.core.auth import mint_token
from clarion.errors import BadChannel, BadCursor
from clarion.protocol.codes import CloseCode

from ..conftest import RunningHub, timeout
from .conftest import fixed_backoff, next_item, next_message, session_of, sessions

SECRET = "a-test-secret-of-at-least-32-bytes!"


async def test_many_subscriptions_and_requests_share_one_connection(hub: RunningHub) -> None:
    channels = ["chat:a", "chat:b", "chat:c"]
    async with connect(hub.http_url, transport="ws") as client:
        subs = [client.subscribe(ch) for ch in channels]
        await asyncio.gather(*(sub.ready() for sub in subs))
        # Concurrent requests: each reply finds its caller by id.
        results = await asyncio.gather(
            *(client.publish(ch, f"{ch}/{n}") for n in range(5) for ch in channels)
        )
        assert {(r.channel, r.offset) for r in results} == {
            (ch, n) for ch in channels for n in range(1, 6)
        }
        for ch, sub in zip(channels, subs, strict=True):
            received = [await next_message(sub) for _ in range(5)]
            assert {m.channel for m in received} == {ch}
            assert [m.offset for m in received] == [1, 2, 3, 4, 5]
        assert len(sessions(hub, "ws")) == 1


async def test_a_reader_that_falls_behind_loses_nothing(
    hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clarion.client")
    async with (
        connect(hub.http_url, transport="ws", queue_size=4) as client,
        client.subscribe("chat:lobby") as sub,
    ):
        for n in range(20):
            await hub.hub.publish("chat:lobby", n)
        await asyncio.sleep(timeout(0.3))  # all 20 reached the client; 4 fit its buffer
        assert "buffer full" in caplog.text
        received = [await next_message(sub) for _ in range(20)]
        assert [m.data for m in received] == list(range(20))
        assert [m.offset for m in received] == list(range(1, 21))
        await hub.publish("chat:lobby", "live")
        assert (await next_message(sub)).data == "live"
        with pytest.raises(TimeoutError):
            await next_item(sub, wait=0.3)


async def _until(condition: Any, wait: float = 5) -> None:
    async with asyncio.timeout(timeout(wait)):
        while not condition():
            await asyncio.sleep(0.01)


async def test_unsubscribe_and_subscribe_again(hub: RunningHub) -> None:
    async with connect(hub.http_url, transport="ws") as client:
        async with client.subscribe("chat:lobby") as sub:
            with pytest.raises(RequestFailed) as caught:
                client.subscribe("chat:lobby")
            assert caught.value.code == "already_subscribed"
        with pytest.raises(StopAsyncIteration):
            await next_item(sub)
        await _until(lambda: "chat:lobby" not in hub.hub.channels())
        async with client.subscribe("chat:lobby") as again:
            await hub.publish("chat:lobby", "hello")
            assert (await next_message(again)).data == "hello"


async def test_leaving_async_for_releases_the_subscription(hub: RunningHub) -> None:
    async def first(client: Any) -> Any:
        async for item in client.subscribe("chat:lobby"):
            return item  # no unsubscribe: dropping the iterator must release it
        return None  # pragma: no cover

    async with connect(hub.http_url, transport="ws") as client:
        for n in range(2):  # the second round subscribes the same channel again
            reader = asyncio.create_task(first(client))
            await _until(lambda: "chat:lobby" in hub.hub.channels())
            await hub.publish("chat:lobby", n)
            item = await asyncio.wait_for(reader, timeout(5))
            assert isinstance(item, Message) and item.data == n
            del reader, item
            await _until(lambda: "chat:lobby" not in hub.hub.channels())


async def test_wrong_arguments_are_refused_at_once(hub: RunningHub) -> None:
    other = await hub.publish("chat:other", "x")
    async with connect(hub.http_url, transport="ws") as client:
        with pytest.raises(BadChannel):
            client.subscribe("no spaces allowed")
        with pytest.raises(BadCursor):
            client.subscribe("chat:lobby", since="garbage")
        with pytest.raises(BadCursor):
            client.subscribe("chat:lobby", since=other["cursor"])  # another channel's cursor


async def test_token_is_sent_and_a_refused_token_stops_the_client(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="k")
    with pytest.raises(Disconnected) as caught:
        async with connect(hub.http_url, transport="ws", token="not-a-jwt"):
            pass  # pragma: no cover
    assert caught.value.close_code == CloseCode.UNAUTHORIZED
    assert "invalid token" in caught.value.reason
    assert sessions(hub, "ws") == []

    asked: list[int] = []

    async def fresh_token() -> str:
        asked.append(1)
        return mint_token(SECRET, "ada", ["chat:*"])

    async with connect(
        hub.http_url, transport="ws", token=fresh_token, backoff=fixed_backoff(0.05)
    ) as client:
        async with client.subscribe("chat:lobby") as sub:
            (member,) = await client.presence("chat:lobby")
            assert member.user == "ada"
            (await session_of(hub, "ws", "chat:lobby")).close(CloseCode.NO_PONG)
            await hub.publish("chat:lobby", "after reconnect")
            assert (await next_message(sub)).data == "after reconnect"
        assert len(asked) == 2  # asked again for the reconnect
        forbidden = client.subscribe("news:today")  # the token allows chat:* only
        with pytest.raises(RequestFailed) as refused:
            await next_item(forbidden)
        assert refused.value.code == "forbidden"
        assert not client.closed


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_token_callable_that_never_answers_is_asked_again(
    hub_factory: Any, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An async token callable that hangs (a backend that never answers) fails its try after
    ``request_timeout``, and the next try asks again: the client is not stuck on it."""
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="k")
    asked: list[int] = []

    async def hanging_once() -> str:
        asked.append(1)
        if len(asked) == 1:
            await asyncio.Event().wait()
        return mint_token(SECRET, "ada", ["chat:*"])

    caplog.set_level(logging.INFO, logger="clarion.client")
    client = connect(
        hub.http_url,
        transport=transport,  # type: ignore[arg-type]
        token=hanging_once,
        backoff=fixed_backoff(0.05),
        request_timeout=0.5,
        open_timeout=timeout(10),
    )
    async with client, client.subscribe("chat:lobby") as sub:
        await hub.publish("chat:lobby", "in")
        assert (await next_message(sub)).data == "in"
    assert len(asked) >= 2
    assert "no token within 0.5 s" in caplog.text


async def test_unreachable_hub_fails_within_open_timeout() -> None:
    # Held bound, never listening, for the whole test: every attempt is refused, and no other
    # test's server can take the port meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectFailed) as caught:
            async with connect(
                f"http://127.0.0.1:{port}",
                transport="ws",
                open_timeout=0.5,
                backoff=fixed_backoff(0.05),
            ):
                pass  # pragma: no cover
    assert asyncio.get_running_loop().time() - started < timeout(3)
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_refused_upgrade_is_a_connect_failure_without_fallback(front: Any) -> None:
    url = await front(refuse_ws=True)
    with pytest.raises(ConnectFailed) as caught:
        async with connect(url, transport="ws"):
            pass  # pragma: no cover
    assert "HTTP 403" in str(caught.value)


async def test_idle_close_leaves_the_client_usable(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(limits={"idle_timeout": 0.2})
    async with connect(hub.http_url, transport="ws", backoff=fixed_backoff(0.02)) as client:
        first = client.client_id
        assert first is not None
        # The hub closes a connection without subscriptions (4504, "do not reconnect")...
        await _until(lambda: sessions(hub, "ws") == [])
        await asyncio.sleep(timeout(0.2))
        assert sessions(hub, "ws") == [] and not client.closed
        # ...and the client opens a new one when it needs it.
        async with client.subscribe("chat:lobby") as sub:
            await hub.publish("chat:lobby", "back")
            assert (await next_message(sub)).data == "back"
        assert client.client_id not in (None, first)
