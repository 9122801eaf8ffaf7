"""Write flow control shared by the server's protocols: ``pause_writing`` as a future to wait on.

The transport calls ``pause_writing()`` when its write buffer passes the high-water mark and
``resume_writing()`` once it is back under the low one. Whoever writes through ASGI
(``websocket.send``, ``http.response.body``) waits on the future in between, so a peer that does
not read holds back its own sender and nobody else. A protocol keeps the future in a slot of its
own (``None`` when writing is not paused) and runs it through these functions.
"""

from __future__ import annotations

import asyncio

Drain = asyncio.Future[None] | None


def paused(loop: asyncio.AbstractEventLoop, drain: Drain) -> asyncio.Future[None]:
    """The future writers wait on from ``pause_writing()``: the pending one if there is one."""
    if drain is None or drain.done():
        return loop.create_future()
    return drain


def release(drain: Drain) -> None:
    """Let every waiting writer go: the buffer drained, or the connection is lost."""
    if drain is not None and not drain.done():
        drain.set_result(None)


def is_paused(drain: Drain) -> bool:
    return drain is not None and not drain.done()


async def wait(drain: Drain) -> None:
    if drain is not None and not drain.done():
        await drain
