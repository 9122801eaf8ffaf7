"""``GET /sse``: Server-Sent Events streams, one core session per stream.

A stream subscribes its channels through the core (history, resume and reset included), then
writes what the fan-out pushes through the connection's :mod:`~clarion.asgi.pipe`: under
``clarion serve`` a one-channel stream's events are pre-framed chunks shared by every subscriber
(``clarion.fast_stream``); otherwise a bounded queue drained into ``http.response.body`` by one
task. The endpoint coroutine watches ``receive()`` for ``http.disconnect`` so a client that goes
away is cleaned up at once.

Event ids. A stream of one channel uses each publication's own cursor as its ``id:``, so its
events are the same bytes for every such stream: they are encoded once per publication
(:data:`SSE_EVENT`, memoised on the publication) and the per-stream cost is one append. A stream
of several channels needs an ``id:`` holding every channel's position, which differs per stream:
the ``event:``/``data:`` part is still encoded once (:data:`SSE_TAGGED`), and the stream prepends
an ``id:`` line with its combined cursor, re-encoded per event: about 1.6 µs plus 0.27 µs per
channel, against 0.2 µs per event for a one-channel stream (``benchmarks/sse_cursor.py``).

The stream opens with ``retry:`` and an ``id:``-only block giving the starting cursor, so a client
that reconnects before its first event still resumes from where it connected; a ``: reset``
comment in that block names each channel whose gap history could not cover, whose ``reset``
event follows.

Long on purpose: the stream and its endpoint share the rules of held events and ``id:`` lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from clarion.asgi import access
from clarion.asgi.access import Params
from clarion.asgi.channelrequest import (
    ChannelEndpoint,
    ChannelRequest,
    authorized,
    channel_request,
    last_event_ids,
    stopped_by_host,
    subscribe_each,
    until_disconnect,
)
from clarion.asgi.pipe import BodyQueue, FastChunkPipe, Pipe, QueuePipe
from clarion.asgitypes import FastStream, Receive, Scope, Send, fast_stream
from clarion.core.fanout import WireFormat, cursor_if_stored, publication_cursor
from clarion.core.hub import Hub
from clarion.core.resume import SubscribeResult
from clarion.core.session import Session
from clarion.protocol import sse
from clarion.protocol.codes import CloseCode, disconnect_for
from clarion.protocol.cursor import Cursor, Positions, channel_tag, encode_single
from clarion.protocol.frames import http_chunk, latest
from clarion.protocol.publication import Publication, StreamPosition

CLOSE_GRACE = 2.0  # seconds a stream closed by the hub gets to write its last event


def _event(pub: Publication) -> bytes:
    event = sse.publication_event(pub, cursor_if_stored(pub))
    if pub.key is not None:  # a keyed signal: a stream that is behind keeps the newest
        return latest(event, pub.slot())
    return event


Tagged = tuple[bytes, StreamPosition | None, bytes]  # channel tag, its new position, event body
# A tagged item's position when its channel leaves the ``id:`` (unsubscribed, not in the URL).
FORGET = StreamPosition("", -1)


def _tagged(pub: Publication) -> Tagged | bytes:
    if pub.ephemeral:
        return _event(pub)  # no position: rendered without an ``id:``
    return (
        channel_tag(pub.channel),
        pub.position,
        sse.publication_body(pub, publication_cursor(pub)),
    )


SSE_EVENT = WireFormat("sse/event", "sse", _event)
SSE_TAGGED = WireFormat("sse/tagged", "sse", _tagged)


def _chunked_event(pub: Publication) -> bytes:
    chunk = http_chunk(pub.encoded(SSE_EVENT, _event))
    if pub.key is not None:  # a keyed signal: a stream that is behind keeps the newest
        return latest(chunk, pub.slot())
    return chunk


# One format per server delivery loop (in practice one): subscribers share each event's chunk.
_CHUNK_FORMATS: dict[Any, WireFormat] = {}


def chunk_format(push_many: Callable[[Any, bytes], None]) -> WireFormat:
    fmt = _CHUNK_FORMATS.get(push_many)
    if fmt is None:
        fmt = _CHUNK_FORMATS[push_many] = WireFormat("sse/chunk", "sse", _chunked_event, push_many)
    return fmt


ID_BYTES_PER_CHANNEL = 32  # of a multi-channel ``id:`` line, base64 of tag, epoch, offset


class SseStream:
    """One stream's transport: encodes events and writes them through its pipe.

    Until the response starts there is no pipe yet: what the subscriptions push (the missed
    history above all) is held, and goes first, on top of the send budget, once it starts. It
    counts as the stream's backlog meanwhile, so a resume's replay stops at the budget
    (:mod:`~clarion.core.pages`): the held part is bounded by it.
    """

    kind = "sse"
    __slots__ = (
        "_beat",
        "_end",
        "_heartbeat",
        "_held",
        "_held_bytes",
        "_loop",
        "_positions",
        "_started",
        "closed",
        "ended",
        "fmt",
        "frame_overhead",
        "opened",
        "peer_gone",
        "pipe",
        "url_tags",
    )

    def __init__(self, channels: int, heartbeat: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.pipe: Pipe | None = None
        self._held: list[bytes | Tagged] = []
        self._held_bytes = 0
        self._end: tuple[int, str] | None = None  # closed before the pipe was there
        self._heartbeat = heartbeat
        self._started = 0.0
        self._beat: asyncio.TimerHandle | None = None
        # Several channels: the stream's own position per channel tag, for its ``id:`` lines.
        self._positions: Positions | None = Positions() if channels > 1 else None
        # What each held event's ``id:`` line will add once rendered, counted with it: it
        # names every channel's position (about 30 bytes each, a 12-character epoch).
        self.frame_overhead = ID_BYTES_PER_CHANNEL * channels if channels > 1 else 0
        self.fmt = SSE_TAGGED if channels > 1 else SSE_EVENT
        self.closed = False
        self.peer_gone = False
        self.ended: asyncio.Future[None] = self._loop.create_future()
        # Set once the stream is written to (or closed): subscriptions the hub makes wait for it.
        self.opened = asyncio.Event()
        # The tags of the channels the request named: they stay in the ``id:`` whatever happens,
        # so that a reconnect with the same URL always finds its channels in the cursor.
        self.url_tags: set[bytes] = set()

    @property
    def push(self) -> Callable[[Any], None]:
        """What its subscriptions push with: made when asked (kept, it would be a cycle)."""
        return self._push_tagged if self._positions is not None else self._push_event

    # ---- Transport ----------------------------------------------------------------------

    @property
    def last_activity(self) -> float:
        # A dead peer shows as a failed write or an http.disconnect, which end the stream.
        return self.pipe.last_activity if self.pipe is not None else time.monotonic()

    def ping(self) -> None:
        if not self.closed:
            self._emit(sse.HEARTBEAT)

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        if self.closed:
            return
        if self._positions is None:
            self._emit(sse.reset_event(channel, reason, cursor, cursor))
            return
        body = sse.reset_event(channel, reason, cursor, None)
        position = Cursor.decode(cursor).get(channel)
        self._emit_tagged((channel_tag(channel), position, body))

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        if not self.closed:
            self._emit(sse.presence_event(kind, event))

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        if self.closed:
            return
        data = sse.unsubscribe_event(channel, reason)
        if self._positions is None:
            self._emit(data)
            return
        tag = channel_tag(channel)
        self._emit_tagged((tag, None if tag in self.url_tags else FORGET, data))

    async def hub_subscribe(
        self, session: Session, channel: str, since: StreamPosition | None, *, server: bool
    ) -> None:
        await self.opened.wait()
        if self.closed:
            return
        self._to_tagged(session)

        def ready(result: SubscribeResult) -> None:
            body = sse.subscribe_event(result.to_dict())
            self._emit_tagged((channel_tag(channel), result.start, body))

        await session.subscribe(
            channel, SSE_TAGGED, self._push_tagged, since=since, on_ready=ready, server=server
        )

    def _to_tagged(self, session: Session) -> None:
        """From now on the stream's ``id:`` holds every channel's position (it gets another).

        What was written keeps its one-channel ids, which are right up to the switch; the
        subscriptions move to the tagged format in the same synchronous step.
        """
        if self._positions is not None:
            return
        hub = session.hub
        positions = Positions()
        for channel in session.subscriptions:
            position = hub.delivered_position(session, channel)
            if position is not None:
                positions[channel_tag(channel)] = position
            hub.reformat(session, channel, SSE_TAGGED, self._push_tagged)
        self._positions = positions
        self.fmt = SSE_TAGGED

    def backlog(self) -> int:
        return self.pipe.backlog() if self.pipe is not None else self._held_bytes

    def cut(self) -> bool:
        return self.pipe is not None and self.pipe.cut

    def watch_overflow(self) -> None:
        if self.pipe is not None:
            self.pipe.watch_overflow()

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        last = None
        if not self.peer_gone:
            last = sse.disconnect_event(code, reason, disconnect_for(code).reconnect)
        if self.pipe is not None:
            self.pipe.close(code, reason, last)
        else:
            # Closed as slow before it started: a replay cut at the budget, whose held part
            # goes out first (it is within the budget) and tells the client where to resume.
            if last is not None:
                self._held.append(last)
            self._end = (code, reason)
        self.opened.set()
        if self._beat is not None:
            self._beat.cancel()
        if not self.ended.done():
            self.ended.set_result(None)

    # ---- events -------------------------------------------------------------------------

    def _push_event(self, event: bytes) -> None:
        if not self.closed:
            self._emit(event)

    def _push_tagged(self, item: Tagged | bytes) -> None:
        if not self.closed:
            if isinstance(item, bytes):  # an ephemeral publication's event
                self._emit(item)
            else:
                self._emit_tagged(item)

    def _emit(self, data: bytes) -> None:
        pipe = self.pipe
        if pipe is None:
            self._held.append(data)
            self._held_bytes += len(data)
        else:
            pipe.send(data)

    def _emit_tagged(self, item: Tagged) -> None:
        pipe = self.pipe
        if pipe is None:
            # Rendered when the stream starts: its ``id:`` then holds every channel the
            # request names, subscribed after this one or not.
            self._held.append(item)
            self._held_bytes += len(item[2]) + self.frame_overhead
        else:
            pipe.send(self._render(item))

    def set_position(self, channel: str, position: StreamPosition) -> None:
        if self._positions is not None:
            self._positions[channel_tag(channel)] = position

    def current_id(self) -> str:
        assert self._positions is not None
        return self._positions.encode()

    def _render(self, item: Tagged) -> bytes:
        """A tagged event with the stream's ``id:`` line as it stands after this event.

        Rendered in push order, the order it is written in.
        """
        positions = self._positions
        assert positions is not None
        tag, position, body = item
        if position is FORGET:
            positions.pop(tag)
        elif position is not None:
            positions[tag] = position
        if not positions:
            return body
        return b"id: %s\n" % positions.encode().encode("ascii") + body

    # ---- the pipe -----------------------------------------------------------------------

    def start(
        self,
        opening: bytes,
        send: Send,
        limit: int,
        fast: Callable[[], FastStream] | None,
        session: Session,
        hub: Hub,
    ) -> Pipe:
        """Stream from now on: ``opening`` first, then what was held while subscribing.

        A one-channel stream goes onto the server's chunk stream (``fast`` opens it, if the
        server offers one): what was held is pushed first, then the subscription switches
        format, in one synchronous step: nothing is lost or reordered.
        """
        render = self._render
        start = opening + b"".join(
            item if isinstance(item, bytes) else render(item) for item in self._held
        )
        self._held = []
        self._held_bytes = 0
        pipe: Pipe | None = None
        if (
            fast is not None
            and self._positions is None
            and not self.closed
            and len(session.subscriptions) == 1
        ):
            stream = fast()
            channel = next(iter(session.subscriptions))
            fmt = chunk_format(stream.push_many)
            if hub.retarget(session, channel, fmt, stream.push, target=stream):
                # The missed history may exceed the limit once, as it was held.
                pipe = FastChunkPipe(stream, limit, send, replay=len(start))
                pipe.push(http_chunk(start))
        if pipe is None:
            queue = BodyQueue(send, limit)
            if self._end is not None:
                queue.close(*self._end, last=start)  # closed while subscribing
            else:
                queue.put_replay(start)
            pipe = queue
        self.pipe = pipe
        self.opened.set()
        self._started = self._loop.time()
        if not self.closed:
            self._beat = self._loop.call_at(self._started + self._heartbeat, self._on_beat)
        return pipe

    def _on_beat(self) -> None:
        if self.closed or self.pipe is None:
            return
        now = self._loop.time()
        due = max(self._started, self.pipe.last_write) + self._heartbeat
        if now >= due - 0.01:
            self.ping()
            self._started = now
            due = now + self._heartbeat
        self._beat = self._loop.call_at(due, self._on_beat)


# ---- the endpoint -------------------------------------------------------------------------


class SseEndpoint(ChannelEndpoint):
    """``GET /sse?channel=A&channel=B`` with ``Last-Event-ID`` or ``cursor=`` to resume."""

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        params: Params,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        hub = self.hub
        # The header is what EventSource sends when it reconnects: it is newer than the query.
        # Where a client cannot set it (EventSource polyfills over XHR, Mercure's clients), it
        # sends the same in the query: newer than cursor=, which is the page's first.
        last, in_query = access.header(scope, b"last-event-id"), last_event_ids(params)
        tokens = [last] if last else in_query or params.get("cursor", [])
        request = await authorized(hub, channel_request(hub, scope, params, tokens), "sse")
        stream = SseStream(len(request.channels), hub.settings.sse.heartbeat)
        stream.url_tags = {channel_tag(channel) for channel in request.channels}
        session = hub.open_session(stream, request.credentials, access.client_address(hub, scope))
        pipe: Pipe | None = None
        try:
            try:
                opening = await self._subscribe(session, stream, request)
            except BaseException:
                stream.peer_gone = True  # nothing was sent: no disconnect event either
                raise
            headers = [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *cors,
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            fast = fast_stream(scope)
            limit = hub.settings.limits.send_queue_bytes
            pipe = stream.start(opening, send, limit, fast, session, hub)
            pipe.on_overflow = lambda: hub.overflow(session)
            hub.subscribe_claimed(session)  # runs once the stream is open
            await self._stream(stream, pipe, receive, session)
        finally:
            session.close(CloseCode.NORMAL)
            if pipe is not None:
                await pipe.stop()
                pipe.release()

    @staticmethod
    async def _stream(stream: SseStream, pipe: Pipe, receive: Receive, session: Session) -> None:
        """Write until the hub closes the stream or the client goes away."""
        watcher = asyncio.create_task(until_disconnect(receive), name="clarion-sse-watcher")
        waits: set[asyncio.Future[Any]] = {watcher, stream.ended}
        if isinstance(pipe, QueuePipe):
            waits.add(pipe.done)
        try:
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                stopped_by_host(session)  # its disconnect event goes out below
            if watcher.done() or (isinstance(pipe, QueuePipe) and pipe.lost):
                stream.peer_gone = True
            else:
                # The hub closed the stream: what was pushed goes before the end of the
                # response, unless the reader does not take it within the grace period.
                await pipe.finish(CLOSE_GRACE)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _subscribe(
        self, session: Session, stream: SseStream, request: ChannelRequest
    ) -> bytes:
        """Subscribe every channel; returns the stream's opening (``retry:`` and first ``id:``)."""
        session.take_subscriptions(len(request.channels))  # all or none: 429, Retry-After
        started: dict[str, StreamPosition] = {}
        resets: dict[str, str] = {}
        # Every channel resumed is in the stream's id from the start, at its cursor: an event
        # written before a later channel is subscribed (a replay cut short by the send budget,
        # say) must not leave that channel out, or a reconnect with its id starts it from now.
        for channel in request.channels:
            since = request.since[channel]
            if since is not None:
                stream.set_position(channel, since)

        async def subscribe(channel: str) -> None:
            def ready(result: SubscribeResult) -> None:
                # Resumed: the stream is at ``since`` until the replayed events pass it; with
                # ``latest``, just before the newest publication, which comes next.
                started[channel] = result.start
                stream.set_position(channel, result.start)
                if result.reset is not None:
                    resets[channel] = result.reset

            await session.subscribe(
                channel,
                stream.fmt,
                stream.push,
                since=request.since[channel],
                latest=channel in request.latest,
                on_ready=ready,
                checked=True,
                prepaid=True,
            )

        await subscribe_each(self.hub, request.channels, subscribe, lambda: session.closed)
        opening = sse.encode_retry(self.hub.settings.sse.retry_ms)
        if session.closed or len(started) < len(request.channels):
            return opening
        if len(request.channels) == 1:
            position = started[request.channels[0]]
            first = encode_single(request.channels[0], position.epoch, position.offset)
        else:
            first = stream.current_id()
        # An id with no data sets the client's last event id without dispatching an event. The
        # resets go in the same block, before anything of any channel: a client learns whether
        # each subscription recovered as it opens, however the bytes after it are split.
        marks = b"".join(sse.reset_mark(channel, reason) for channel, reason in resets.items())
        return opening[:-1] + marks + sse.id_line(first) + b"\n"
