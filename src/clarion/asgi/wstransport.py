"""How the clarion WebSocket protocol reaches the socket: the fast path and the ASGI path.

Under ``clarion serve`` the server offers the ``clarion.fast_websocket`` extension: publications
are pushed as pre-built frames shared by every subscriber and coalesced into one write per
connection per loop iteration. Under any other ASGI server, a per-connection sender task feeds
``websocket.send`` from a bounded queue: same protocol, slower.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from clarion.asgi.sendqueue import Send, SendQueue
from clarion.core.fanout import WireFormat, cursor_if_stored
from clarion.protocol import messages
from clarion.protocol.codes import disconnect_for
from clarion.protocol.frames import latest, text_frame
from clarion.protocol.publication import Publication, StreamPosition

if TYPE_CHECKING:
    from clarion.core.session import Session, SubscribeResult

FAST_WEBSOCKET = "clarion.fast_websocket"


def _frame(pub: Publication) -> bytes:
    frame = text_frame(messages.encode_publication(pub, cursor_if_stored(pub)))
    if pub.key is not None:  # a keyed signal: a connection that is behind keeps the newest
        return latest(frame, (pub.channel, pub.key))
    return frame


def _text(pub: Publication) -> str:
    return messages.encode_publication(pub, cursor_if_stored(pub)).decode()


WS_TEXT = WireFormat("clarion.v1/text", "ws", _text)
# One frame format per server fan-out loop (in practice one): subscribers of one format share
# each publication's frame and are delivered to by the server's own loop.
_FRAME_FORMATS: dict[Any, WireFormat] = {}


def frame_format(push_many: Callable[[Iterable[Any], bytes], None]) -> WireFormat:
    fmt = _FRAME_FORMATS.get(push_many)
    if fmt is None:
        fmt = _FRAME_FORMATS[push_many] = WireFormat("clarion.v1/frame", "ws", _frame, push_many)
    return fmt


class _Pushes:
    """What both write paths say the same way: resets, presence events, the disconnect push."""

    __slots__ = ("closed", "on_close")
    closed: bool
    # Called once the session is ended, while the socket may still be open (its endpoint
    # counts it from then on, as a socket without a session).
    on_close: Callable[[], None] | None
    fmt: WireFormat
    push: Callable[[Any], None]
    target: Any

    def reply(self, payload: bytes) -> None:
        raise NotImplementedError

    def _end(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        self.reply(messages.encode_reset(channel, reason, cursor))

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        self.reply(messages.encode_presence_event(kind, event))

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        self.reply(messages.encode_unsubscribe(channel, reason))

    async def hub_subscribe(
        self, session: Session, channel: str, since: StreamPosition | None, *, server: bool
    ) -> None:
        def ready(result: SubscribeResult) -> None:
            self.reply(messages.encode_subscribe(result.to_dict()))

        await session.subscribe(
            channel,
            self.fmt,
            self.push,
            since=since,
            on_ready=ready,
            target=self.target,
            server=server,
        )

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.reply(messages.encode_disconnect(code, reason, disconnect_for(code).reconnect))
        self.closed = True
        self._end(code, reason)
        if self.on_close is not None:
            self.on_close()


class FastTransport(_Pushes):
    """Writes straight into the server's coalescing buffer for this connection."""

    kind = "ws"
    __slots__ = ("conn", "fmt", "limit", "on_overflow", "push", "target")

    def __init__(self, conn: Any, send_limit: int, on_overflow: Callable[[], None]) -> None:
        self.conn = conn
        self.push: Callable[[bytes], None] = conn.push
        self.fmt = frame_format(conn.push_many)
        self.target = conn  # what the server's push_many loop takes
        self.closed = False
        self.on_close = None
        self.limit = send_limit
        self.on_overflow = on_overflow
        conn.set_send_limit(send_limit, on_overflow)

    def backlog(self) -> int:
        return int(self.conn.buffered_bytes)

    def watch_overflow(self) -> None:
        self.conn.set_send_limit(self.limit, self.on_overflow)

    @property
    def last_activity(self) -> float:
        return float(self.conn.last_activity)

    def reply(self, payload: bytes) -> None:
        if not self.closed:
            self.conn.push_text(payload)

    def ping(self) -> None:
        if not self.closed:
            self.conn.ping()

    def _end(self, code: int, reason: str) -> None:
        self.conn.close(code, reason)


class AsgiTransport(_Pushes):
    """Portable path: a bounded queue drained by one sender task per connection."""

    kind = "ws"
    fmt = WS_TEXT
    target = None  # subscribers are delivered to through push
    __slots__ = ("queue",)

    def __init__(self, send: Send, send_limit: int, on_overflow: Callable[[], None]) -> None:
        self.queue = SendQueue(send, send_limit, on_overflow)
        self.closed = False
        self.on_close = None

    @property
    def last_activity(self) -> float:
        # The host server owns WebSocket pings on this path (e.g. uvicorn's ws_ping_interval).
        return time.monotonic()

    def push(self, text: str) -> None:
        if not self.closed:
            self.queue.put(text)

    def reply(self, payload: bytes) -> None:
        self.push(payload.decode())

    def backlog(self) -> int:
        return self.queue.backlog()

    def watch_overflow(self) -> None:
        return None  # every put checks the limit

    def ping(self) -> None:
        return None

    def _end(self, code: int, reason: str) -> None:
        self.queue.close(code, reason)

    async def finish(self, wait: float) -> None:
        await self.queue.finish(wait)

    async def stop(self) -> None:
        await self.queue.stop()
