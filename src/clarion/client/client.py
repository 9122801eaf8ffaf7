"""The async client: `async with connect(url) as c`, then subscribe, publish, history, presence.

Long on purpose: this is the client's whole public surface, each method a few lines handing
over to its transport (:mod:`clarion.client.websocket`, :mod:`clarion.client.shared`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, NoReturn

from clarion.client.api import HttpApi
from clarion.client.backoff import Backoff
from clarion.client.bounds import MAX_EVENT_BYTES, MAX_REPLY_BYTES, ReadLimits
from clarion.client.endpoints import Endpoints
from clarion.client.errors import (
    ClientClosed,
    ConnectFailed,
    ConnectionLost,
    Disconnected,
    RequestFailed,
    TransportUnavailable,
)
from clarion.client.items import History, Member, PresenceStats, PresentUser, Published
from clarion.client.poll import LEAVE_TIMEOUT, leave_poll, open_poll
from clarion.client.shared import SharedStream
from clarion.client.streams import StreamContext
from clarion.client.subscription import Feed, Subscription
from clarion.client.tokens import Tokens, TokenSource
from clarion.client.websocket import WebSocketLink
from clarion.errors import BadCursor, ClarionError
from clarion.protocol.channels import validate_channel
from clarion.protocol.cursor import Cursor
from clarion.protocol.errors import ErrorCode
from clarion.protocol.messages import Command
from clarion.tasks import stop

log = logging.getLogger("clarion.client")

TransportName = Literal["auto", "ws", "sse", "poll"]
TRANSPORTS: tuple[TransportName, ...] = ("auto", "ws", "sse", "poll")
MAX_POLL_TIMEOUT = 60.0
SSE_READ_TIMEOUT = 45.0  # three missed heartbeats (the hub sends one every 15 s)


class Client:
    """A connection to a clarion hub; see :func:`connect`."""

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource = None,
        api_key: str | None = None,
        transport: TransportName = "auto",
        backoff: Backoff | None = None,
        queue_size: int = 1024,
        open_timeout: float | None = 10.0,
        request_timeout: float = 10.0,
        poll_timeout: float = 25.0,
        max_message_bytes: int | None = 65536,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if (open_timeout is not None and not open_timeout > 0) or not request_timeout > 0:
            raise ValueError("timeouts must be positive")
        if not 0 < poll_timeout <= MAX_POLL_TIMEOUT:
            raise ValueError(f"poll_timeout must be more than 0 and at most {MAX_POLL_TIMEOUT}")
        self.endpoints = Endpoints.parse(url)
        self._tokens = Tokens(token, timeout=request_timeout)
        self._api_key = api_key
        self._option: TransportName = transport
        self._backoff = backoff if backoff is not None else Backoff()
        self._queue_size = queue_size
        self._open_timeout = open_timeout
        self._request_timeout = request_timeout
        self._poll_timeout = poll_timeout
        self._max_message_bytes = max_message_bytes
        self._limits = ReadLimits(max_event_bytes, max_reply_bytes)
        self._mode: TransportName | None = transport if transport in ("sse", "poll") else None
        self._state: Literal["new", "open", "closed"] = "new"
        self._error: ClarionError | None = None
        self._feeds: dict[str, Feed] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._deciding = asyncio.Lock()
        self._api: HttpApi | None = None
        self._link: WebSocketLink | None = None
        self._hub_made: asyncio.Queue[Subscription] | None = None
        self._stream: SharedStream | None = None  # every subscription over SSE or polling
        # Leaves of presence on their way (polling): a close waits for them, they are short.
        self._leaves: set[asyncio.Task[None]] = set()

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def transport(self) -> TransportName | None:
        """``"ws"``, ``"sse"`` or ``"poll"`` once decided (``auto`` decides on first use)."""
        return self._mode

    @property
    def client_id(self) -> str | None:
        """The hub's id for the current WebSocket connection (``client`` in presence)."""
        return self._link.client_id if self._link is not None and self._link.connected else None

    @property
    def closed(self) -> bool:
        return self._state == "closed" or self._error is not None

    async def open(self) -> Client:
        """Connect. Over WebSocket (without an API key) the connection is made now."""
        if self._state != "new":
            raise ClientClosed("a client can be opened only once")
        self._state = "open"
        self._api = HttpApi(
            self.endpoints,
            api_key=self._api_key,
            tokens=self._tokens,
            timeout=self._request_timeout,
            on_fatal=self._stop,
            limits=self._limits,
        )
        ctx = StreamContext(
            self._api, self._backoff, self._poll_timeout, SSE_READ_TIMEOUT, self._open_timeout
        )
        self._stream = SharedStream(ctx, self._spawn, self._run_stream)
        if self._option in ("ws", "auto"):
            self._link = WebSocketLink(
                self.endpoints,
                tokens=self._tokens,
                backoff=self._backoff,
                open_timeout=self._open_timeout,
                max_message_bytes=self._max_message_bytes,
                max_reply_bytes=self._limits.reply,
                on_fatal=self._link_failed,
                nothing_at=self._api.nothing_at,
            )
        # A backend with an API key publishes over HTTP: it opens the WebSocket only to subscribe.
        if self._api_key is None and self._option in ("ws", "auto"):
            try:
                await self._transport()
            except BaseException:
                await self.close()
                raise
        return self

    async def close(self) -> None:
        """Close the connection; subscriptions end (their iterators stop)."""
        if self._state == "closed":
            return
        self._state = "closed"
        polled = list(self._stream.feeds.values()) if self._stream is not None else []
        for feed in list(self._feeds.values()):
            feed.finish()
        self._feeds.clear()
        # Bounded, re-cancelling: a feed awaits the HTTP client and the token callable, which
        # may lose a cancel (see clarion.tasks).
        await stop(list(self._tasks))
        if self._mode == "poll" and self._stream is not None:
            # After the loop stopped: no poll of its renews what the leave ends.
            self._leave(polled)
        if self._leaves:
            # Each bounded by LEAVE_TIMEOUT; past it (a cancel the token callable lost), stopped.
            await asyncio.wait(self._leaves, timeout=LEAVE_TIMEOUT)
            await stop(list(self._leaves))
        if self._link is not None:
            await self._link.close()
        if self._api is not None:
            await self._api.aclose()

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, Client]:
        return self.open().__await__()

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._state != "open":
            raise ClientClosed("the client is not open" if self._state == "new" else "closed")

    def _link_failed(self, error: ClarionError) -> None:
        if isinstance(error, TransportUnavailable) and self._option == "auto":
            return  # the transport decision falls back to SSE
        self._stop(error)

    def _stop(self, error: ClarionError) -> None:
        """The hub said not to reconnect: every subscription and request ends with ``error``."""
        if self._error is not None:
            return
        self._error = error
        # Raised to every subscription and request too; said here for a reader of the log.
        log.warning("stopped, not reconnecting: %s", error, extra={"stop": True})
        for feed in list(self._feeds.values()):
            feed.finish(error)
            if feed.task is not None:
                feed.task.cancel()
        self._feeds.clear()
        if self._stream is not None:
            self._stream.stop()

    async def _transport(self) -> TransportName:
        """The transport in use; with ``auto``, try WebSocket first and fall back to SSE."""
        if self._mode is not None:
            return self._mode
        async with self._deciding:
            if self._mode is not None:
                return self._mode
            self._check_open()
            link = self._link
            assert link is not None
            try:
                # One deadline for the whole decision, the look at /healthz included.
                async with asyncio.timeout(self._open_timeout):
                    self._mode = await self._decide(link)
            except TimeoutError:
                raise ConnectFailed(
                    f"could not connect to {self.endpoints.ws} within {self._open_timeout} s "
                    f"({link.last_failure})"
                ) from None
            return self._mode

    async def _decide(self, link: WebSocketLink) -> TransportName:
        try:
            await link.wait_connected()
        except TransportUnavailable as exc:
            if self._option != "auto":
                raise
            # A hub behind something that refuses WebSocket answers /healthz; a wrong URL
            # answers 404 there too, and fails here rather than at the first subscribe.
            assert self._api is not None
            if await self._api.nothing_at("/healthz"):
                # As for one transport asked for at a URL that serves none: nothing to wait for.
                raise TransportUnavailable(
                    f"{exc} (and nothing is at {self.endpoints.url('/healthz')} either)"
                ) from None
            log.info("WebSocket unavailable (%s); falling back to SSE", exc)
            return "sse"
        return "ws"

    async def _over_http(self) -> HttpApi | None:
        """Where requests go over HTTP (with an API key, or off WebSocket); None: the WebSocket."""
        if self._api_key is None and await self._transport() == "ws":
            return None
        assert self._api is not None
        return self._api

    # ---- subscriptions ------------------------------------------------------------------------

    def subscribe(
        self, channel: str, since: str | None = None, *, latest: bool = False
    ) -> Subscription:
        """Subscribe to ``channel``: an async iterator of :class:`Message` and :class:`Reset`.

        ``since`` is a cursor (a ``Message.cursor``, a ``Reset.cursor``, ``Subscription.cursor``,
        or one from another transport) to resume from; without it the subscription starts now.
        ``latest``: without ``since``, the newest stored publication comes first (a ticker or a
        gauge shows a value at once).
        """
        self._check_open()
        validate_channel(channel)
        if since is not None and Cursor.decode(since).get(channel) is None:
            raise BadCursor(f"the cursor holds no position for channel {channel!r}")
        existing = self._feeds.get(channel)
        if existing is not None and not existing.done:
            raise RequestFailed(
                f"this client is already subscribed to {channel!r}",
                code=ErrorCode.ALREADY_SUBSCRIBED,
            )
        feed = Feed(channel, since, self._queue_size, latest=latest)
        self._feeds[channel] = feed
        handle = Subscription(feed, self._release)
        # A handle dropped without unsubscribing (``break`` out of ``async for``) unsubscribes.
        weakref.finalize(handle, self._release_quietly, feed).atexit = False
        if self._mode == "ws" and self._link is not None:
            self._link.attach(feed)
        else:
            feed.task = self._spawn(self._run_feed(feed), f"clarion-client-{channel}")
        return handle

    async def server_subscriptions(self) -> AsyncIterator[Subscription]:
        """Subscriptions the hub makes for this client, as they come: the backend's
        ``POST /api/subscribe`` and the token's ``subs`` claim (over WebSocket).

        Each is a :class:`Subscription` like :meth:`subscribe` returns; it ends with
        :class:`RequestFailed` (code ``unsubscribed``) when the hub ends it. Only those made
        after the first call are reported.
        """
        self._check_open()
        if self._hub_made is None:
            self._hub_made = asyncio.Queue()
            if self._link is not None:
                self._link.on_hub_subscribe = self._hub_subscribed
        while True:
            yield await self._hub_made.get()

    def _hub_subscribed(self, channel: str) -> Feed:
        feed = Feed(channel, None, self._queue_size)
        self._feeds[channel] = feed
        handle = Subscription(feed, self._release)
        weakref.finalize(handle, self._release_quietly, feed).atexit = False
        assert self._hub_made is not None
        self._hub_made.put_nowait(handle)
        return feed

    def _release(self, feed: Feed) -> None:
        if self._feeds.get(feed.channel) is feed:
            del self._feeds[feed.channel]
        feed.finish(drop=True)
        if self._link is not None:
            self._link.detach(feed)
        if self._stream is not None:
            polled = self._stream.feeds.get(feed.channel) is feed
            self._stream.remove(feed)
            if polled and self._mode == "poll":
                self._leave([feed])
        if feed.task is not None:
            feed.task.cancel()

    def _leave(self, feeds: list[Feed]) -> None:
        """Polling: the hub hears that this client left those channels' presence."""
        assert self._stream is not None
        task = asyncio.create_task(leave_poll(self._stream.ctx, feeds), name="clarion-leave")
        self._leaves.add(task)
        task.add_done_callback(self._leaves.discard)

    def _release_quietly(self, feed: Feed) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop may be gone already
            self._release(feed)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_feed(self, feed: Feed) -> None:
        """Start ``feed`` on the transport in use, once it is decided."""
        try:
            mode = await self._transport()
        except ClarionError as exc:
            feed.finish(exc)
            return
        if feed.done:
            return
        if mode == "ws":
            assert self._link is not None
            self._link.attach(feed)
            return
        assert self._stream is not None
        self._stream.add(feed)

    async def _run_stream(self, stream: SharedStream) -> None:
        """Keep the one SSE stream or poll loop open for the subscriptions it holds."""
        while stream.feeds:
            try:
                if self._mode == "sse":
                    from clarion.client.sse import open_sse  # needs httpx-sse

                    why = await stream.run_opens(open_sse, beside=True)
                else:
                    why = await stream.run_opens(open_poll, beside=False)
            except Disconnected as exc:
                return self._stop(exc)
            except TransportUnavailable as exc:
                if self._mode != "sse" or self._option != "auto":
                    return stream.end_all(exc)
                log.info("SSE unavailable (%s); falling back to long polling", exc)
                self._mode = "poll"
                continue
            except Exception as exc:
                if not isinstance(exc, ClarionError):
                    log.exception("the %s stream failed", self._mode)
                    exc = ConnectionLost(f"the {self._mode} stream failed: {exc!r}")
                return stream.end_all(exc)
            if why is not None:
                await stream.pause(why)

    # ---- requests -----------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        id: str | None = None,
        *,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> Published:
        """Publish ``data`` (any JSON value); ``id`` makes retries idempotent on the hub.

        ``ephemeral``: a live signal (a cursor, a typing flag), delivered to live subscribers
        and never stored; ``key`` names what it is the latest value of.
        """
        self._check_open()
        validate_channel(channel)
        if (api := await self._over_http()) is not None:
            return await api.publish(channel, data, id, ephemeral=ephemeral, key=key)
        command = Command(
            None, "publish", channel, data=data, publication_id=id, ephemeral=ephemeral, key=key
        )
        return Published.from_wire(channel, await self._request(command))

    async def publish_batch(
        self, publications: Iterable[Mapping[str, Any]]
    ) -> list[Published | RequestFailed]:
        """Publish several in one request to the server API (``POST /api/publish_batch``,
        whatever the transport): each item is ``{"channel", "data", "id"?, "ephemeral"?,
        "key"?}``, as :meth:`publish` takes them. Each is answered on its own, in order: a
        :class:`Published`, or the :class:`RequestFailed` the hub refused that one with. A
        refusal of the whole batch (the API key, too many) is raised.
        """
        self._check_open()
        wrong = TypeError("publish_batch takes a list of {'channel', 'data', ...} mappings")
        if isinstance(publications, str | bytes | Mapping):
            raise wrong
        items = list(publications)  # read once: an iterator is not used up by the check
        if not all(isinstance(p, Mapping) for p in items):
            raise wrong
        assert self._api is not None
        return await self._api.publish_batch(items)

    async def history(
        self,
        channel: str,
        since: str | None = None,
        limit: int | None = None,
        *,
        reverse: bool = False,
    ) -> History:
        """Publications kept in ``channel``'s history, after ``since`` if given, oldest first.

        ``reverse``: newest first, older than ``since`` if given; the page's ``cursor`` (its
        oldest publication) pages further back while ``more`` is true.
        """
        self._check_open()
        validate_channel(channel)
        if (api := await self._over_http()) is not None:
            return await api.history(channel, since, limit, reverse=reverse)
        command = Command(None, "history", channel, since, limit=limit, reverse=reverse)
        return History.from_wire(channel, await self._request(command))

    async def presence(self, channel: str) -> list[Member]:
        """The clients subscribed to ``channel`` now."""
        body = await self._presence(channel)
        return [Member.from_wire(c) for c in body.get("clients", ())]

    async def presence_users(self, channel: str) -> list[PresentUser]:
        """The users subscribed to ``channel`` now, one entry per user with its clients
        (clients without a user are not listed)."""
        body = await self._presence(channel)
        return [PresentUser.from_wire(u) for u in body.get("users", ())]

    async def _presence(self, channel: str) -> dict[str, Any]:
        self._check_open()
        validate_channel(channel)
        if (api := await self._over_http()) is not None:
            return await api.presence_body(channel)
        return await self._request(Command(None, "presence", channel))

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients and distinct users are subscribed to ``channel``, without listing
        them (what a room of thousands shows)."""
        self._check_open()
        validate_channel(channel)
        if (api := await self._over_http()) is not None:
            body = await api.presence_stats(channel)
        else:
            body = await self._request(Command(None, "presence_stats", channel))
        return PresenceStats(int(body["clients"]), int(body["users"]))

    async def _request(self, command: Command) -> dict[str, Any]:
        assert self._link is not None
        try:
            return await self._link.request(command, self._request_timeout)
        except ClientClosed:
            self._raise_closed()

    def _raise_closed(self) -> NoReturn:
        self._check_open()
        raise ClientClosed()

    def __repr__(self) -> str:
        return f"Client({self.endpoints.http!r}, transport={self._mode!r}, state={self._state!r})"


def connect(
    url: str,
    *,
    token: TokenSource = None,
    api_key: str | None = None,
    transport: TransportName = "auto",
    backoff: Backoff | None = None,
    queue_size: int = 1024,
    open_timeout: float | None = 10.0,
    request_timeout: float = 10.0,
    poll_timeout: float = 25.0,
    max_message_bytes: int | None = 65536,
    max_event_bytes: int = MAX_EVENT_BYTES,
    max_reply_bytes: int = MAX_REPLY_BYTES,
) -> Client:
    """A client for the hub at ``url``; use as ``async with connect(url) as client:``.

    ``url`` is the hub's base URL (``http://127.0.0.1:8000``, or where a host app mounted it) or
    its WebSocket endpoint (``ws://127.0.0.1:8000/ws``). ``token`` is a connection JWT, or a
    callable (sync or async) asked for a fresh one before every connection. ``api_key`` sends
    publish/history/presence through the HTTP server API. See ``docs/client.md``.
    """
    return Client(
        url,
        token=token,
        api_key=api_key,
        transport=transport,
        backoff=backoff,
        queue_size=queue_size,
        open_timeout=open_timeout,
        request_timeout=request_timeout,
        poll_timeout=poll_timeout,
        max_message_bytes=max_message_bytes,
        max_event_bytes=max_event_bytes,
        max_reply_bytes=max_reply_bytes,
    )
