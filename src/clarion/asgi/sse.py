"""``GET /sse``: Server-Sent Events streams, one core session per stream.

A stream subscribes its channels through the core (history, resume and reset included), then
writes what the fan-out pushes. Pushes are synchronous appends into a bounded queue; a writer task
drains it into ``http.response.body`` chunks, one per batch. The endpoint coroutine watches
``receive()`` for ``http.disconnect`` so a client that goes away is cleaned up at once.

Event ids. A stream of one channel uses each publication's own cursor as its ``id:``, so its
events are the same bytes for every such stream: they are encoded once per publication
(:data:`SSE_EVENT`, memoised on the publication) and the per-stream cost is one append. A stream
of several channels needs an ``id:`` holding every channel's position, which differs per stream:
the ``event:``/``data:`` part is still encoded once (:data:`SSE_TAGGED`), and the writer prepends
an ``id:`` line with the stream's combined cursor, re-encoded per event: about 1.6 µs plus
0.27 µs per channel, against 0.2 µs per event for a one-channel stream
(``benchmarks/sse_cursor.py``).

The stream opens with ``retry:`` and an ``id:``-only block giving the starting cursor, so a client
that reconnects before its first event still resumes from where it connected.

The module also holds what ``/sse`` and ``/poll`` share: reading the channels, cursor and
credentials of a request, CORS preflight, and JSON errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qs

import orjson

from clarion.asgi import access
from clarion.core.auth import Credentials
from clarion.core.fanout import WireFormat, cursor_if_stored, publication_cursor
from clarion.core.hub import Hub
from clarion.core.session import Session, SubscribeResult
from clarion.errors import BadCursor, BadRequest, ClarionError, Forbidden
from clarion.protocol import sse
from clarion.protocol.channels import validate_channel
from clarion.protocol.codes import CloseCode, disconnect_for
from clarion.protocol.cursor import Cursor, channel_tag, encode_entries, encode_single
from clarion.protocol.frames import http_chunk, latest
from clarion.protocol.publication import Publication, StreamPosition

log = logging.getLogger("clarion.sse")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Params = dict[str, list[str]]

CLOSE_GRACE = 2.0  # seconds a stream closed by the hub gets to write its last event
ID_ALLOWANCE = 64  # bytes counted for the per-stream ``id:`` line of a queued tagged event
ALLOWED_HEADERS = b"authorization, cache-control, last-event-id, if-none-match"


# ---- what /sse and /poll share ------------------------------------------------------------


class ChannelRequest:
    """The channels a request reads, who reads them, and where each one resumes (``None``: now)."""

    __slots__ = ("channels", "credentials", "latest", "since")

    def __init__(
        self,
        channels: list[str],
        credentials: Credentials,
        since: dict[str, StreamPosition | None],
        latest: bool = False,
    ) -> None:
        self.channels = channels
        self.credentials = credentials
        self.since = since
        # ``latest=1``: channels starting from now get their newest stored publication first.
        self.latest = latest


def query_params(hub: Hub, scope: Scope) -> Params:
    cap = hub.settings.limits.max_subscriptions_per_connection
    raw = scope.get("query_string", b"")
    try:
        return parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=cap + 16)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8") from None
    except ValueError:  # more fields than any valid request has
        raise BadRequest(f"at most {cap} channels per request", code="too_many_channels") from None


def single_param(params: Params, name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} given more than once")
    return values[0]


def read_channels(hub: Hub, params: Params) -> list[str]:
    names = params.get("channel")
    if not names:
        raise BadRequest("query parameter 'channel' is required (repeat it for several)")
    channels = list(dict.fromkeys(names))  # repeated names count once, first order kept
    cap = hub.settings.limits.max_subscriptions_per_connection
    if len(channels) > cap:
        raise BadRequest(f"at most {cap} channels per request", code="too_many_channels")
    for name in channels:
        validate_channel(name)
    return channels


def resume_positions(token: str | None, channels: list[str]) -> dict[str, StreamPosition | None]:
    """Each channel's position in ``token``; channels it does not hold start from now.

    A cursor holding none of the channels was made for another request: refused, like any
    cursor that cannot be read. One holding some of them resumes those (a client may add a
    channel to its stream between reconnects).
    """
    if token is None or token == "":
        return dict.fromkeys(channels)
    cursor = Cursor.decode(token)
    since = {channel: cursor.get(channel) for channel in channels}
    if all(position is None for position in since.values()):
        raise BadCursor("the cursor holds no position for the requested channels")
    return since


def channel_request(hub: Hub, scope: Scope, params: Params, token: str | None) -> ChannelRequest:
    """Validate a request; raises a :class:`ClarionError` before anything is sent."""
    channels = read_channels(hub, params)
    credentials = access.credentials_for(hub, scope)
    for channel in channels:
        hub.auth.check_subscribe(credentials, channel)
    latest = single_param(params, "latest")
    if latest not in (None, "0", "1", "true", "false"):
        raise BadRequest("latest must be 1, true, 0 or false")
    return ChannelRequest(
        channels, credentials, resume_positions(token, channels), latest in ("1", "true")
    )


async def authorized(hub: Hub, request: ChannelRequest, transport: str) -> ChannelRequest:
    """The request as the hooks see it: the connect hook's credentials, every channel read
    allowed by them (the subscribe hook asked once here, not again when subscribing)."""
    if hub.hooks is None:
        return request
    credentials = await hub.authenticate(request.credentials, transport)
    for channel in request.channels:
        await hub.authorize_read(credentials, channel, transport)
    request.credentials = credentials
    return request


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    hub: Hub, send: Send, exc: ClarionError, headers: list[tuple[bytes, bytes]]
) -> None:
    hub.stats.errors[exc.code] += 1
    await send_json(send, exc.status, orjson.dumps({"error": exc.to_dict()}), headers)


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ChannelEndpoint:
    """A raw ASGI endpoint reading channels: methods, origin, CORS preflight and errors."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        hub = self.hub
        method = scope["method"]
        cors = access.cors_headers(hub, scope)
        try:
            if not access.origin_allowed(hub, scope):
                raise Forbidden("origin not allowed", code="origin_forbidden")
            if method == "OPTIONS":
                await self.preflight(send, cors)
                return
            if method != "GET":
                raise ClarionError(f"{method} is not allowed here", code="method_not_allowed")
            if hub.closing:
                raise ClarionError("the hub is shutting down", code="shutting_down")
            params = query_params(hub, scope)
            await self.serve(scope, receive, send, params, cors)
        except ClarionError as exc:
            # ``serve`` raises only before it starts its response.
            await send_error(hub, send, exc, cors)

    async def preflight(self, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        headers = [
            *cors,
            (b"access-control-allow-methods", b"GET, OPTIONS"),
            (b"access-control-allow-headers", ALLOWED_HEADERS),
            (b"access-control-max-age", b"600"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        params: Params,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        raise NotImplementedError


# ---- the stream ---------------------------------------------------------------------------


def _event(pub: Publication) -> bytes:
    return sse.publication_event(pub, cursor_if_stored(pub))


Tagged = tuple[bytes, StreamPosition | None, bytes]  # channel tag, its new position, event body
# The position of a tagged item whose channel leaves the stream's ``id:`` (a channel the hub
# unsubscribed that the stream's URL does not name).
FORGET = StreamPosition("", -1)


def _tagged(pub: Publication) -> Tagged | bytes:
    if pub.ephemeral:
        return sse.publication_body(pub, None)  # no position: rendered without an ``id:``
    return (
        channel_tag(pub.channel),
        pub.position,
        sse.publication_body(pub, publication_cursor(pub)),
    )


SSE_EVENT = WireFormat("sse/event", "sse", _event)
SSE_TAGGED = WireFormat("sse/tagged", "sse", _tagged)
FAST_STREAM = "clarion.fast_stream"


def _chunked_event(pub: Publication) -> bytes:
    chunk = http_chunk(pub.encoded(SSE_EVENT, _event))
    if pub.key is not None:  # a keyed signal: a stream that is behind keeps the newest
        return latest(chunk, (pub.channel, pub.key))
    return chunk


# One format per server delivery loop (in practice one): subscribers share each event's chunk.
_CHUNK_FORMATS: dict[Any, WireFormat] = {}


def chunk_format(push_many: Callable[[Any, bytes], None]) -> WireFormat:
    fmt = _CHUNK_FORMATS.get(push_many)
    if fmt is None:
        fmt = _CHUNK_FORMATS[push_many] = WireFormat("sse/chunk", "sse", _chunked_event, push_many)
    return fmt


class SseStream:
    """One stream's transport: a bounded queue of events and the writer that drains it."""

    kind = "sse"
    __slots__ = (
        "_beat",
        "_extra",
        "_fast",
        "_heartbeat",
        "_last_write",
        "_limit",
        "_loop",
        "_overflowed",
        "_positions",
        "_queue",
        "_queued",
        "_ready",
        "closed",
        "ended",
        "fmt",
        "on_overflow",
        "opened",
        "peer_gone",
        "push",
        "url_tags",
    )

    def __init__(self, channels: int, limit: int, heartbeat: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: deque[bytes | Tagged] = deque()
        self._queued = 0
        self._limit = limit
        # While subscribing, the queue takes the whole missed history (bounded by the history
        # size): that replay is allowed on top of the limit, and shrinks as it is written.
        self._extra: float = float("inf")
        self._heartbeat = heartbeat
        self._last_write = self._loop.time()
        self._beat: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        # Several channels: the stream's own position per channel tag, for its ``id:`` lines.
        self._positions: dict[bytes, StreamPosition] | None = {} if channels > 1 else None
        self.fmt = SSE_TAGGED if channels > 1 else SSE_EVENT
        self.push: Callable[[Any], None] = self._push_tagged if channels > 1 else self._push_event
        self.on_overflow: Callable[[], None] = lambda: None
        self._overflowed = False
        # The server's chunk stream, once a one-channel stream runs on the fast path: events
        # then go straight into the connection's write buffer, shared by every subscriber.
        self._fast: Any = None
        self.closed = False
        self.peer_gone = False
        self.ended: asyncio.Future[None] = self._loop.create_future()
        # Set once the stream is written to (or closed): subscriptions the hub makes wait for it.
        self.opened = asyncio.Event()
        # The tags of the channels the request named: they stay in the ``id:`` whatever happens,
        # so that a reconnect with the same URL always finds its channels in the cursor.
        self.url_tags: set[bytes] = set()

    # ---- Transport ----------------------------------------------------------------------

    @property
    def last_activity(self) -> float:
        # A dead peer shows as a failed write or an http.disconnect, which end the stream.
        return time.monotonic()

    def ping(self) -> None:
        if not self.closed:
            self._enqueue(sse.HEARTBEAT, len(sse.HEARTBEAT))

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        if self.closed:
            return
        if self._positions is None:
            event = sse.reset_event(channel, reason, cursor, cursor)
            self._enqueue(event, len(event))
            return
        body = sse.reset_event(channel, reason, cursor, None)
        position = Cursor.decode(cursor).get(channel)
        self._enqueue((channel_tag(channel), position, body), len(body) + ID_ALLOWANCE)

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        if not self.closed:
            data = sse.presence_event(kind, event)
            self._enqueue(data, len(data))

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        if self.closed:
            return
        data = sse.unsubscribe_event(channel, reason)
        if self._positions is None:
            self._enqueue(data, len(data))
            return
        tag = channel_tag(channel)
        self._enqueue((tag, None if tag in self.url_tags else FORGET, data), len(data))

    async def hub_subscribe(
        self, session: Session, channel: str, since: StreamPosition | None, *, server: bool
    ) -> None:
        await self.opened.wait()
        if self.closed:
            return
        self._to_tagged(session)

        def ready(result: SubscribeResult) -> None:
            start = since if since is not None and result.recovered else result.position
            body = sse.subscribe_event(result.to_dict())
            self._enqueue((channel_tag(channel), start, body), len(body) + ID_ALLOWANCE)

        await session.subscribe(
            channel, SSE_TAGGED, self._push_tagged, since=since, on_ready=ready, server=server
        )

    def _to_tagged(self, session: Session) -> None:
        """From now on the stream's ``id:`` holds every channel's position (it gets another).

        What is queued keeps its one-channel ids, which are right up to the switch; the
        subscriptions move to the tagged format in the same synchronous step.
        """
        if self._positions is not None:
            return
        hub = session.hub
        positions: dict[bytes, StreamPosition] = {}
        for channel in session.subscriptions:
            position = hub.delivered_position(session, channel)
            if position is not None:
                positions[channel_tag(channel)] = position
            hub.reformat(session, channel, SSE_TAGGED, self._push_tagged)
        self._positions = positions
        self.fmt = SSE_TAGGED
        self.push = self._push_tagged

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        if code == CloseCode.SLOW:
            # What is queued cannot reach this reader in time; it resumes from its last id.
            self._queue.clear()
            self._queued = 0
            if self._fast is not None:
                self._fast.drop_pending()
        if not self.peer_gone:
            event = sse.disconnect_event(code, reason, disconnect_for(code).reconnect)
            if self._fast is not None:
                self._fast.push(http_chunk(event))
            else:
                self._queue.append(event)
        self.closed = True
        self._ready.set()
        self.opened.set()
        if self._beat is not None:
            self._beat.cancel()
        if not self.ended.done():
            self.ended.set_result(None)

    # ---- queue --------------------------------------------------------------------------

    def _push_event(self, event: bytes) -> None:
        if not self.closed:
            self._enqueue(event, len(event))

    def _push_tagged(self, item: Tagged | bytes) -> None:
        if not self.closed:
            if isinstance(item, bytes):  # an ephemeral publication's event
                self._enqueue(item, len(item))
            else:
                self._enqueue(item, len(item[2]) + ID_ALLOWANCE)

    def _enqueue(self, item: bytes | Tagged, size: int) -> None:
        if self._fast is not None:
            # A tagged item's id is rendered now: in push order, as the writer would.
            self._fast.push(http_chunk(item if isinstance(item, bytes) else self._render(item)))
            return
        self._queue.append(item)
        self._queued += size
        self._ready.set()
        if self._queued > self._limit + self._extra and not self._overflowed:
            self._overflowed = True
            # Not now: this runs inside the fan-out loop, which the policy may change.
            self._loop.call_soon(self.on_overflow)

    def backlog(self) -> int:
        if self._fast is not None:
            return int(self._fast.buffered_bytes)
        return self._queued

    def watch_overflow(self) -> None:
        self._overflowed = False
        if self._fast is not None:
            self._fast.set_send_limit(self._limit, self.on_overflow)

    def set_position(self, channel: str, position: StreamPosition) -> None:
        if self._positions is not None:
            self._positions[channel_tag(channel)] = position

    def current_id(self) -> str:
        assert self._positions is not None
        return encode_entries(self._positions.items())

    def _take(self) -> bytes:
        queue = self._queue
        positions = self._positions
        if positions is None:
            chunk = b"".join(cast("deque[bytes]", queue))
        else:
            render = self._render
            chunk = b"".join(item if isinstance(item, bytes) else render(item) for item in queue)
        queue.clear()
        self._queued = 0
        return chunk

    def _render(self, item: Tagged) -> bytes:
        """A tagged event with the stream's ``id:`` line as it stands after this event."""
        positions = self._positions
        assert positions is not None
        tag, position, body = item
        if position is FORGET:
            positions.pop(tag, None)
        elif position is not None:
            positions[tag] = position
        if not positions:
            return body
        return b"id: %s\n" % encode_entries(positions.items()).encode("ascii") + body

    # ---- writer -------------------------------------------------------------------------

    def start(self, opening: bytes) -> None:
        """Stream from now on: ``opening`` first, then what was queued while subscribing."""
        self._queue.appendleft(opening)
        self._extra = self._queued
        self._ready.set()
        self.opened.set()
        self._last_write = self._loop.time()
        if not self.closed:
            self._beat = self._loop.call_at(self._last_write + self._heartbeat, self._on_beat)

    def go_fast(self, stream: Any, session: Session, hub: Hub) -> bool:
        """Move a one-channel stream onto the server's chunk stream; ``False`` if it cannot.

        What is queued (the opening and the replayed history) is pushed first, then the
        subscription switches format, in one synchronous step: nothing is lost or reordered.
        """
        if self._positions is not None or self.closed or len(session.subscriptions) != 1:
            return False
        channel = next(iter(session.subscriptions))
        fmt = chunk_format(stream.push_many)
        if not hub.retarget(session, channel, fmt, stream.push, target=stream):
            return False
        replay = self._queued  # the missed history may exceed the limit once, as queued
        if self._queue:
            stream.push(http_chunk(self._take()))
        self._fast = stream
        self.push = stream.push
        stream.set_send_limit(self._limit + replay, self.on_overflow)
        return True

    def _on_beat(self) -> None:
        if self.closed:
            return
        now = self._loop.time()
        due = self._last_write + self._heartbeat
        if now >= due - 0.01:
            self.ping()
            due = now + self._heartbeat
        self._beat = self._loop.call_at(due, self._on_beat)

    async def pump(self, send: Send) -> None:
        try:
            while True:
                if not self._queue:
                    if self.closed:
                        break
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                chunk = self._take()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._last_write = self._loop.time()
                self._extra = max(0, self._extra - len(chunk))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self.peer_gone = True  # the endpoint sees this task end and closes the session


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
        token = access.header(scope, b"last-event-id") or single_param(params, "cursor")
        request = await authorized(hub, channel_request(hub, scope, params, token), "sse")
        stream = SseStream(
            len(request.channels), hub.settings.limits.send_queue_bytes, hub.settings.sse.heartbeat
        )
        stream.url_tags = {channel_tag(channel) for channel in request.channels}
        session = hub.open_session(stream, request.credentials, access.client_address(hub, scope))

        stream.on_overflow = lambda: hub.overflow(session)
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
            stream.start(opening)
            fast = scope.get("extensions", {}).get(FAST_STREAM)
            hub.subscribe_claimed(session)  # runs once the stream is open (go_fast is first)
            if fast is not None and stream.go_fast(fast["open"](), session, hub):
                await self._fast_stream(stream, receive, send)
            else:
                await self._stream(stream, receive, send)
        finally:
            hub.close_session(session, CloseCode.NORMAL)

    @staticmethod
    async def _fast_stream(stream: SseStream, receive: Receive, send: Send) -> None:
        """Events go straight to the connection; wait for the end, whichever side ends it."""
        watcher = asyncio.create_task(until_disconnect(receive), name="clarion-sse-watcher")
        try:
            await asyncio.wait((watcher, stream.ended), return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                stream.peer_gone = True
            else:
                # The hub closed the stream: what was pushed is written before the last chunk,
                # unless the reader does not take it within the grace period (a slow reader).
                last = send({"type": "http.response.body", "body": b"", "more_body": False})
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(last, CLOSE_GRACE)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    @staticmethod
    async def _stream(stream: SseStream, receive: Receive, send: Send) -> None:
        """Write until the hub closes the stream or the client goes away."""
        writer = asyncio.create_task(stream.pump(send), name="clarion-sse-writer")
        watcher = asyncio.create_task(until_disconnect(receive), name="clarion-sse-watcher")
        try:
            await asyncio.wait((writer, watcher, stream.ended), return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                stream.peer_gone = True
            elif not writer.done():
                # The hub closed the stream: let the writer send what it can, then cut it.
                await asyncio.wait(
                    (writer, watcher), timeout=CLOSE_GRACE, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            writer.cancel()
            watcher.cancel()
            await asyncio.gather(writer, watcher, return_exceptions=True)
            if not writer.cancelled() and writer.exception() is not None:
                log.error("SSE writer failed", exc_info=writer.exception())

    async def _subscribe(
        self, session: Session, stream: SseStream, request: ChannelRequest
    ) -> bytes:
        """Subscribe every channel; returns the stream's opening (``retry:`` and first ``id:``)."""
        started: dict[str, StreamPosition] = {}
        for channel in request.channels:
            since = request.since[channel]

            def ready(
                result: SubscribeResult,
                channel: str = channel,
                since: StreamPosition | None = since,
            ) -> None:
                # Resumed: the stream is at ``since`` until the replayed events pass it.
                position = since if since is not None and result.recovered else result.position
                started[channel] = position
                stream.set_position(channel, position)

            await session.subscribe(
                channel,
                stream.fmt,
                stream.push,
                since=since,
                latest=request.latest,
                on_ready=ready,
                checked=True,
            )
            if session.closed:
                break
        opening = sse.encode_retry(self.hub.settings.sse.retry_ms)
        if session.closed or len(started) < len(request.channels):
            return opening
        if len(request.channels) == 1:
            position = started[request.channels[0]]
            first = encode_single(request.channels[0], position.epoch, position.offset)
        else:
            first = stream.current_id()
        # An id with no data sets the client's last event id without dispatching an event.
        return opening[:-1] + sse.id_line(first) + b"\n"
