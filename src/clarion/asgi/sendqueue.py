"""The portable WebSocket write path: a bounded queue drained into ASGI ``websocket.send``.

Used by every WebSocket endpoint when the server does not offer the fast extension (uvicorn,
hypercorn...). One sender task per connection — never one per message or per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from clarion.core.hub import Hub
from clarion.protocol.codes import CloseCode

log = logging.getLogger("clarion.ws")

Send = Callable[[dict[str, Any]], Awaitable[None]]


class SendQueue:
    """Text messages for one connection, at most ``limit`` characters queued.

    Over ``limit`` the owner's ``on_overflow`` policy runs (close as slow, or conflate); past
    twice the limit, or when the connection closes while over it, what is queued is dropped
    and only the close remains: a peer that does not read would otherwise hold it (and the
    close behind it) for as long as it keeps the socket open.
    """

    __slots__ = ("_closed", "_overflowing", "_queue", "_queued", "_ready", "_task", "_told",
                 "limit", "on_overflow", "send")  # fmt: skip

    def __init__(self, send: Send, limit: int, on_overflow: Callable[[], None]) -> None:
        self.send = send
        self.limit = limit
        self.on_overflow = on_overflow
        self._queue: deque[str | bytes | tuple[int, str]] = deque()
        self._queued = 0
        self._ready = asyncio.Event()
        self._overflowing = False
        self._closed = False
        self._told = False  # on_overflow ran; re-armed once the backlog is down to half
        self._task = asyncio.create_task(self._drain(), name="clarion-ws-sender")

    def put(self, text: str | bytes) -> None:
        """Queue a text message, or a binary one (``bytes``)."""
        if self._closed:
            return
        self._queue.append(text)
        self._queued += len(text)
        self._ready.set()
        if self._queued > self.limit:
            if self._told:
                if self._queued > 2 * self.limit:
                    # Told, and still queueing (a conflating session's replies): the budget
                    # is a bound, not a hint.
                    log.warning("send queue over twice its limit of %d: closing", self.limit)
                    self.close(CloseCode.POLICY_VIOLATION, "send buffer overflow")
            elif not self._overflowing:
                # Deferred: put runs inside the hub's fan-out loop, which the overflow policy
                # (closing or conflating the session) changes.
                self._overflowing = True
                asyncio.get_running_loop().call_soon(self._overflow)

    def _overflow(self) -> None:
        self._overflowing = False
        if not self._closed:
            self._told = True
            self.on_overflow()

    def backlog(self) -> int:
        return self._queued

    def close(self, code: int, reason: str) -> None:
        """Send what is queued (unless over the limit: then drop it), then close with ``code``."""
        if self._closed:
            return
        self._closed = True
        if self._queued > self.limit:
            self._queue.clear()
            self._queued = 0
        self._queue.append((code, reason))
        self._ready.set()

    async def _drain(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    item = self._queue.popleft()
                    if isinstance(item, tuple):
                        code, reason = item
                        await self.send({"type": "websocket.close", "code": code, "reason": reason})
                        return
                    self._queued -= len(item)
                    if self._told and self._queued <= self.limit // 2:
                        self._told = False
                    if isinstance(item, bytes):
                        await self.send({"type": "websocket.send", "bytes": item})
                    else:
                        await self.send({"type": "websocket.send", "text": item})
        except (OSError, RuntimeError):
            return  # the peer is gone; the receive loop notices and cleans up

    async def finish(self, wait: float) -> None:
        """Give the sender up to ``wait`` seconds to send what is queued (a close included)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), wait)

    async def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def accept(
    hub: Hub, scope: dict[str, Any], receive: Any, send: Send, subprotocol: str | None
) -> bool:
    """The handshake every WebSocket endpoint shares: origin check, shutdown, accept.

    A cross-site origin is refused before the upgrade completes (HTTP 403): that is what stops
    cross-site WebSocket hijacking. Returns whether the connection was accepted.
    """
    from clarion.asgi import access
    from clarion.errors import Forbidden

    message = await receive()
    if message["type"] != "websocket.connect":
        return False
    try:
        access.check_origin(hub, scope)
    except Forbidden:
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
        return False
    if hub.closing:
        await send({"type": "websocket.close", "code": CloseCode.SHUTDOWN})
        return False
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    return True
