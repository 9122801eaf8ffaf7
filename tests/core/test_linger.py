"""A node stays subscribed on Redis for ``LINGER`` seconds to a channel its last subscriber
left (``clarion.core.channels``).

A long poll's next poll comes milliseconds after its reply, a reconnect within seconds; each
used to subscribe the node anew (a round trip and a read of the channel's position) and then
unsubscribe it, channel by channel. Meanwhile the node keeps the channel's position as its
publications pass, so a subscriber back within the linger starts from there; after a gap, or
in a new epoch, the position is no longer known and the node unsubscribes at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from clarion.core import channels
from clarion.protocol.publication import Publication

from ..conftest import RunningHub, until
from ..redis_fixture import RedisServer, redis_server  # noqa: F401  (a fixture)

LINGER = 60.0  # nothing is let go by time within a test, unless it says so
SHORT = 0.5


@pytest.fixture
async def hub(
    hub_factory: Callable[..., Any],
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> RunningHub:
    monkeypatch.setattr(channels, "LINGER", LINGER)
    running: RunningHub = await hub_factory(engine=redis_server.url)
    return running


@pytest.fixture
async def redis(redis_server: RedisServer) -> Any:  # noqa: F811
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def room() -> str:
    return f"room:{os.urandom(4).hex()}"  # the Redis server is shared by the worker's tests


async def node_subscribed(hub: RunningHub, redis: Any, channel: str) -> bool:
    keys = hub.hub.engine.keys
    return bool(await redis.execute_command("PUBSUB", "CHANNELS", keys.pubsub(channel)))


def counting(hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The channels the node subscribes to on the engine, as it does."""
    engine = hub.hub.engine
    real = engine.subscribe
    calls: list[str] = []

    async def subscribe(channel: str) -> Any:
        calls.append(channel)
        return await real(channel)

    monkeypatch.setattr(engine, "subscribe", subscribe)
    return calls


async def test_a_channel_left_stays_subscribed_then_is_let_go(
    hub: RunningHub, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channels, "LINGER", SHORT)
    channel = room()
    async with hub.ws() as ws:
        assert "ok" in await ws.subscribe(channel)
        assert "ok" in await ws.call("unsubscribe", channel=channel)
    assert channel not in hub.hub.channels()  # no subscriber: not listed
    assert await node_subscribed(hub, redis, channel)
    await until(lambda: _not(node_subscribed(hub, redis, channel)), wait=SHORT + 5)


async def _not(check: Any) -> bool:
    return not await check


async def test_a_subscriber_back_within_the_linger_resumes_from_the_position_kept(
    hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publications while no one is subscribed move the position the node keeps: a resume
    gets them once, a new subscriber none of them, and both the next live one."""
    channel = room()
    async with hub.ws() as ws:
        cursor = (await ws.subscribe(channel))["ok"]["cursor"]
        assert "ok" in await ws.call("unsubscribe", channel=channel)
        subscribed = counting(hub, monkeypatch)
        for n in (1, 2):
            await hub.publish(channel, {"n": n})
        async with hub.ws() as fresh:
            assert (await fresh.subscribe(channel))["ok"]["offset"] == 2
            assert (await ws.subscribe(channel, since=cursor))["ok"]["recovered"] is True
            assert [(await ws.recv())["data"]["n"] for _ in (1, 2)] == [1, 2]
            await hub.publish(channel, {"n": 3})
            assert (await ws.recv())["data"] == {"n": 3}
            assert (await fresh.recv())["data"] == {"n": 3}
    assert subscribed == []  # the node was still subscribed


async def test_a_gap_while_left_lets_the_channel_go_at_once(
    hub: RunningHub, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publication the node did not get (one past the next) leaves it without a position:
    it unsubscribes, and the next subscriber subscribes it anew and reads the position."""
    channel = room()
    async with hub.ws() as ws:
        first = (await ws.subscribe(channel))["ok"]
        assert "ok" in await ws.call("unsubscribe", channel=channel)
        await hub.publish(channel, {"n": 1})  # passes: the position moves to 1
        subscribed = counting(hub, monkeypatch)
        skipped = Publication(channel, 3, first["epoch"], {"n": 3}, 0)
        hub.hub.on_publication(skipped)  # 2 never came
        await until(lambda: _not(node_subscribed(hub, redis, channel)), wait=5)
        await hub.publish(channel, {"n": 2})
        assert (await ws.subscribe(channel, since=first["cursor"]))["ok"]["recovered"] is True
        assert [(await ws.recv())["data"]["n"] for _ in (1, 2)] == [1, 2]
    assert subscribed == [channel]


async def test_a_channel_whose_history_lapsed_while_left_goes_on_without_a_false_reset(
    hub: RunningHub, redis: Any
) -> None:
    """Its meta and stream gone while no one was subscribed (as their TTLs running out do),
    the channel starts again in a new epoch that no publication announced: a new subscriber
    is told of no reset, and one resuming from the old epoch of one reset."""
    channel = room()
    keys = hub.hub.engine.keys
    async with hub.ws() as ws:
        first = (await ws.subscribe(channel))["ok"]
        await hub.publish(channel, {"n": 1})
        assert (await ws.recv())["data"] == {"n": 1}
        assert "ok" in await ws.call("unsubscribe", channel=channel)
    await redis.delete(keys.meta(channel), keys.stream(channel))
    async with hub.ws() as fresh, hub.ws() as back:
        assert (await fresh.subscribe(channel))["ok"]["epoch"] != first["epoch"]
        resumed = await back.subscribe(channel, since=first["cursor"])
        await hub.publish(channel, {"n": 2})
        assert (await fresh.recv())["data"] == {"n": 2}
        seen = [resumed]
        while "data" not in seen[-1]:
            seen.append(await back.recv())
    assert seen[-1]["data"] == {"n": 2}
    assert seen[0]["ok"]["reset"] == "epoch"
    assert sum("reset" in message for message in seen) == 1, seen  # one reset pushed


async def test_a_channel_let_go_while_it_reads_back_a_gap_loses_nothing_for_the_next(
    hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its read back of a gap outlives the channel's state (the last subscriber left): the
    publications that come meanwhile belong to the state made for the next subscriber, not to
    the read back, which has no one to give them to."""
    channel = room()
    engine = hub.hub.engine
    read = engine.history
    reading = asyncio.Event()

    async def held(name: str, *args: Any, **kw: Any) -> Any:
        if name == channel and kw.get("since") is not None:
            await reading.wait()
        return await read(name, *args, **kw)

    async with hub.ws() as a, hub.ws() as b:
        first = (await a.subscribe(channel))["ok"]
        await hub.publish(channel, {"n": 1})
        assert (await a.recv())["data"] == {"n": 1}
        monkeypatch.setattr(engine, "history", held)
        hub.hub.on_publication(Publication(channel, 3, first["epoch"], {"n": 3}, 0))  # 2: lost
        assert "ok" in await a.call("unsubscribe", channel=channel)
        assert (await b.subscribe(channel))["ok"]["offset"] == 1
        await hub.publish(channel, {"n": 2})
        try:
            assert (await b.recv())["data"] == {"n": 2}
        finally:
            reading.set()
