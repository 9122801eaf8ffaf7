"""One channel, three transports: the same publications with the same cursors everywhere."""

from __future__ import annotations

import asyncio

from ..conftest import RunningHub, timeout, until
from .streams import Baseline, poll, sse


async def test_ws_sse_and_long_poll_see_the_same_publications_and_cursors(
    hub: RunningHub,
) -> None:
    baseline = Baseline(hub)
    channel = "chat:lobby"
    await hub.publish(channel, "before anyone")
    async with hub.ws() as ws, sse(hub, channel) as stream, hub.http() as client:
        await ws.subscribe(channel)
        start = (await poll(client, channel, timeout=0))["cursor"]
        assert start == (await stream.opening()).id  # both start from the same position
        long_poll = asyncio.create_task(poll(client, channel, cursor=start, timeout=30))
        await until(lambda: len(hub.hub.local[channel]) == 3)
        published = [await hub.publish(channel, {"n": n, "text": 'é\n"x"'}) for n in range(3)]
        via_ws = [await ws.recv() for _ in range(3)]
        via_sse = await stream.messages(3)
        via_poll = (await asyncio.wait_for(long_poll, timeout(5)))["publications"]
        if len(via_poll) < 3:  # the long poll may answer with the first publications only
            more = await poll(client, channel, cursor=via_poll[-1]["cursor"], timeout=0)
            via_poll += more["publications"]
    cursors = [p["cursor"] for p in published]
    assert [p["cursor"] for p in via_ws] == cursors
    assert [event_id for event_id, _ in via_sse] == cursors
    assert [p["cursor"] for _, p in via_sse] == cursors
    assert [p["cursor"] for p in via_poll] == cursors
    assert via_ws == [p for _, p in via_sse] == via_poll  # the same publication objects
    await baseline.restored()
