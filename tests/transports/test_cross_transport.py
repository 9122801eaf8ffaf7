"""One channel, three transports: the same publications with the same cursors everywhere."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import orjson
import pytest

from benchmarks.loadgen import mask_frame, subscribe_op, ws_upgrade_request

from ..conftest import RunningHub, clarion_server, timeout, until
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


@clarion_server("the order of a publication's answer and its frames is clarion's server's")
@pytest.mark.parametrize("flush_interval", [0.0, 0.02])
async def test_a_publication_is_answered_once_its_frames_are_written(
    hub_factory: Any, flush_interval: float
) -> None:
    """A backend that has its publish's answer can count on every WebSocket subscriber on this
    node having been sent the publication: the answer waits for the frames, however long they
    are held to share writes."""
    hub: RunningHub = await hub_factory(flush_interval=flush_interval)
    loop = asyncio.get_running_loop()
    sub = socket.create_connection(("127.0.0.1", hub.port))
    sub.setblocking(False)
    try:
        await loop.sock_sendall(sub, ws_upgrade_request("127.0.0.1", hub.port, "/ws", None))
        head = b""
        while b"\r\n\r\n" not in head:
            head += await asyncio.wait_for(loop.sock_recv(sub, 4096), timeout(5))
        assert head.startswith(b"HTTP/1.1 101")
        await loop.sock_sendall(sub, mask_frame(subscribe_op(channel="chat:order")))
        reply = head.partition(b"\r\n\r\n")[2]
        while b'"id":1' not in reply:
            reply += await asyncio.wait_for(loop.sock_recv(sub, 4096), timeout(5))
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        for n in range(20):
            body = b'{"channel":"chat:order","data":%d}' % n
            writer.write(
                b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
            length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
            answer = orjson.loads(await reader.readexactly(length))
            # Not waited for: written before the answer, the frame is in the socket already.
            frame = sub.recv(65536)
            assert answer["cursor"].encode() in frame
        writer.close()
    finally:
        sub.close()
