"""Over SSE and polling, every subscription of a client shares one stream: as many as the hub
allows on one connection, whatever its per-address or per-user connection caps; subscriptions
come and go, are refused, or fall behind, without a gap or a duplicate on the others."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import jwt
import pytest

from clarion.client import Message, RequestFailed, TransportName, connect
from clarion.protocol.errors import ErrorCode

from ..conftest import RunningHub, timeout
from ..support.proxy import FaultProxy
from .conftest import fixed_backoff, next_item, next_message, sessions

OFF_WEBSOCKET: list[TransportName] = ["sse", "poll"]
SECRET = "a-test-secret-of-at-least-32-bytes!"


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_more_subscriptions_than_the_address_may_hold_connections(
    hub_factory: Any, transport: TransportName
) -> None:
    hub: RunningHub = await hub_factory(limits={"max_connections_per_ip": 2})
    channels = [f"chat:room{n}" for n in range(6)]
    async with connect(hub.http_url, transport=transport) as client:
        subs = [client.subscribe(channel) for channel in channels]
        async with asyncio.timeout(timeout(10)):
            await asyncio.gather(*(sub.ready() for sub in subs))
        for n, channel in enumerate(channels):
            await hub.publish(channel, n)
        for n, sub in enumerate(subs):
            message = await next_message(sub)
            assert (message.channel, message.data, message.offset) == (channels[n], n, 1)
        if transport == "sse":
            assert len(sessions(hub, "sse")) == 1


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_subscriptions_added_and_ended_lose_nothing_on_the_others(
    hub: RunningHub, transport: TransportName
) -> None:
    async with connect(hub.http_url, transport=transport) as client:
        steady = client.subscribe("chat:steady")
        await steady.ready()
        count = 60

        async def publish_steadily() -> None:
            for n in range(count):
                await hub.publish("chat:steady", n)
                await asyncio.sleep(0.005)

        publishing = asyncio.create_task(publish_steadily())
        # Each change reopens the stream, while publications keep coming on the steady channel.
        for round_ in range(6):
            extra = client.subscribe(f"chat:extra{round_}")
            await extra.ready()
            await hub.publish(f"chat:extra{round_}", round_)
            assert (await next_message(extra)).data == round_
            await extra.unsubscribe()
        await publishing
        received = [(await next_message(steady)).data for _ in range(count)]
        assert received == list(range(count))
        with pytest.raises(TimeoutError):
            await next_item(steady, wait=0.3)  # and no duplicate


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_a_refused_channel_ends_only_its_own_subscription(
    hub_factory: Any, transport: TransportName
) -> None:
    hub: RunningHub = await hub_factory(api_key="backend-key", token_secret=SECRET)
    token = jwt.encode(
        {"sub": "ada", "channels": ["chat:*"], "exp": int(time.time() + 600)},
        SECRET,
        algorithm="HS256",
    )
    async with connect(hub.http_url, token=token, transport=transport) as client:
        allowed = client.subscribe("chat:lobby")
        refused = client.subscribe("admin:secrets")
        with pytest.raises(RequestFailed) as caught:
            async with asyncio.timeout(timeout(10)):
                await refused.ready()
        assert caught.value.code == ErrorCode.FORBIDDEN
        assert caught.value.channel == "admin:secrets"
        await allowed.ready()
        await hub.publish("chat:lobby", "still here")
        assert (await next_message(allowed)).data == "still here"
        with pytest.raises(RequestFailed):
            await next_item(refused)


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_a_reader_behind_leaves_the_stream_until_it_catches_up(
    hub: RunningHub, transport: TransportName
) -> None:
    async with connect(
        hub.http_url, transport=transport, queue_size=4, backoff=fixed_backoff(timeout(0.2))
    ) as client:
        slow = client.subscribe("chat:slow")
        fast = client.subscribe("chat:fast")
        await asyncio.gather(slow.ready(), fast.ready())
        for n in range(20):  # five times what the slow one buffers, none read yet
            await hub.publish("chat:slow", n)
        # Nobody reads the slow one: the fast one goes on.
        for n in range(5):
            await hub.publish("chat:fast", n)
            assert (await next_message(fast)).data == n
        # The slow one, read now, gets all of it, in order, once.
        got = [await next_message(slow) for _ in range(20)]
        assert [m.data for m in got] == list(range(20))
        assert all(isinstance(m, Message) for m in got)
        with pytest.raises(TimeoutError):
            await next_item(slow, wait=0.3)


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_long_channel_names_are_spread_over_streams_that_fit_a_request_line(
    hub: RunningHub, transport: TransportName
) -> None:
    # 100 names of 200 bytes: one query of them all would be over 20 KB, past the hub's own
    # head limit (16 KiB) and nginx's request line (8 KB).
    channels = [f"chat:{n:03d}-" + "x" * 195 for n in range(100)]
    async with connect(hub.http_url, transport=transport) as client:
        subs = [client.subscribe(channel) for channel in channels]
        async with asyncio.timeout(timeout(15)):
            await asyncio.gather(*(sub.ready() for sub in subs))
        for n, channel in enumerate(channels):
            await hub.publish(channel, n)
        for n, sub in enumerate(subs):
            assert (await next_message(sub)).data == n
        if transport == "sse":
            assert 2 <= len(sessions(hub, "sse")) <= 5


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_a_refused_first_subscription_leaves_no_deadline_behind(
    hub_factory: Any, transport: TransportName
) -> None:
    """The hub answered (with a refusal): it is there, and a subscription made after the
    first stream's deadline would have passed is served, not failed as unreachable."""
    hub: RunningHub = await hub_factory(api_key="backend-key", token_secret=SECRET)
    token = jwt.encode(
        {"sub": "ada", "channels": ["chat:*"], "exp": int(time.time() + 600)},
        SECRET,
        algorithm="HS256",
    )
    async with connect(hub.http_url, token=token, transport=transport, open_timeout=1) as c:
        with pytest.raises(RequestFailed):
            await c.subscribe("admin:x").ready()
        await asyncio.sleep(1.5)
        later = c.subscribe("chat:y")
        await later.ready()
        await hub.publish("chat:y", "here")
        assert (await next_message(later)).data == "here"


async def test_polling_from_a_cursor_on_a_quiet_channel_is_no_unreachable_hub(
    hub: RunningHub,
) -> None:
    """A long poll of a quiet channel answers only after its timeout: the first stream's
    deadline must not take that silence for a hub that does not answer."""
    first = await hub.publish("chat:quiet", "before")
    async with connect(hub.http_url, transport="poll", open_timeout=1) as client:
        sub = client.subscribe("chat:quiet", since=first["cursor"])
        await sub.ready()
        await asyncio.sleep(1.5)  # past the deadline, nothing published
        await hub.publish("chat:quiet", "after")
        assert (await next_message(sub)).data == "after"


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_subscription_is_ready_with_its_resume_point(
    hub: RunningHub, proxy: FaultProxy, transport: TransportName
) -> None:
    """``ready()`` means the hub gave the subscription its place: a connection lost right after
    loses nothing published meanwhile. (Over SSE it used to resolve with the stream's answer,
    before the stream's first id said where the subscription starts.)"""
    proxy.split_head = 0.3  # a stream's first id comes a while after its answer's head
    for n in range(5):
        channel = f"chat:ready{n}"
        async with connect(
            f"http://127.0.0.1:{proxy.port}", transport=transport, backoff=fixed_backoff(0.2)
        ) as client:
            sub = client.subscribe(channel)
            await sub.ready()
            assert sub.cursor is not None, n
            proxy.reset()
            await hub.publish(channel, "meanwhile")
            assert (await next_message(sub)).data == "meanwhile"


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_subscriptions_that_change_faster_than_the_hub_answers_starve_no_channel(
    hub: RunningHub, proxy: FaultProxy, transport: TransportName
) -> None:
    """Each change reopens the one stream (or poll loop) of every subscription. Each reopening
    cut the one before it short, before the hub had answered: with a subscription toggled every
    150 ms and a hub 400 ms away, a channel nobody touched got none of 30 publications while
    the toggling went on. An event stream now goes on until the hub has answered the one that
    replaces it; a poll loop gets its first reply before it restarts."""
    proxy.latency = 0.2  # each way: a poll is answered, a stream opens, in 0.4 s at best
    async with connect(f"http://127.0.0.1:{proxy.port}", transport=transport) as client:
        steady = client.subscribe("chat:lobby")
        await steady.ready()
        got: list[Any] = []

        async def toggle() -> None:
            toggled: Any = None
            while True:
                await asyncio.sleep(0.15)
                if toggled is None:
                    toggled = client.subscribe("chat:toggled")
                else:
                    await toggled.unsubscribe()
                    toggled = None

        async def read() -> None:
            async for item in steady:
                got.append(item.data)

        toggling = asyncio.create_task(toggle())
        reading = asyncio.create_task(read())
        try:
            for n in range(30):
                await hub.publish("chat:lobby", n)
                await asyncio.sleep(0.1)
            during = len(got)
            toggling.cancel()
            async with asyncio.timeout(timeout(10)):
                while len(got) < 30:
                    await asyncio.sleep(0.05)
        finally:
            toggling.cancel()
            reading.cancel()
        assert during >= 15, during  # half of them while the toggling went on
        assert got == list(range(30))


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_a_subscription_toggled_while_publications_flow_loses_and_repeats_nothing(
    hub: RunningHub, proxy: FaultProxy, transport: TransportName
) -> None:
    """Reopenings while both channels publish: over SSE the stream that replaces another opens
    from where that one was asked (the old one delivers meanwhile, and the new one delivers it
    again), over polling a loop restarts after its first reply. The channel nobody touches, and
    the toggled one, each subscription of it resuming where the last one was read, get every
    publication once, in order."""
    proxy.latency = 0.1
    count = 40
    async with connect(f"http://127.0.0.1:{proxy.port}", transport=transport) as client:
        steady = client.subscribe("chat:steady")
        await steady.ready()
        since = (await hub.publish("chat:toggled", "start"))["cursor"]
        toggled: list[Any] = []

        async def toggle() -> None:
            nonlocal since
            while True:
                sub = client.subscribe("chat:toggled", since=since)
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            async for item in sub:
                                assert isinstance(item, Message), item
                                toggled.append(item.data)
                finally:
                    since = sub.cursor or since
                    await sub.unsubscribe()

        toggling = asyncio.create_task(toggle())
        try:
            for n in range(count):
                await hub.publish("chat:steady", n)
                await hub.publish("chat:toggled", n)
                await asyncio.sleep(0.05)
        finally:
            toggling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await toggling
        last = client.subscribe("chat:toggled", since=since)
        while len(toggled) < count:
            toggled.append((await next_message(last, wait=10)).data)
        assert toggled == list(range(count))
        assert [(await next_message(steady)).data for _ in range(count)] == list(range(count))
        for sub in (steady, last):
            with pytest.raises(TimeoutError):
                await next_item(sub, wait=0.3)  # and no duplicate


async def test_a_stream_replaced_at_the_hubs_connection_cap_cuts_the_old_one_first(
    hub_factory: Any,
) -> None:
    """The replacement of an event stream is asked beside it, and the hub counts both: at a
    cap of one connection per address it refuses the replacement (``too_many_connections``).
    The old stream is cut and the new one asked again alone, the client goes on."""
    hub: RunningHub = await hub_factory(limits={"max_connections_per_ip": 1})
    async with connect(hub.http_url, transport="sse", backoff=fixed_backoff(0.2)) as client:
        first = client.subscribe("chat:first")
        await first.ready()
        second = client.subscribe("chat:second")
        await asyncio.wait_for(second.ready(), timeout(10))
        await hub.publish("chat:first", 1)
        await hub.publish("chat:second", 2)
        assert (await next_message(first)).data == 1
        assert (await next_message(second)).data == 2
        assert len(sessions(hub, "sse")) == 1


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_a_reader_catching_up_while_its_channel_publishes_misses_nothing(
    hub: RunningHub, proxy: FaultProxy, transport: TransportName
) -> None:
    """A reader behind leaves the stream; caught up, it rejoins on the stream that replaces
    this one, from its own position. The stream it left goes on until then, and must deliver
    nothing more to it: what it skipped comes on the replacement, which drops as repeats what
    is older than the subscription's last publication. (A guard: the race is narrow, and this
    passed without the stream's check too.)"""
    proxy.latency = 0.05
    async with connect(
        f"http://127.0.0.1:{proxy.port}", transport=transport, queue_size=4
    ) as client:
        sub = client.subscribe("chat:busy")
        await sub.ready()
        for n in range(20):  # five times what it buffers, none read yet
            await hub.publish("chat:busy", n)
        count = 60

        async def publish_more() -> None:
            for n in range(20, count):
                await hub.publish("chat:busy", n)
                await asyncio.sleep(0.01)

        publishing = asyncio.create_task(publish_more())
        got = []
        for _ in range(count):
            got.append((await next_message(sub, wait=10)).data)
            await asyncio.sleep(0.005)
        await publishing
        assert got == list(range(count))


async def test_a_reader_that_caught_up_misses_nothing_while_its_stream_is_replaced(
    hub: RunningHub, proxy: FaultProxy
) -> None:
    """A burst fills the buffer of a reader that keeps up (one read, one turn of the loop):
    the subscription pauses, its reader catches up at once, and it is asked on a replacement
    while the old stream still runs. The old stream must deliver nothing more to it: it
    skipped a publication, which only the replacement brings, and a later one from the old
    stream would have passed it (dropped then as a repeat). Here the replacement's first id
    comes a second after its answer's head, as a loss on the way can make it."""
    async with connect(f"http://127.0.0.1:{proxy.port}", transport="sse", queue_size=4) as client:
        sub = client.subscribe("chat:busy")
        await sub.ready()
        got: list[Any] = []

        async def read() -> None:
            async for item in sub:
                assert isinstance(item, Message), item
                got.append(item.data)

        reading = asyncio.create_task(read())
        try:
            proxy.stall()  # a burst of five reaches the client in one read
            for n in range(5):
                await hub.publish("chat:busy", n)
            proxy.split_head = 1.0
            proxy.resume()
            await asyncio.sleep(0.5)  # the replacement's head is in, its first id not yet
            await hub.publish("chat:busy", 5)  # on the old stream too
            proxy.split_head = 0
            await asyncio.sleep(1.0)
            await hub.publish("chat:busy", 6)
            async with asyncio.timeout(timeout(10)):
                while len(got) < 7:
                    await asyncio.sleep(0.02)
        finally:
            reading.cancel()
        assert got == list(range(7))


async def test_a_live_signal_comes_once_while_the_stream_is_replaced(
    hub: RunningHub, proxy: FaultProxy
) -> None:
    """A live signal (``ephemeral``) published while a replacement opens beside the old
    stream goes out on both: it has no offset to be dropped by as a repeat. Only the newest
    stream the hub has answered for a subscription delivers to it."""
    async with connect(f"http://127.0.0.1:{proxy.port}", transport="sse") as client:
        sub = client.subscribe("chat:live")
        await sub.ready()
        await hub.publish("chat:live", "stored-1")
        assert (await next_message(sub)).data == "stored-1"
        proxy.split_head = 1.0  # the replacement's first id a second after its head
        other = client.subscribe("chat:other")  # a replacement beside the old stream
        await asyncio.sleep(0.5)
        await hub.publish("chat:live", "typing", ephemeral=True)
        await asyncio.sleep(1.0)
        proxy.split_head = 0
        await hub.publish("chat:live", "stored-2")
        got = [(await next_message(sub)).data for _ in range(2)]
        assert got == ["typing", "stored-2"]
        with pytest.raises(TimeoutError):
            await next_item(sub, wait=0.3)
        await other.unsubscribe()
