"""One channel, three transports: the same publications with the same cursors everywhere."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import pytest

from ..conftest import RunningHub, clarion_server, timeout, until
from ..security.rawws import TEXT, UPGRADE, masked
from ..server.helpers import read_response
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
    # A socket the loop does not read: what the hub wrote to it stays in it, to be looked at.
    sub = socket.create_connection(("127.0.0.1", hub.port))
    sub.setblocking(False)
    try:
        upgrade = UPGRADE.format(path="/ws", subprotocol="clarion.v1").encode()
        await loop.sock_sendall(sub, upgrade)
        head = b""
        while b"\r\n\r\n" not in head:
            head += await asyncio.wait_for(loop.sock_recv(sub, 4096), timeout(5))
        assert head.startswith(b"HTTP/1.1 101")
        subscribe = b'{"id": 1, "op": "subscribe", "channel": "chat:order"}'
        await loop.sock_sendall(sub, masked(TEXT, subscribe))
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
            answer = await read_response(reader)
            assert answer.status == 200
            # Not waited for: written before the answer, the frame is in the socket already.
            frame = sub.recv(65536)
            assert orjson.loads(answer.body)["cursor"].encode() in frame
        writer.close()
    finally:
        sub.close()
