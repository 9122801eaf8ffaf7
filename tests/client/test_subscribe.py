"""Subscriptions over every transport against a real hub: receive, resume, reset, stop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clarion import Hub, Settings
from clarion.client import Disconnected, Message, RequestFailed, Reset, TransportName, connect
from clarion.protocol.codes import CloseCode

from ..conftest import RunningHub, start_hub, stop_hub, timeout
from .conftest import (
    TRANSPORTS,
    fixed_backoff,
    next_item,
    next_message,
    session_of,
    sessions,
)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_receives_a_publication_made_over_the_api(
    hub: RunningHub, transport: TransportName
) -> None:
    async with connect(hub.http_url, transport=transport) as client:
        assert client.transport == transport
        async with client.subscribe("chat:lobby") as sub:
            published = await hub.publish("chat:lobby", {"text": "hi"})
            message = await next_message(sub)
    assert isinstance(message, Message)
    assert (message.channel, message.data, message.offset) == ("chat:lobby", {"text": "hi"}, 1)
    assert message.epoch == published["epoch"]
    assert message.cursor == published["cursor"]
    assert sub.cursor == message.cursor


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_replays_what_was_missed(hub: RunningHub, transport: TransportName) -> None:
    first = await hub.publish("chat:lobby", "one")
    await hub.publish("chat:lobby", "two")
    await hub.publish("chat:lobby", "three")
    async with connect(hub.http_url, transport=transport) as client:
        sub = client.subscribe("chat:lobby", since=first["cursor"])
        assert [(await next_message(sub)).data for _ in range(2)] == ["two", "three"]


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_dropped_connection_resumes_with_exactly_the_missed_then_live(
    hub: RunningHub, transport: TransportName
) -> None:
    async with (
        connect(hub.http_url, transport=transport, backoff=fixed_backoff(timeout(0.3))) as client,
        client.subscribe("chat:lobby") as sub,
    ):
        await hub.publish("chat:lobby", "before")
        assert (await next_message(sub)).data == "before"
        dropped = await session_of(hub, transport, "chat:lobby")
        dropped.close(CloseCode.SHUTDOWN)
        for n in range(3):
            await hub.publish("chat:lobby", f"missed {n}")
        # Published while the client was away: nobody was subscribed on the hub.
        assert "chat:lobby" not in hub.hub.channels()
        missed = [await next_message(sub) for _ in range(3)]
        assert [m.data for m in missed] == ["missed 0", "missed 1", "missed 2"]
        assert [m.offset for m in missed] == [2, 3, 4]
        resumed = await session_of(hub, transport, "chat:lobby")
        assert resumed is not dropped
        await hub.publish("chat:lobby", "live")
        live = await next_message(sub)
        assert (live.data, live.offset) == ("live", 5)
        with pytest.raises(TimeoutError):
            await next_item(sub, wait=0.3)  # and nothing else: no duplicate


async def test_poll_between_requests_loses_nothing(hub: RunningHub) -> None:
    async with (
        connect(hub.http_url, transport="poll", backoff=fixed_backoff(timeout(0.3))) as client,
        client.subscribe("chat:lobby") as sub,
    ):
        waiting = await session_of(hub, "poll", "chat:lobby")
        waiting.close(CloseCode.SHUTDOWN)
        for n in range(3):
            await hub.publish("chat:lobby", n)
        assert [(await next_message(sub)).data for _ in range(3)] == [0, 1, 2]
        await hub.publish("chat:lobby", "live")
        assert (await next_message(sub)).data == "live"
        with pytest.raises(TimeoutError):
            await next_item(sub, wait=0.3)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gap_bigger_than_history_yields_a_reset_then_live(
    hub_factory: Any, transport: TransportName
) -> None:
    hub: RunningHub = await hub_factory(namespaces={"default": {"history_size": 2}})

    async def publish_five() -> None:
        for n in range(2, 7):
            await hub.publish("news", n)

    async with (
        connect(
            hub.http_url, transport=transport, backoff=fixed_backoff(timeout(0.3)), queue_size=1
        ) as client,
        client.subscribe("news") as sub,
    ):
        await hub.publish("news", 1)
        if transport == "poll":
            # Polling has no connection to drop: a reader that stops reading holds the
            # next poll back (its buffer holds one item) while history moves on.
            await asyncio.sleep(0.2)
            await publish_five()
            assert "news" not in hub.hub.channels()
            assert (await next_message(sub)).offset == 1
        else:
            assert (await next_message(sub)).offset == 1
            dropped = await session_of(hub, transport, "news")
            dropped.close(CloseCode.SHUTDOWN)
            await publish_five()
        reset = await next_item(sub)
        assert isinstance(reset, Reset), reset
        assert (reset.channel, reset.reason) == ("news", "trimmed")
        assert reset.position is not None
        await hub.publish("news", "live")
        after: list[Message] = []
        while not after or after[-1].data != "live":
            after.append(await next_message(sub))
        # What follows the reset continues exactly from the reset's cursor, up to live.
        offsets = [m.offset for m in after]
        assert offsets == list(range(reset.position.offset + 1, 8))
        assert sub.cursor == after[-1].cursor


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_do_not_reconnect_code_ends_iteration_with_the_error(
    hub: RunningHub, transport: TransportName
) -> None:
    async with connect(hub.http_url, transport=transport, backoff=fixed_backoff(0.02)) as client:
        sub = client.subscribe("chat:lobby")
        await sub.ready()
        await hub.publish("chat:lobby", "kept")
        assert (await next_message(sub)).data == "kept"
        session = await session_of(hub, transport, "chat:lobby")
        session.close(CloseCode.DISCONNECTED)
        with pytest.raises(Disconnected) as caught:
            await next_item(sub)
        assert caught.value.close_code == CloseCode.DISCONNECTED
        assert caught.value.reason == "disconnected"
        assert client.closed
        with pytest.raises(Disconnected):
            await client.publish("chat:lobby", "after")
        with pytest.raises(Disconnected):
            client.subscribe("chat:other")
        # A reconnect would have come after 20 ms: none did.
        await asyncio.sleep(timeout(0.5))
        assert sessions(hub, transport) == []


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_hub_restart_is_survived_with_an_epoch_reset(
    hub: RunningHub, transport: TransportName
) -> None:
    async with (
        connect(hub.http_url, transport=transport, backoff=fixed_backoff(timeout(0.1))) as client,
        client.subscribe("chat:lobby") as sub,
    ):
        await hub.publish("chat:lobby", "before")
        before = await next_message(sub)
        await hub.hub.close()  # tells every client "shutdown: reconnect" (4000)
        await stop_hub(hub)
        await asyncio.sleep(timeout(0.3))  # reconnect attempts meet a closed port meanwhile
        # A new hub on the same port: the memory engine's history (and epoch) are gone.
        again = await start_hub(hub=Hub(Settings()), port=hub.port)
        try:
            reset = await next_item(sub)
            assert isinstance(reset, Reset) and reset.reason == "epoch"
            assert reset.position is not None and reset.position.epoch != before.epoch
            await again.publish("chat:lobby", "after the restart")
            after = await next_message(sub)
            assert (after.data, after.offset) == ("after the restart", 1)
            assert after.epoch == reset.position.epoch
        finally:
            await stop_hub(again)


async def test_poll_adapts_to_a_hub_with_a_shorter_poll_limit(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(poll={"timeout_max": 12})
    async with (
        connect(hub.http_url, transport="poll", poll_timeout=25) as client,
        client.subscribe("chat:lobby") as sub,
    ):
        await session_of(hub, "poll", "chat:lobby")  # a long poll is waiting despite the limit
        await hub.publish("chat:lobby", "through")
        assert (await next_message(sub)).data == "through"


async def test_a_rate_limited_subscribe_is_sent_again(hub_factory: Any) -> None:
    """Refused with ``rate_limited`` (the connection's command budget is spent), the feed asks
    again after about a second instead of ending."""
    limits = {"max_subscriptions_per_connection": 2, "client_command_burst": 1}
    # A token every 2 s: the subscribe right after the budget ran out is refused however slow
    # the machine, and the retry a second or two later goes through.
    running: RunningHub = await hub_factory(limits={**limits, "client_command_rate": 0.5})
    assert running.hub.settings.limits.command_burst == 24
    async with connect(running.http_url, transport="ws") as client:
        while True:  # history reads take the whole budget, until one is refused
            try:
                await client.history("chat:lobby")
            except RequestFailed as exc:
                assert exc.code == "rate_limited"
                break
        async with client.subscribe("chat:lobby") as sub:
            await session_of(running, "ws", "chat:lobby")
            assert running.hub.stats.errors["rate_limited"] >= 2  # a read, then the subscribe
            await running.publish("chat:lobby", "hi")
            assert (await next_message(sub)).data == "hi"
