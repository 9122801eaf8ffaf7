"""A long poll that finds nothing subscribes its channels to wait, and what that costs.

Each channel's subscription used to read its history after registering, one channel after
another: on Redis a 128-channel long poll ran three history scripts per channel in turn
(the node's subscription read the channel's position twice, the poll's resume once more).
Now the node's subscription reads the position once, the resume on Redis is a look at the
channel's position (the poll has just found nothing: one command of a shared pipeline), and
the channels subscribe all at once there. What a subscription guarantees stays: a publication that
lands at any point of it wakes the poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from ..conftest import RunningHub, timeout
from ..redis_fixture import RedisServer
from .streams import poll

ROOMS = [f"room:{n}" for n in range(32)]


@pytest.fixture
def hub(engine_hub: RunningHub) -> RunningHub:
    return engine_hub


async def started(hub: RunningHub, client: Any) -> tuple[str, asyncio.Task[dict[str, Any]]]:
    cursor: str = (await poll(client, *ROOMS, timeout=0))["cursor"]
    task = asyncio.ensure_future(poll(client, *ROOMS, cursor=cursor, timeout=30))
    return cursor, task


def subscribing(args: tuple[Any, ...], kw: dict[str, Any]) -> str | None:
    """The channel the node is subscribing to: before the poll's subscription is registered
    (its look, or read, finds the channel moved)."""
    return str(args[0])


def registered(args: tuple[Any, ...], kw: dict[str, Any]) -> str | None:
    """The channel of the poll's look at a position (Redis), or of its read from its position
    (memory), once its subscription is registered: the publication comes live. (A poll's
    first look, before it waits, names all its channels.)"""
    if isinstance(args[0], str):
        return args[0] if kw.get("since") is not None else None
    return next(iter(args[0])) if len(args[0]) == 1 else None


@pytest.mark.parametrize("when", [subscribing, registered])
async def test_a_publication_landing_while_a_long_poll_subscribes_wakes_it(
    hub: RunningHub, when: Callable[[tuple[Any, ...], dict[str, Any]], str | None]
) -> None:
    engine = hub.hub.engine
    on_redis = not hub.hub.publishes_inline
    step = "subscribe" if when is subscribing else "standing" if on_redis else "history"
    real = getattr(engine, step)
    landed: list[Any] = []

    async def publishing_first(*args: Any, **kw: Any) -> Any:
        channel = when(args, kw)
        if channel is not None and not landed:
            landed.append(None)  # before the publish waits: on Redis the others run meanwhile
            landed[0] = await hub.hub.publish(channel, {"n": "meanwhile"})
        return await real(*args, **kw)

    async with hub.http() as client:
        _, waiting = await started(hub, client)
        setattr(engine, step, publishing_first)
        try:
            reply = await asyncio.wait_for(waiting, timeout(10))
        finally:
            setattr(engine, step, real)
    assert landed, f"the poll never called the engine's {step} so"
    assert [(p["channel"], p["data"]) for p in reply["publications"]] == [
        (landed[0].channel, {"n": "meanwhile"})
    ]
    assert reply["publications"][0]["offset"] == landed[0].offset


async def test_a_long_poll_with_nothing_new_reads_no_history_to_wait_on_redis(
    hub_factory: Callable[..., Any],
    redis_server: RedisServer,
) -> None:
    """Counted at the engine: a history read where the node's subscription takes the
    channel's position, as it subscribes, and none for the poll's own resume; the next long
    poll, which the node is still subscribed for (``channels.LINGER``), none at all. (In
    process a read is a slice: the memory engine reads where Redis looks.)"""
    hub: RunningHub = await hub_factory(engine=redis_server.url)
    engine = hub.hub.engine
    read, subscribe = engine.history, engine.subscribe
    reads: list[str] = []
    subscribed: list[str] = []

    async def counted(channel: str, *args: Any, **kw: Any) -> Any:
        reads.append(channel)
        return await read(channel, *args, **kw)

    async def counted_subscribe(channel: str) -> Any:
        subscribed.append(channel)
        return await subscribe(channel)

    async with hub.http() as client:
        for room in ROOMS:
            await hub.hub.publish(room, {"n": 0})
        cursor: str = (await poll(client, *ROOMS, timeout=0))["cursor"]
        engine.history, engine.subscribe = counted, counted_subscribe
        try:
            first = await poll(client, *ROOMS, cursor=cursor, timeout="0.2")
            assert sorted(subscribed) == sorted(reads) == sorted(ROOMS), (subscribed, reads)
            # Three reads per channel before: the node's subscription read its position twice.
            reads.clear()
            subscribed.clear()
            second = await poll(client, *ROOMS, cursor=cursor, timeout="0.2")
        finally:
            engine.history, engine.subscribe = read, subscribe
    assert first == second == {"publications": [], "cursor": cursor}
    assert reads == subscribed == []
