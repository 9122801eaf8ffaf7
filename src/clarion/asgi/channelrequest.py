"""What ``/sse`` and ``/poll`` share: reading the channels, cursor and credentials of a request,
CORS preflight, and JSON errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from clarion.asgi import access
from clarion.asgi.access import Params
from clarion.asgi.responses import send_error
from clarion.asgitypes import Receive, Scope, Send
from clarion.core.auth import Credentials
from clarion.core.hub import Hub
from clarion.core.session import Session
from clarion.errors import BadCursor, BadRequest, ClarionError, MethodNotAllowed
from clarion.protocol.channels import validate_channel
from clarion.protocol.codes import CloseCode
from clarion.protocol.cursor import Cursor, channel_tag
from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import StreamPosition

ALLOWED_HEADERS = b"authorization, cache-control, last-event-id, if-none-match"


class ChannelRequest:
    """The channels a request reads, who reads them, and where each one resumes (``None``: now)."""

    __slots__ = ("channels", "credentials", "given", "latest", "since")

    def __init__(
        self,
        channels: list[str],
        credentials: Credentials,
        since: dict[str, StreamPosition | None],
        latest: frozenset[str] = frozenset(),
        given: str | None = None,
    ) -> None:
        self.channels = channels
        self.credentials = credentials
        self.since = since
        # The one cursor the request gave, when it holds exactly its channels' positions.
        self.given = given
        # The channels that, starting from now, get their newest stored publication first.
        self.latest = latest


def query_params(hub: Hub, scope: Scope) -> Params:
    """A channel request's parameters: at most as many as any valid request has (a ``channel``
    and a ``cursor`` for each channel, and a few more)."""
    cap = hub.settings.limits.max_subscriptions_per_connection
    return access.query_params(scope, 2 * cap + 16, too_many_channels(cap))


def too_many_channels(cap: int) -> BadRequest:
    return BadRequest(
        f"at most {cap} channels per request", code=ErrorCode.TOO_MANY_CHANNELS, limit=cap
    )


LAST_EVENT_ID_PARAMS = ("lastEventID", "lastEventId")  # Mercure's spelling, the polyfills'


def last_event_ids(params: Params) -> list[str]:
    """``Last-Event-ID`` carried in the query, under either name it is sent as: one value, as
    the header has (two are refused, as any repeated parameter)."""
    given = [value for name in LAST_EVENT_ID_PARAMS for value in params.get(name, ())]
    if len(given) > 1:
        raise BadRequest("Last-Event-ID given more than once in the query")
    return given


def read_channels(hub: Hub, params: Params) -> list[str]:
    names = params.get("channel")
    if not names:
        raise BadRequest("query parameter 'channel' is required (repeat it for several)")
    channels = list(dict.fromkeys(names))  # repeated names count once, first order kept
    cap = hub.settings.limits.max_subscriptions_per_connection
    if len(channels) > cap:
        raise too_many_channels(cap)
    each_about(channels, validate_channel)
    return channels


def resume_positions(tokens: list[str], channels: list[str]) -> dict[str, StreamPosition | None]:
    """Each channel's position in the cursors ``tokens``; channels they do not hold start from
    now. Where several hold a channel, the later one wins.

    A cursor holding none of the channels was made for another request: refused, like any
    cursor that cannot be read, and the refusal gives it back (``"cursor"`` in the error) so
    that a client that sent several knows which one to drop. One holding some of them resumes
    those (a client may add a channel to its stream between reconnects, giving the new
    channel's own cursor after the stream's).
    """
    return _resume(tokens, channels)[0]


def _resume(
    tokens: list[str], channels: list[str]
) -> tuple[dict[str, StreamPosition | None], str | None]:
    """:func:`resume_positions`, and the one cursor given when it holds exactly the channels
    and nothing else: a reply that moves no channel can give it back as it came."""
    since: dict[str, StreamPosition | None] = dict.fromkeys(channels)
    exact = len(tokens) == 1
    # Each channel's tag once, and each cursor's entries looked up in them: the work is as long
    # as the query, not its channels times its cursors (a digest for each pair, 18,000 of them
    # in one request within the caps).
    named = {channel_tag(channel): channel for channel in channels}
    for token in tokens:
        if token == "":
            continue
        try:
            cursor = Cursor.decode(token)
        except BadCursor as exc:
            exc.details["cursor"] = token
            raise
        held = 0
        for tag, position in cursor.entries():
            channel = named.get(tag)
            if channel is not None:
                since[channel] = position
                held += 1
        if not held:
            raise BadCursor("a cursor holds no position for the requested channels", cursor=token)
        exact = exact and held == len(channels) == len(cursor)
    return since, (tokens[0] if exact and tokens[0] else None)


def each_about(channels: list[str], check: Callable[[str], object]) -> None:
    """``check`` each channel, an error naming the channel it was raised for, as :func:`about`
    does: without a context manager per channel (a wide request names 128 of them)."""
    channel = ""
    try:
        for channel in channels:
            check(channel)
    except ClarionError as exc:
        exc.details.setdefault("channel", channel)
        raise


@contextmanager
def about(channel: str) -> Iterator[None]:
    """An error raised for one channel of a request names it (``"channel"`` in the error), so
    that a client reading several on one stream knows which one to drop."""
    try:
        yield
    except ClarionError as exc:
        exc.details.setdefault("channel", channel)
        raise


async def subscribe_each(
    hub: Hub,
    channels: list[str],
    subscribe: Callable[[str], Awaitable[object]],
    done: Callable[[], bool],
) -> None:
    """``subscribe(channel)`` for each of a request's channels, an error naming its channel.

    In process one after another, until ``done()`` (each completes without waiting). On a
    remote engine (Redis) all at once, so that their round trips share pipelines: one after
    another, a 128-channel stream or long poll waited on 128 times as many. The first error
    is raised once all are through; what the others made, the session's close undoes.
    """

    async def one(channel: str) -> None:
        with about(channel):
            await subscribe(channel)

    if hub.publishes_inline:
        for channel in channels:
            await one(channel)
            if done():
                return
        return
    for outcome in await asyncio.gather(*map(one, channels), return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


# The parameters a request may repeat: a stream reads several channels, and merges cursors.
REPEATABLE = frozenset({"channel", "cursor", "latest"})


def channel_request(hub: Hub, scope: Scope, params: Params, tokens: list[str]) -> ChannelRequest:
    """Validate a request; raises a :class:`ClarionError` before anything is sent."""
    if "since" in params:
        # The WebSocket op's and the history API's name: ignored here, the stream would start
        # from now, and the client would not be told it did not resume.
        raise BadRequest("/sse and /poll resume from cursor=, not since=")
    for name, values in params.items():
        if len(values) > 1 and name not in REPEATABLE:
            # Which one would count is a guess the client should not have to make.
            raise BadRequest(f"query parameter {name!r} given more than once")
    channels = read_channels(hub, params)
    credentials = access.credentials_for(hub, scope, params)
    each_about(channels, lambda channel: hub.auth.check_subscribe(credentials, channel))
    since, given = _resume(tokens, channels)
    return ChannelRequest(channels, credentials, since, read_latest(params, channels), given)


def read_latest(params: Params, channels: list[str]) -> frozenset[str]:
    """``latest=1`` (or ``true``): every channel; ``latest=<channel>``, repeatable: those of the
    request's channels (a client reading several on one stream, where only some ask for it)."""
    values = params.get("latest", [])
    if len(values) == 1 and values[0] in ("0", "1", "true", "false"):
        return frozenset(channels) if values[0] in ("1", "true") else frozenset()
    named = set(values)
    if not named <= set(channels):
        raise BadRequest("latest must be 1, true, 0, false or channels of the request")
    return frozenset(named)


async def authorized(hub: Hub, request: ChannelRequest, transport: str) -> ChannelRequest:
    """The request as the hooks see it: the connect hook's credentials, every channel read
    allowed by them (the subscribe hook asked once here, not again when subscribing)."""
    if hub.hooks is None:
        return request
    credentials = await hub.authenticate(request.credentials, transport)
    for channel in request.channels:
        with about(channel):
            await hub.authorize_read(credentials, channel, transport)
    request.credentials = credentials
    return request


async def refuse(
    hub: Hub, send: Send, exc: ClarionError, headers: list[tuple[bytes, bytes]]
) -> None:
    """Count ``exc`` and answer it (before any response has started)."""
    hub.stats.errors[exc.code] += 1
    await send_error(send, exc, headers)


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def stopped_by_host(session: Session) -> None:
    """The server cancelled a stream or a long poll that was waiting: it is stopping without
    telling the app first (uvicorn's ``--timeout-graceful-shutdown``), before the hub's own
    shut-down. The request is answered as that shut-down would answer it (4000: reconnect
    elsewhere), not ended by an error and a traceback; the cancellation is taken back, as the
    request now ends by itself, at once."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    session.close(CloseCode.SHUTDOWN)


class ChannelEndpoint:
    """A raw ASGI endpoint reading channels: methods, origin, CORS preflight and errors."""

    METHODS: tuple[str, ...] = ("GET",)  # besides OPTIONS, the preflight's

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        hub = self.hub
        method = scope["method"]
        cors = access.cors_headers(hub, scope)
        try:
            access.check_origin(hub, scope)
            if method == "OPTIONS":
                await self.preflight(send, cors)
                return
            if method not in self.METHODS:
                allow = ", ".join((*self.METHODS, "OPTIONS"))
                raise MethodNotAllowed(f"{method} is not allowed here", allow=allow)
            if hub.closing:
                raise ClarionError("the hub is shutting down", code=ErrorCode.SHUTTING_DOWN)
            params = query_params(hub, scope)
            await self.serve(scope, receive, send, params, cors)
        except ClarionError as exc:
            # ``serve`` raises only before it starts its response.
            await refuse(hub, send, exc, cors)

    async def preflight(self, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        headers = [
            *cors,
            (b"access-control-allow-methods", ", ".join((*self.METHODS, "OPTIONS")).encode()),
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
