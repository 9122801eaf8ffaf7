"""One connection's byte pipe: what every streaming transport writes through.

A transport (``/ws``, ``/stomp``, ``/sse``) only encodes: publications, resets, presence events,
the disconnect. How the bytes reach the peer, within what budget, is the pipe's:

* :class:`FastSocketPipe` and :class:`FastChunkPipe` write into clarion's own server through its
  extensions (``clarion.fast_websocket``, ``clarion.fast_stream``): what is pushed is a complete
  frame or chunk, shared by every subscriber, coalesced into one write per connection per loop
  iteration, and the fan-out loop itself is the server's (``deliver`` over ``target``);
* :class:`SocketQueue` and :class:`BodyQueue` work under any ASGI server: a bounded queue drained
  into ``websocket.send`` / ``http.response.body`` by one task per connection — never one per
  message or per subscriber.

Every pipe offers: ``push`` (the fan-out's per-subscriber call: one append), ``send`` (one
message outside the fan-out), ``backlog`` and the send budget with its overflow watch,
``last_activity``, ``ping`` and ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from clarion.asgitypes import (
    FastOutbox,
    FastStream,
    FastWebSocket,
    Message,
    Scope,
    Send,
    fast_websocket,
)
from clarion.core.fanout import deliver_each
from clarion.core.limits import LogLimit
from clarion.protocol.codes import CloseCode, clip_reason
from clarion.protocol.frames import Latest, LatestText, http_chunk, latest, latest_text, size_of

log = logging.getLogger("clarion.pipe")
# A peer that does not read causes it, once per connection: a line a minute at most.
_overflows = LogLimit(log, keys=1)


class Pipe:
    """What the pipes share; see the module's docstring."""

    __slots__ = ("deliver", "on_overflow", "push", "target")

    # Pushed items are complete frames or chunks (the fast pipes), else payloads.
    framed = False
    # WebSocket pings go through this pipe (False: the host server owns them).
    pings = False
    # permessage-deflate on a framed pipe: the window compressed frames must fit (0: none).
    deflate_bits = 0
    # ``loop.time()`` of the last write the pipe knows of (0: it does not track them).
    last_write = 0.0
    push: Callable[[Any], None]
    # What the fan-out loop takes for this connection (None: its ``push``), and that loop.
    target: Any
    deliver: Callable[[Iterable[Any], Any], None]
    # What to do when the backlog goes over the budget (set by the transport's owner).
    on_overflow: Callable[[], None]

    def _overflow(self) -> None:
        self.on_overflow()

    @property
    def last_activity(self) -> float:
        """``time.monotonic()`` of the last sign of life from the peer."""
        return time.monotonic()  # the host server or the request's end tells us otherwise

    def send(self, payload: bytes) -> None:
        raise NotImplementedError

    def push_pair(self, head: bytes, body: bytes) -> None:
        """Push the item ``head + body``: the fast pipes push it as two buffers, without
        copying ``body`` (a large part shared by many items)."""
        self.push(head + body)

    def backlog(self) -> int:
        raise NotImplementedError

    @property
    def cut(self) -> bool:
        """Past twice the send budget: what is pushed is dropped, and the connection must end
        (as slow, whatever the slow-consumer policy)."""
        return False

    def watch_overflow(self) -> None:
        """Report the next overflow again (after a conflation ended)."""

    def ping(self) -> None:
        return None

    def listen(self, handler: Callable[[Message], Awaitable[None]]) -> bool:
        """Have the server call ``handler`` with each inbound message; False: not offered."""
        return False

    def close(self, code: int, reason: str, last: bytes | None = None) -> None:
        """Send ``last`` (unless what is queued is dropped first) and end the connection."""
        raise NotImplementedError

    async def finish(self, wait: float) -> None:
        """Give what is queued (the end included) up to ``wait`` seconds to go out."""

    async def closed(self, receive: Callable[[], Awaitable[dict[str, Any]]], wait: float) -> None:
        """After :meth:`close`: wait (up to ``wait`` seconds) until the close went out."""
        await self.finish(wait)

    async def stop(self) -> None:
        """Stop writing (the connection is over)."""

    def release(self) -> None:
        """The connection is over: forget the owner's callback, which holds the owner (and
        through it this pipe) in a reference cycle that only the garbage collector would end."""
        self.on_overflow = _nothing


# ---- clarion's own server ----------------------------------------------------------------


class FastPipe(Pipe):
    """A connection of clarion's server (a :class:`~clarion.server.fastws.Outbox`)."""

    __slots__ = ("conn", "limit")
    framed = True

    def __init__(self, conn: FastOutbox, limit: int) -> None:
        self.conn = conn
        self.limit = limit
        self.push = conn.push
        self.target = conn
        self.deliver = conn.push_many
        self.on_overflow = _nothing
        conn.set_send_limit(limit, self._overflow)

    def backlog(self) -> int:
        return int(self.conn.buffered_bytes)

    @property
    def cut(self) -> bool:
        return bool(self.conn.cut)

    def push_pair(self, head: bytes, body: bytes) -> None:
        self.conn.push_pair(head, body)

    def watch_overflow(self) -> None:
        self.conn.set_send_limit(self.limit, self._overflow)


class FastSocketPipe(FastPipe):
    """``clarion.fast_websocket``: pushed items are whole unmasked WebSocket frames."""

    __slots__ = ()
    pings = True
    conn: FastWebSocket

    def __init__(self, conn: FastWebSocket, limit: int) -> None:
        super().__init__(conn, limit)

    @property
    def last_activity(self) -> float:
        return float(self.conn.last_activity)  # any bytes, pongs included

    @property
    def deflate_bits(self) -> int:  # type: ignore[override]
        return int(self.conn.deflate_bits)

    def send(self, payload: bytes) -> None:
        self.conn.push_text(payload)

    def ping(self) -> None:
        self.conn.ping()

    def listen(self, handler: Callable[[Message], Awaitable[None]]) -> bool:
        self.conn.listen(handler)
        return True

    def close(self, code: int, reason: str, last: bytes | None = None) -> None:
        if last is not None:
            self.conn.push_text(last)
        self.conn.close(code, reason)

    async def closed(self, receive: Callable[[], Awaitable[dict[str, Any]]], wait: float) -> None:
        # The server ends the close handshake (or drops the peer) on its own deadline.
        while (await receive())["type"] != "websocket.disconnect":
            pass


class FastChunkPipe(FastPipe):
    """``clarion.fast_stream``: pushed items are whole HTTP chunks of a streaming response."""

    __slots__ = ("_asgi_send", "_ended")
    conn: FastStream

    def __init__(self, stream: FastStream, limit: int, send: Send, replay: int = 0) -> None:
        # ``replay``: bytes pushed on top of the budget once (the history a resume replays).
        super().__init__(stream, limit + replay)
        self.limit = limit
        self._asgi_send = send
        self._ended = False

    def send(self, payload: bytes) -> None:
        chunk = http_chunk(payload)
        self.conn.push(latest(chunk, payload.slot) if type(payload) is Latest else chunk)

    def close(self, code: int, reason: str, last: bytes | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if code == CloseCode.SLOW and self.backlog() > self.limit:
            # What is queued cannot reach this reader in time; it resumes from its last id.
            # Within the budget it goes first (a replay cut at the budget: the next page).
            self.conn.drop_pending()
        if last is not None:
            self.conn.push(http_chunk(last))

    async def finish(self, wait: float) -> None:
        # What was pushed is written before the last chunk, unless the reader does not take it
        # within ``wait`` (a slow reader).
        last = self._asgi_send({"type": "http.response.body", "body": b"", "more_body": False})
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(wait):
                await last


# ---- any ASGI server -----------------------------------------------------------------------


class _Waiting:
    """A keyed signal's frame in a queue, where a newer one of its slot may take its place."""

    __slots__ = ("item",)

    def __init__(self, item: Latest | LatestText) -> None:
        self.item = item


class _End:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class QueuePipe(Pipe):
    """A bounded queue drained by one task; the ASGI messages are the subclass's.

    Over ``limit`` the owner's ``on_overflow`` policy runs (close as slow, or conflate); past
    twice the limit nothing more is queued, at once, even within the fan-out loop that pushes
    (:attr:`cut`), and the owner closes the connection; when it closes while over the limit,
    what is queued is dropped and only the end remains: a peer that does not read would
    otherwise hold it (and the close behind it) for as long as it keeps the socket open. Items
    are kept in push order in a deque. A keyed signal's frame
    (:class:`~clarion.protocol.frames.Latest`) pushed while the connection is behind (something
    waits in the queue, or the host server has not taken the last write yet) takes the place of
    the one of its slot still waiting, if any: the newest per slot, where the older one was.
    """

    __slots__ = ("_allowance", "_busy", "_closed", "_cut", "_lost", "_queue", "_queued",
                 "_ready", "_slots", "_task", "_told", "_watching", "last_write",
                 "limit")  # fmt: skip

    def __init__(self, send: Send, limit: int) -> None:
        self.limit = limit
        self.on_overflow = _nothing
        self.push = self.put
        self.target = None
        self.deliver = deliver_each
        self._queue: deque[Any] = deque()
        self._queued = 0
        # slot -> the keyed signal waiting in the queue for it (wrapped, so it can be replaced).
        self._slots: dict[tuple[str, str, str], _Waiting] = {}
        self._busy = False  # the writer is handing bytes to the host server
        # Bytes allowed on top of the limit, shrinking as they are written (a replay).
        self._allowance = 0
        self._ready = asyncio.Event()
        self._watching = False  # an overflow is scheduled to be told
        self._told = False  # on_overflow ran; re-armed once the backlog is down to half
        self._closed = False
        self._cut = False  # past twice the limit: nothing more is queued
        self._lost = False
        self.last_write = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._drain(send), name="clarion-pipe")

    def put(self, item: Any) -> None:
        if self._closed or self._cut:
            return
        kind = type(item)
        waiting = None
        grow = size_of(item)
        slotted = (kind is Latest or kind is LatestText) and bool(self._queue or self._busy)
        if slotted:
            waiting = self._slots.get(item.slot)
            if waiting is not None:  # replaces the older signal of its slot, still queued
                grow -= size_of(waiting.item)
        queued = self._queued + grow
        if grow > 0 and queued > 2 * self.limit + self._allowance:
            # The budget is a bound, not a hint: nothing more, not even the rest of the
            # fan-out loop that pushes now; the owner closes the connection as slow.
            self._cut = True
            if self._told:
                # Told before, and still queueing (a conflating session's replies).
                _overflows.log(
                    logging.WARNING,
                    "",
                    "send queue over twice its limit of %d: closing",
                    self.limit,
                )
                self.close(CloseCode.POLICY_VIOLATION, "send buffer overflow")
            else:
                self._watch()
            return
        if waiting is not None:
            waiting.item = item
        elif slotted:
            waiting = self._slots[item.slot] = _Waiting(item)
            self._queue.append(waiting)
        else:
            self._queue.append(item)
        self._queued = queued
        self._ready.set()
        if queued > self.limit + self._allowance and not self._told:
            self._watch()

    def _watch(self) -> None:
        if not self._watching:
            # Deferred: put runs inside the hub's fan-out loop, which the overflow policy
            # (closing or conflating the session) changes.
            self._watching = True
            asyncio.get_running_loop().call_soon(self._tell)

    def put_replay(self, item: Any) -> None:
        """Queue ``item`` on top of the budget (written first, it is the stream's start)."""
        self._allowance += size_of(item)
        self.put(item)

    def _tell(self) -> None:
        self._watching = False
        if not self._closed:
            self._told = True
            self.on_overflow()

    def backlog(self) -> int:
        return self._queued

    @property
    def cut(self) -> bool:
        return self._cut

    @property
    def lost(self) -> bool:
        """The peer went away while being written to."""
        return self._lost

    @property
    def done(self) -> asyncio.Task[None]:
        """Ends once the end is sent, or the peer is gone."""
        return self._task

    def close(self, code: int, reason: str, last: bytes | None = None) -> None:
        if self._closed:
            return
        # Over the budget, the queue cannot reach the peer in time: only the end goes. Within
        # it, what is queued goes first (a resume's replay cut at the budget, then 4001).
        if self._queued > self.limit + self._allowance:
            self._queue.clear()
            self._slots.clear()
            self._queued = 0
        if last is not None:
            item = self._payload(last)
            self._queue.append(item)
            self._queued += size_of(item)
        self._closed = True
        self._queue.append(_End(code, reason))
        self._ready.set()

    def _payload(self, data: bytes) -> Any:
        return data

    def _unwrap(self, item: Any) -> Any:
        """The item itself, for a keyed signal that waited in its slot (now leaving it)."""
        if type(item) is _Waiting:
            del self._slots[item.item.slot]
            return item.item
        return item

    def _written(self, size: int) -> None:
        self._queued -= size
        self._allowance = max(0, self._allowance - size)
        if self._told and self._queued <= self.limit // 2:
            self._told = False
        self.last_write = asyncio.get_running_loop().time()

    async def _drain(self, send: Send) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                self._busy = True
                if await self._write(send):
                    return
                self._busy = False
        except (OSError, RuntimeError):
            self._lost = True  # the peer is gone; the receive loop notices and cleans up

    async def _write(self, send: Send) -> bool:
        """Write what is queued; ``True`` once the end was sent."""
        raise NotImplementedError

    async def finish(self, wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await asyncio.shield(self._task)

    def release(self) -> None:
        super().release()
        self.push = _ignore  # was this pipe's own put: a cycle of the pipe with itself

    async def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class SocketQueue(QueuePipe):
    """``websocket.send`` per message: ``str`` items are text, ``bytes`` binary."""

    __slots__ = ()

    def send(self, payload: bytes) -> None:
        text = payload.decode()
        self.put(latest_text(text, payload.slot) if type(payload) is Latest else text)

    def _payload(self, data: bytes) -> Any:
        return data.decode()

    async def _write(self, send: Send) -> bool:
        queue = self._queue
        while queue:
            item = self._unwrap(queue.popleft())
            if type(item) is _End:
                reason = clip_reason(item.reason)  # a longer one is no close frame: an error
                await send({"type": "websocket.close", "code": item.code, "reason": reason})
                return True
            self._written(size_of(item))
            if isinstance(item, bytes):
                await send({"type": "websocket.send", "bytes": item})
            else:
                await send({"type": "websocket.send", "text": item})
        return False


class BodyQueue(QueuePipe):
    """``http.response.body`` chunks of a streaming response: what is queued goes as one."""

    __slots__ = ()

    def send(self, payload: bytes) -> None:
        self.put(payload)

    async def _write(self, send: Send) -> bool:
        queue = self._queue
        while queue:
            end = type(queue[-1]) is _End
            items = [self._unwrap(item) for item in (list(queue)[:-1] if end else queue)]
            queue.clear()
            body = b"".join(items)
            self._written(len(body))
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if end:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
        return False


def _ignore(item: Any) -> None:
    return None


def _nothing() -> None:
    return None


def socket_pipe(scope: Scope, send: Send, limit: int) -> FastSocketPipe | SocketQueue:
    """The pipe of an accepted WebSocket: the fast one under ``clarion serve``."""
    conn = fast_websocket(scope)
    if conn is not None:
        return FastSocketPipe(conn, limit)
    return SocketQueue(send, limit)
