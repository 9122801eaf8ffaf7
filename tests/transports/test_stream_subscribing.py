"""An event stream of many channels subscribes them all at once on Redis (one after another in
process): whatever lands on any channel while they subscribe reaches the stream once, in each
channel's order."""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import RunningHub
from .streams import sse

ROOMS = [f"room:{n}" for n in range(32)]


@pytest.fixture
def hub(engine_hub: RunningHub) -> RunningHub:
    return engine_hub


async def test_a_stream_reopened_on_many_channels_gets_each_publication_once_in_order(
    hub: RunningHub,
) -> None:
    """Reopened with its last id, a publication already waiting on each channel, and one more
    landing on each as the stream reads that channel's history, its subscription registered:
    the first comes from history, the second from history or live, never both."""
    async with sse(hub, *ROOMS) as stream:
        last_id = (await stream.opening()).id
    for room in ROOMS:
        await hub.hub.publish(room, {"n": 1})
    engine = hub.hub.engine
    read = engine.history

    async def landing(channel: str, *args: Any, **kw: Any) -> Any:
        if kw.get("since") is None or channel not in waiting:
            return await read(channel, *args, **kw)
        waiting.discard(channel)
        reading.append(channel)
        most.append(len(reading))
        try:
            await hub.hub.publish(channel, {"n": 2})
            return await read(channel, *args, **kw)
        finally:
            reading.remove(channel)

    waiting = set(ROOMS)
    reading: list[str] = []
    most: list[int] = []  # reads under way at once
    engine.history = landing
    try:
        async with sse(hub, *ROOMS, headers={"Last-Event-ID": last_id}) as stream:
            await stream.opening()
            events = await stream.messages(2 * len(ROOMS))
    finally:
        engine.history = read
    assert not waiting, f"no resume read of {sorted(waiting)}"
    # On Redis each waits on round trips: all at once, they share them.
    assert (max(most) > 1) is not hub.hub.publishes_inline, most
    got: dict[str, list[int]] = {}
    for _, pub in events:
        got.setdefault(pub["channel"], []).append(pub["data"]["n"])
    assert got == {room: [1, 2] for room in ROOMS}
