"""The queue pipes (any ASGI server) keep only the newest keyed signal per slot while the host
server has not taken what waits: driven through a real ASGI ``send`` that blocks until told."""

from __future__ import annotations

import asyncio
from typing import Any

from clarion.asgi.pipe import BodyQueue, SocketQueue
from clarion.protocol.frames import latest, latest_text

from ..conftest import timeout


class SlowPeer:
    """An ASGI ``send`` whose peer takes nothing until ``release()``: what the pipe queues
    meanwhile is what a connection that is behind holds."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.first = asyncio.Event()

    async def __call__(self, message: dict[str, Any]) -> None:
        self.first.set()
        await self.gate.wait()
        self.sent.append(message)

    def release(self) -> None:
        self.gate.set()


async def test_a_socket_queue_that_is_behind_keeps_the_newest_signal_per_slot() -> None:
    peer = SlowPeer()
    pipe = SocketQueue(peer, 1 << 20)
    pipe.put("stored 1")  # taken by the writer, which now waits on the peer
    await asyncio.wait_for(peer.first.wait(), timeout(5))
    pipe.put("stored 2")
    for i in range(1000):
        pipe.put(latest_text(f'{{"i":{i}}}', ("cur:doc", f"k{i % 10}")))
    pipe.put("stored 3")
    assert pipe.backlog() == len("stored 2") + sum(len(f'{{"i":{990 + k}}}') for k in range(10)) + 8
    peer.release()
    await asyncio.wait_for(_until(lambda: len(peer.sent) == 13), timeout(5))
    texts = [m["text"] for m in peer.sent]
    # In place: each slot where its first signal queued, holding its newest.
    assert texts == ["stored 1", "stored 2", *(f'{{"i":{990 + k}}}' for k in range(10)), "stored 3"]
    assert pipe.backlog() == 0
    # Caught up: a signal is queued as it comes, and so is the next one of its slot.
    pipe.put(latest_text('{"i":1000}', ("cur:doc", "k0")))
    await asyncio.wait_for(_until(lambda: len(peer.sent) == 14), timeout(5))
    await pipe.stop()


async def test_a_body_queue_that_is_behind_keeps_the_newest_signal_per_slot() -> None:
    peer = SlowPeer()
    pipe = BodyQueue(peer, 1 << 20)
    pipe.put(b"data: stored 1\n\n")
    await asyncio.wait_for(peer.first.wait(), timeout(5))
    for i in range(1000):
        pipe.put(latest(b"data: %d\n\n" % i, ("cur:doc", f"k{i % 10}")))
    pipe.close(1000, "normal")
    peer.release()
    await asyncio.wait_for(pipe.done, timeout(5))
    body = b"".join(m.get("body", b"") for m in peer.sent)
    assert body == b"data: stored 1\n\n" + b"".join(b"data: %d\n\n" % (990 + k) for k in range(10))
    assert peer.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.001)
