"""publish, history and presence: over the WebSocket and over the HTTP server API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from clarion.client import (
    Client,
    ClientClosed,
    History,
    Message,
    Published,
    RequestFailed,
    TransportName,
    api,
    connect,
)
from clarion.settings import PollOptions, Settings

from ..conftest import RunningHub, until
from ..support.proxy import FaultProxy
from .conftest import TRANSPORTS, next_message, sessions


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_publish_history_presence_round_trip(
    hub: RunningHub, transport: TransportName
) -> None:
    async with connect(hub.http_url, transport=transport) as client:
        async with client.subscribe("chat:lobby") as sub:
            published = [await client.publish("chat:lobby", {"n": n}) for n in range(3)]
            assert all(isinstance(p, Published) for p in published)
            assert [p.offset for p in published] == [1, 2, 3]
            assert [(await next_message(sub)).data for _ in range(3)] == [
                {"n": n} for n in range(3)
            ]
            (member,) = await client.presence("chat:lobby")  # a long-poll client too
            assert member.transport == transport
            if transport == "ws":
                assert member.client == client.client_id

        page = await client.history("chat:lobby", limit=2)
        assert isinstance(page, History)
        assert [m.data for m in page.publications] == [{"n": 0}, {"n": 1}]
        assert page.more is True and page.reset is None
        assert all(isinstance(m, Message) for m in page.publications)
        rest = await client.history("chat:lobby", since=page.cursor)
        assert [m.offset for m in rest.publications] == [3]
        assert rest.more is False
        assert rest.cursor == published[-1].cursor


async def test_a_polling_client_is_one_member_across_its_polls(hub: RunningHub) -> None:
    async with (
        connect(hub.http_url, transport="poll") as client,
        client.subscribe("chat:lobby") as sub,
        client.subscribe("chat:other"),
    ):
        seen = set()
        for n in range(5):  # each publication answers a poll, and the next one goes out
            await client.publish("chat:lobby", n)
            await next_message(sub)
            members = await client.presence("chat:lobby")
            assert [m.transport for m in members] == ["poll"]
            seen.add(members[0].client)
        (other,) = await client.presence("chat:other")
    assert len(seen) == 1 and other.client in seen


async def test_a_polling_client_leaves_what_it_unsubscribes_and_all_when_it_closes(
    hub_factory: Any,
) -> None:
    """It says so (``DELETE /poll``): gone from presence at once, not when the lease of its
    last poll ends (its timeout, 20 s, and ``presence_timeout``, 30 s, here)."""
    hub: RunningHub = await hub_factory(poll=PollOptions(presence_timeout=30))

    async def members(reader: Client, channel: str) -> list[str]:
        return [m.transport for m in await reader.presence(channel)]

    async with connect(hub.http_url, transport="ws") as reader:
        client = await connect(hub.http_url, transport="poll", poll_timeout=20)
        try:
            lobby = client.subscribe("chat:lobby")
            other = client.subscribe("chat:other")
            await lobby.ready()
            await other.ready()
            # Paced: presence reads spend the reader's command budget.
            await until(lambda: members(reader, "chat:other"), interval=0.2)
            await until(lambda: members(reader, "chat:lobby"), interval=0.2)
            await other.unsubscribe()
            await until(lambda: _empty(members(reader, "chat:other")), wait=8, interval=0.2)
            assert await members(reader, "chat:lobby") == ["poll"]
            # Nothing kept of a channel no poll names any more: bounded by those polled now.
            assert client._stream is not None
            assert set(client._stream.ctx.poll.asking) <= {"chat:lobby"}
        finally:
            await client.close()
        await until(lambda: _empty(members(reader, "chat:lobby")), wait=8, interval=0.2)


async def _empty(listing: Coroutine[Any, Any, list[str]]) -> bool:
    return not await listing


async def test_publish_id_is_idempotent_over_websocket(hub: RunningHub) -> None:
    async with connect(hub.http_url, transport="ws") as client:
        first = await client.publish("chat:lobby", "once", id="order-1")
        again = await client.publish("chat:lobby", "once", id="order-1")
        assert again.offset == first.offset
        page = await client.history("chat:lobby")
        assert [(m.data, m.id) for m in page.publications] == [("once", "order-1")]


async def test_request_errors_carry_the_hubs_code(hub: RunningHub) -> None:
    async with connect(hub.http_url, transport="ws") as client:
        with pytest.raises(RequestFailed) as caught:
            await client.publish("chat:lobby", "x" * 70_000)
        assert caught.value.code == "too_large"
        # Refused before sending: the hub would have closed the connection over it.
        assert (await client.publish("chat:lobby", "small")).offset == 1
        with pytest.raises(RequestFailed) as caught:
            await client.history("chat:lobby", since="not a cursor")
        assert caught.value.code == "bad_cursor"
    async with connect(hub.http_url, transport="sse") as client:
        with pytest.raises(RequestFailed) as caught:
            await client.publish("chat:lobby", "x" * 200_000)
        assert caught.value.code == "too_large" and caught.value.status == 413


async def test_api_key_publishes_over_http_without_a_websocket(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(
        api_key="backend-key", namespaces={"chat": {"anonymous": True}}
    )
    async with connect(hub.http_url, api_key="backend-key", transport="ws") as client:
        published = await client.publish("chat:lobby", "from the backend", id="b-1")
        assert published.offset == 1
        assert [m.data for m in (await client.history("chat:lobby")).publications] == [
            "from the backend"
        ]
        assert await client.presence("chat:lobby") == []
        assert sessions(hub, "ws") == []  # nothing needed a WebSocket yet
        async with client.subscribe("chat:lobby") as sub:
            assert client.transport == "ws"
            await client.publish("chat:lobby", "live")
            assert (await next_message(sub)).data == "live"
    async with connect(hub.http_url, api_key="wrong", transport="ws") as client:
        with pytest.raises(RequestFailed) as caught:
            await client.publish("chat:lobby", "nope")
        assert caught.value.status == 401 and caught.value.code == "unauthorized"


async def _not_found_server() -> asyncio.Server:
    """Another server (a host application where the hub is not mounted): a bare text 404 for
    every request."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
            b"Connection: close\r\n\r\nNot Found"
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def test_a_request_where_nothing_serves_asks_whether_the_url_is_the_hubs(
    hub_factory: Any,
) -> None:
    # A 404 for the endpoint itself, not for something the hub lacks: every request says what
    # a subscription at the same URL says, on the server API and the client API alike.
    hub: RunningHub = await hub_factory(api_key="backend-key")
    other = await _not_found_server()
    try:
        port = other.sockets[0].getsockname()[1]
        for url in (f"{hub.http_url}/wrong", f"http://127.0.0.1:{port}/rt"):
            doubt = f"is {url} the hub's URL, with the path an application mounted it at?"
            async with (
                connect(url, api_key="backend-key", transport="sse") as backend,
                connect(url, transport="sse") as client,
            ):
                calls: list[Callable[[], Coroutine[Any, Any, Any]]] = [
                    lambda: backend.publish("chat:lobby", 1),
                    lambda: backend.publish_batch([{"channel": "chat:lobby", "data": 1}]),
                    lambda: backend.history("chat:lobby", reverse=True),
                    lambda: backend.presence("chat:lobby"),
                    lambda: client.publish("chat:lobby", 1),
                    lambda: client.history("chat:lobby"),
                    lambda: client.presence_stats("chat:lobby"),
                ]
                for call in calls:
                    with pytest.raises(RequestFailed) as caught:
                        await call()
                    assert (caught.value.code, caught.value.status) == ("not_found", 404)
                    assert caught.value.message.endswith(f": {doubt}"), caught.value.message
    finally:
        other.close()
        await other.wait_closed()


async def test_publish_batch_answers_each_in_order(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(
        api_key="backend-key", namespaces={"chat": {"anonymous": True}}
    )
    async with (
        connect(hub.http_url, api_key="backend-key", transport="ws") as client,
        client.subscribe("chat:lobby") as sub,
    ):
        results = await client.publish_batch(
            [
                {"channel": "chat:lobby", "data": 1, "id": "one"},
                {"channel": "chat:no such", "data": 2},
                {"channel": "chat:lobby", "data": 3},
            ]
        )
        first, refused, last = results
        assert isinstance(first, Published) and isinstance(last, Published)
        assert (first.channel, first.offset, last.offset) == ("chat:lobby", 1, 2)
        assert last.cursor is not None and last.cursor != first.cursor
        assert isinstance(refused, RequestFailed) and refused.code == "bad_channel"
        assert [(await next_message(sub)).data for _ in range(2)] == [1, 3]
        with pytest.raises(TypeError):
            await client.publish_batch("chat:lobby")  # type: ignore[arg-type]
        # An iterator is read once, not used up by the check of its items.
        more = await client.publish_batch({"channel": "chat:lobby", "data": n} for n in (5, 6))
        assert [r.offset for r in more if isinstance(r, Published)] == [3, 4]
    async with connect(hub.http_url, api_key="wrong", transport="ws") as client:
        with pytest.raises(RequestFailed) as caught:
            await client.publish_batch([{"channel": "chat:lobby", "data": 4}])
        assert caught.value.status == 401 and caught.value.code == "unauthorized"


async def test_closed_client_refuses_requests(hub: RunningHub) -> None:
    client = connect(hub.http_url, transport="ws")
    with pytest.raises(ClientClosed):
        await client.publish("chat:lobby", "not open yet")
    async with client:
        await client.publish("chat:lobby", "open")
    with pytest.raises(ClientClosed):
        await client.publish("chat:lobby", "closed")
    with pytest.raises(ClientClosed):
        await client.open()  # a client opens once
    awaited = await connect(hub.http_url, transport="ws")
    try:
        assert (await awaited.publish("chat:lobby", "awaited")).offset == 2
    finally:
        await awaited.close()
    with pytest.raises(ClientClosed):
        client.subscribe("chat:lobby")


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_history_says_when_it_no_longer_reaches_since(
    hub_factory: Any, transport: TransportName
) -> None:
    hub: RunningHub = await hub_factory(namespaces={"default": {"history_size": 2}})
    first = await hub.publish("news", 1)
    for n in range(2, 6):
        await hub.publish("news", n)
    async with connect(hub.http_url, transport=transport) as client:
        page = await client.history("news", since=first["cursor"])
    assert [m.offset for m in page.publications] == [4, 5]
    assert page.reset is not None
    assert (page.reset.channel, page.reset.reason) == ("news", "trimmed")
    assert page.reset.position is not None and page.reset.position.offset == 3


async def test_a_channel_left_before_its_first_poll_was_answered_is_left(
    hub: RunningHub, proxy: FaultProxy
) -> None:
    """The leave waits for the poll on its way (whose answer gives the client its id, and
    which, reaching the hub after the leave, would put the client back): it does not leave the
    client there until the lease of that poll ends (``presence_timeout``, 10 s)."""
    proxy.latency = 0.3  # each way
    heard: list[str] = []
    hub.hub.lifecycle_listeners.append(lambda kind, event: heard.append(kind))
    async with connect(f"http://127.0.0.1:{proxy.port}", transport="poll") as client:
        sub = client.subscribe("chat:lobby")
        await asyncio.sleep(0.1)  # its first poll is on its way
        await sub.unsubscribe()
        await until(lambda: heard == ["join", "leave"], wait=5)  # not 10 s: its lease's end


async def test_an_idle_connection_is_let_go_before_the_hub_closes_it(
    hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle for the client's keep-alive expiry is not used again, and that expiry
    is under the hub's keep-alive timeout: a request never goes out on a connection as the hub
    closes it for idling (it would fail unanswered)."""
    assert Settings().limits.keepalive_timeout > api.KEEPALIVE_EXPIRY
    monkeypatch.setattr(api, "KEEPALIVE_EXPIRY", 0.3)
    proxy = await FaultProxy(hub.port).start()
    try:
        async with connect(f"http://127.0.0.1:{proxy.port}", transport="poll") as client:
            await client.publish("chat:idle", 1)
            await client.publish("chat:idle", 2)
            used = proxy.accepted  # the second on the first's connection
            await asyncio.sleep(0.6)  # past the expiry, well within the hub's timeout
            await client.publish("chat:idle", 3)
            assert proxy.accepted == used + 1
    finally:
        await proxy.close()
