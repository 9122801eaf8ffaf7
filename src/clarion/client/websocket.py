"""The WebSocket transport: one ``clarion.v1`` connection carrying every subscription and request.

The link owns the connection's life: connect (with the ``connect`` op, so a refused token comes
back with the hub's own message), resubscribe every feed from its resume cursor, serve, and when
the connection ends, read the hub's ``disconnect`` push (or the close code) to decide between
reconnecting after a jittered backoff delay and stopping for good.

Everything that is sent goes through one outbox drained by one writer task, and everything that is
received is handled synchronously by one reader task: frames leave in the order they were queued
and the state of every feed changes in wire order, which is what keeps resubscriptions (after a
reconnect, an overflow or an unsubscribe/subscribe of the same channel) free of gaps and
duplicates.

Long on purpose: the connection's life, its one writer and its one reader share the link's
state, and that ordering argument reads best in one class.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, NoReturn

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHeader,
    InvalidMessage,
    InvalidStatus,
    NegotiationError,
    WebSocketException,
)
from websockets.typing import Subprotocol

from clarion.client.backoff import Backoff, retry_after_delay
from clarion.client.bounds import MAX_REPLY_BYTES, TooLarge, dropped
from clarion.client.endpoints import Endpoints
from clarion.client.errors import (
    ClientClosed,
    ConnectionLost,
    Disconnected,
    RequestFailed,
    RequestTimeout,
    TransportUnavailable,
    unsubscribed,
)
from clarion.client.items import Message, Reset
from clarion.client.refusals import Retry, refused, stops
from clarion.client.subscription import Feed
from clarion.client.tokens import Tokens
from clarion.errors import ClarionError
from clarion.protocol.codes import CloseCode
from clarion.protocol.errors import ErrorCode
from clarion.protocol.messages import (
    SUBPROTOCOL,
    Command,
    DisconnectPush,
    Frame,
    FrameError,
    PublicationPush,
    Reply,
    ResetPush,
    SubscribePush,
    UnsubscribePush,
    encode_command,
    parse_frame,
)
from clarion.tasks import stop

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
# Seconds each try (the handshake, then the answer to ``connect``) may take when ``open_timeout``
# sets no deadline for the first connection.
TRY_TIMEOUT = 10.0
# Seconds a subscribe refused with ``rate_limited`` waits (jittered) before it is sent again:
# the hub's command budget refills at ``limits.client_command_rate`` a second.
RATE_LIMITED_DELAY = 1.0

ReplyHandler = Callable[[Reply | None], None]  # ``None``: the connection ended first


def _plain(exc: BaseException) -> str:
    """``connection refused`` rather than ``[Errno 111] Connect call failed ('127.0.0.1', 1)``."""
    if isinstance(exc, ssl.SSLError):
        # Its errno is the TLS library's code, not the OS's (1 would read "not permitted").
        if exc.reason == "WRONG_VERSION_NUMBER":
            return "TLS failed: the hub does not speak TLS on that port (use ws:// or http://)"
        return f"TLS failed: {exc.reason or exc}"
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        reason = os.strerror(errno)
        return reason[:1].lower() + reason[1:]
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class _Connection(ClientConnection):
    """Dropped at once past ``max_size``: websockets would read on, discarding, until the peer
    closes or ``close_timeout`` passes, and a peer past the limit is not one to wait for."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if _oversized(self):
            self.transport.abort()


def _oversized(conn: ClientConnection) -> bool:
    """Whether this side closed ``conn`` for a message over ``max_size`` (it sends 1009 for
    nothing else)."""
    sent = conn.protocol.close_sent
    return sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG


def _settle(future: asyncio.Future[Reply | None], reply: Reply | None) -> None:
    if not future.done():
        future.set_result(reply)


def _ignore(reply: Reply | None) -> None:
    return None


class WebSocketLink:
    """The client's WebSocket connection, reconnected for as long as the client is open."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        tokens: Tokens,
        backoff: Backoff,
        open_timeout: float | None,
        max_message_bytes: int | None,
        on_fatal: Callable[[ClarionError], None],
        nothing_at: Callable[[str], Awaitable[bool]] | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.endpoints = endpoints
        # Whether a path of the hub's URL is answered 404 (see HttpApi.nothing_at).
        self.nothing_at = nothing_at
        self.max_message_bytes = max_message_bytes
        # The largest message read (a history reply is the largest the hub sends): websockets
        # drops a connection whose message would be larger (1009) before buffering it.
        self.max_reply_bytes = max_reply_bytes
        self.tokens = tokens
        self.backoff = backoff
        # Each try's; the first connection's deadline is the client's (None: no deadline).
        self.try_timeout = open_timeout if open_timeout is not None else TRY_TIMEOUT
        self.on_fatal = on_fatal
        # Makes the feed of a channel the hub subscribed this connection to (None: ignore them).
        self.on_hub_subscribe: Callable[[str], Feed] | None = None
        self.feeds: dict[str, Feed] = {}
        self.error: ClarionError | None = None
        self.ever_connected = False
        self.last_failure = "no attempt yet"
        self.client_id: str | None = None
        self._pending: dict[int, ReplyHandler] = {}
        self._ids = itertools.count(1)
        self._outbox: deque[str] = deque()
        self._outbox_ready = asyncio.Event()
        self._conn: ClientConnection | None = None
        self._connected = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._disconnect: DisconnectPush | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the connection loop unless it runs already (it stops when the hub idles us out)."""
        if self._closing or self.error is not None:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="clarion-client-ws")

    async def wait_connected(self) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if self._closing:
                raise ClientClosed()
            if self._connected:
                return
            self.start()
            changed = self._changed
            await changed.wait()

    async def close(self) -> None:
        self._closing = True
        self._notify()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await conn.close()
        task = self._task
        if task is not None and not task.done():
            if conn is not None:
                # It ends once the close handshake is done.
                await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
            # Without a connection it is connecting or waiting out a backoff delay, and waiting
            # for it would overrun open_timeout: it is cancelled at once. Bounded,
            # re-cancelling: the link awaits the token callable and its own wait_for, either of
            # which may lose a cancel (see clarion.tasks).
            await stop([task], CLOSE_TIMEOUT)
        for feed in list(self.feeds.values()):
            feed.finish()
        self.feeds.clear()

    def _notify(self) -> None:
        # Wake every waiter at once: each waits on the event current when it looked.
        self._changed.set()
        self._changed = asyncio.Event()

    def _fail(self, error: ClarionError) -> None:
        self.error = error
        for feed in list(self.feeds.values()):
            feed.finish(error)
        self.feeds.clear()
        self._notify()
        self.on_fatal(error)

    async def _run(self) -> None:
        # What the link is doing is logged at INFO, one line per change, each ending with what
        # happens next: `clarion subscribe` shows these lines on stderr.
        url = self.endpoints.ws
        attempt = 0
        try:
            if not self.ever_connected:
                log.info("connecting to %s", url)
            while not self._closing:
                try:
                    was_connected, code, reason, reconnect = await self._connect_and_serve()
                except Retry as exc:
                    why = self.last_failure = str(exc)
                except ClarionError as exc:
                    log.debug("stopping: %s", exc)
                    self.last_failure = str(exc)
                    self._fail(exc)
                    return
                except Exception as exc:  # a bug must not leave waiters hanging: retry, loudly
                    why = self.last_failure = f"unexpected error: {exc!r}"
                    log.exception("connection attempt failed unexpectedly")
                else:
                    if self._closing:
                        return
                    if was_connected:
                        attempt = 0
                    if code == CloseCode.IDLE:
                        # Idle means "no subscription on the hub". Without feeds, open again when
                        # one is made; feeds paused by a slow reader still need a connection.
                        if not self.feeds:
                            log.info("the hub closed the idle connection; reopening when needed")
                            return
                    elif stops(code, reconnect, self.tokens.source):
                        self._fail(Disconnected(code or CloseCode.NORMAL, reason))
                        return
                    closed = f"{code}: {reason}" if reason else str(code or "no close code")
                    verb = "lost the connection" if was_connected else "the connection closed"
                    why = self.last_failure = f"{verb} to {url} ({closed})"
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.info("%s; retrying in %.1f s", why, delay)
                await asyncio.sleep(delay)
        finally:
            self._notify()

    # ---- one connection -----------------------------------------------------------------------

    async def _open(self) -> ClientConnection:
        url = self.endpoints.ws
        try:
            conn = await ws_connect(
                url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                open_timeout=self.try_timeout,
                close_timeout=CLOSE_TIMEOUT,
                max_size=self.max_reply_bytes,
                create_connection=_Connection,
            )
        except (InvalidStatus, InvalidHeader, NegotiationError) as exc:
            detail = (
                f"HTTP {exc.response.status_code}" if isinstance(exc, InvalidStatus) else str(exc)
            )
            status = exc.response.status_code if isinstance(exc, InvalidStatus) else 0
            # The hub says why in its error shape; anything else (a proxy, another server)
            # leaves a guess.
            said = _hub_error(exc.response.body) if isinstance(exc, InvalidStatus) else None
            if status in (502, 503, 504):  # a gateway whose hub is away: try again later
                why = f"{said[0]}: {said[1]}" if said else "the hub is not there yet"
                raise Retry(f"{url} answered HTTP {status}: {why}") from None
            message = f"the hub refused the WebSocket upgrade at {url} ({detail})"
            if said is not None:
                message += f": {said[0]}: {said[1]}"
            # A path nothing serves is refused so (a 403 that says why is something else).
            if status == 404 or (status == 403 and said is None):
                message += f"{'; ' if said else ': '}{self.endpoints.doubt()}"
            self._refused(message)
        except InvalidMessage as exc:
            # Something answered, but no HTTP/1.1 handshake: another kind of server (or a
            # connection cut mid-answer). A URL where /healthz is not there either is not a hub's.
            why = f"cannot connect to {url}: {_plain(exc)}"
            if (
                not self.ever_connected
                and self.nothing_at is not None
                and await self.nothing_at("/healthz")
            ):
                self._refused(
                    f"{why}, and nothing is at {self.endpoints.url('/healthz')} either: "
                    f"{self.endpoints.doubt()}"
                )
            raise Retry(why) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise Retry(f"cannot connect to {url}: {_plain(exc)}") from None
        if conn.subprotocol != SUBPROTOCOL:
            await conn.close()
            self._refused(f"{url} does not speak the {SUBPROTOCOL} subprotocol")
        return conn

    def _refused(self, message: str) -> NoReturn:
        # Refused before ever connecting: this hub (or a proxy before it) does not do WebSocket.
        # Refused later: a hub shutting down or restarting refuses upgrades for a while.
        if not self.ever_connected:
            raise TransportUnavailable(message)
        raise Retry(message)

    async def _connect_and_serve(self) -> tuple[bool, int | None, str, bool | None]:
        """One connection from handshake to close: (was connected, code, reason, reconnect)."""
        try:
            token = await self.tokens.fresh()
        except Exception as exc:
            raise Retry(f"the token callable failed: {exc!r}") from None
        conn = await self._open()
        self._disconnect = None
        self._conn = conn
        reader = asyncio.create_task(self._read(conn), name="clarion-client-ws-reader")
        writer = asyncio.create_task(self._write(conn), name="clarion-client-ws-writer")
        connected = False
        try:
            reply: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()
            rid = next(self._ids)
            self._pending[rid] = partial(_settle, reply)
            self._send(Command(rid, "connect", token=token))
            waits: set[asyncio.Future[Any]] = {reply, reader}
            done, _ = await asyncio.wait(
                waits, timeout=self.try_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if reply.done() and (answer := reply.result()) is not None:
                if answer.error is not None:
                    failure = RequestFailed.from_wire(answer.error)
                    raise refused(failure, self.tokens.source, whole=True)
                client = (answer.ok or {}).get("client")
                if isinstance(client, str):
                    self.client_id = client
                connected = self.ever_connected = self._connected = True
                self._notify()
                log.info("connected to %s", self.endpoints.ws)
                for feed in list(self.feeds.values()):
                    if not feed.paused:
                        self._subscribe(feed)
                await reader
            elif not done:
                raise Retry("the hub did not answer the connect request in time")
            # Otherwise the hub closed before answering: its close code says what to do.
        finally:
            self._conn = None
            self._connected = False
            self._notify()
            pending, self._pending = self._pending, {}
            for handler in pending.values():
                handler(None)
            self._outbox.clear()
            for feed in self.feeds.values():
                feed.live = False
            for task in (reader, writer):
                task.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await conn.close()
            await asyncio.gather(reader, writer, return_exceptions=True)
        if _oversized(conn):
            # Dropped by this side: the hub's own close code (if it echoed ours) says nothing.
            error = TooLarge("a message", self.max_reply_bytes, "max_reply_bytes")
            raise Retry(dropped(self.endpoints.ws, error))
        code, reason, reconnect = self._outcome(conn)
        return connected, code, reason, reconnect

    def _outcome(self, conn: ClientConnection) -> tuple[int | None, str, bool | None]:
        """Close code, reason and the hub's word on reconnecting; its ``disconnect`` push wins."""
        push = self._disconnect
        if push is not None:
            return push.code, push.reason, push.reconnect
        return conn.close_code, conn.close_reason or "", None

    async def _read(self, conn: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in conn:
                if not isinstance(raw, str):
                    log.warning("ignoring a binary frame from the hub")
                    continue
                try:
                    frame = parse_frame(raw)
                except FrameError as exc:
                    log.warning("ignoring a frame from the hub (%s): %.80r", exc, raw)
                    continue
                if frame is not None:  # else a push of a newer protocol: not for this client
                    self._dispatch(frame)

    async def _write(self, conn: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                while self._outbox:
                    await conn.send(self._outbox.popleft())
                self._outbox_ready.clear()
                await self._outbox_ready.wait()

    def _send(self, command: Command | str) -> bool:
        if self._conn is None:
            return False
        frame = command if isinstance(command, str) else encode_command(command).decode()
        self._outbox.append(frame)
        self._outbox_ready.set()
        return True

    def _dispatch(self, frame: Frame) -> None:
        match frame:
            case Reply(id=None, error=error):
                log.warning("the hub reported an error: %s", error)
            case Reply(id=int(rid)):
                handler = self._pending.pop(rid, None)
                if handler is not None:
                    handler(frame)
            case PublicationPush(publication=publication, cursor=cursor):
                feed = self.feeds.get(publication.channel)
                if feed is not None:
                    # A live signal has no cursor: it does not move the subscription's.
                    feed.deliver(Message(publication, cursor or ""))
            case ResetPush(channel=channel, reason=reason, cursor=str(cursor)):
                feed = self.feeds.get(channel)
                if feed is not None:
                    feed.deliver(Reset(feed.channel, reason, cursor))
            case SubscribePush():
                self._hub_subscribed(frame)
            case UnsubscribePush(channel=channel, reason=reason):
                feed = self.feeds.get(channel)
                if feed is not None:
                    del self.feeds[feed.channel]
                    feed.finish(unsubscribed(feed.channel, reason))
            case DisconnectPush():
                self._disconnect = frame
            # ``join``/``leave`` presence events are not surfaced by this client.

    # ---- subscriptions ------------------------------------------------------------------------

    def _hub_subscribed(self, push: SubscribePush) -> None:
        """The hub subscribed this connection to a channel: a feed for it, if one is wanted."""
        channel = push.channel
        feed = self.feeds.get(channel)
        if feed is not None:
            # Already a feed (the client's own, or one resuming after a reconnect): its own
            # subscribe, with its cursor, decides; see ``already_subscribed`` below.
            feed.server = True
            return
        if self.on_hub_subscribe is None:
            return  # nobody asked for the hub's subscriptions: their publications are ignored
        feed = self.on_hub_subscribe(channel)
        self.feeds[channel] = feed
        feed.server = True
        feed.on_overflow = self._pause
        feed.on_resume = self._resume
        feed.confirmed(push.cursor)

    def attach(self, feed: Feed) -> None:
        self.feeds[feed.channel] = feed
        feed.on_overflow = self._pause
        feed.on_resume = self._resume
        if self._connected:
            self._subscribe(feed)
        else:
            self.start()  # subscribed once connected

    def detach(self, feed: Feed) -> None:
        if self.feeds.get(feed.channel) is not feed:
            return
        del self.feeds[feed.channel]
        self._unsubscribe(feed.channel)

    def _subscribe(self, feed: Feed, *, again: bool = True) -> None:
        rid = next(self._ids)

        def on_reply(reply: Reply | None) -> None:
            if reply is None or self.feeds.get(feed.channel) is not feed:
                return
            error = reply.error
            if again and error is not None and error["code"] == "already_subscribed":
                # The hub subscribed the channel itself at connect (the token's ``subs``
                # claim), from "now": resume from this feed's cursor instead, skipping nothing.
                feed.live = False
                self._unsubscribe(feed.channel)
                self._subscribe(feed, again=False)
                return
            if error is not None and error["code"] == ErrorCode.RATE_LIMITED:
                # A budget is spent for now (the connection's, or its user's, which says when
                # it has room again): the feed waits and asks again on this connection (a new
                # one resubscribes it anyway).
                wait = RequestFailed.from_wire(error).retry_after
                self._subscribe_later(feed, self._conn, wait)
                return
            if error is not None:
                del self.feeds[feed.channel]
                feed.finish(RequestFailed.from_wire(error))
                return
            ok = reply.ok or {}
            since, cursor = ok.get("since"), ok.get("cursor")
            if isinstance(since, str):
                # Older publications follow (``latest``): it stands before them until they
                # come, so a reconnect in between asks for them again.
                feed.confirmed(since, start=True)
            else:
                feed.confirmed(cursor if isinstance(cursor, str) else None)

        self._pending[rid] = on_reply
        since = feed.resume_cursor
        latest = since is None and feed.latest
        command = Command(rid, "subscribe", feed.channel, since, latest=latest)
        if not self._send(command):
            del self._pending[rid]

    def _subscribe_later(
        self, feed: Feed, conn: ClientConnection | None, wait: float | None
    ) -> None:
        def again() -> None:
            if self.feeds.get(feed.channel) is feed and self._conn is conn and self._connected:
                self._subscribe(feed)

        # Not all feeds at once.
        delay = retry_after_delay(wait) if wait else RATE_LIMITED_DELAY * random.uniform(0.5, 1.5)
        asyncio.get_running_loop().call_later(delay, again)

    def _unsubscribe(self, channel: str) -> None:
        if self._connected:
            rid = next(self._ids)
            self._pending[rid] = _ignore
            self._send(Command(rid, "unsubscribe", channel))

    def _pause(self, feed: Feed) -> None:
        # Stop the hub sending what would be dropped; resume from the cursor once drained.
        if self.feeds.get(feed.channel) is feed:
            self._unsubscribe(feed.channel)

    def _resume(self, feed: Feed) -> None:
        if self.feeds.get(feed.channel) is feed and self._connected:
            self._subscribe(feed)

    # ---- requests -----------------------------------------------------------------------------

    async def request(self, command: Command, timeout: float) -> dict[str, Any]:
        """Send ``command`` (its ``id`` is set here) once connected; return its ``ok`` body or
        raise its error."""
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        op = command.op
        raw = encode_command(replace(command, id=rid))
        limit = self.max_message_bytes
        if limit is not None and len(raw) > limit:
            # The hub would close the whole connection (1009, "do not reconnect") over it.
            raise RequestFailed(
                f"the {op} frame is {len(raw)} bytes, over max_message_bytes ({limit})",
                code=ErrorCode.TOO_LARGE,
            )
        frame = raw.decode()
        try:
            async with asyncio.timeout(timeout):
                await self.wait_connected()
                future: asyncio.Future[Reply | None] = loop.create_future()
                self._pending[rid] = partial(_settle, future)
                self._send(frame)
                try:
                    reply = await future
                finally:
                    self._pending.pop(rid, None)
        except TimeoutError:
            raise RequestTimeout(f"no answer to {op!r} within {timeout} s") from None
        if reply is None:
            raise ConnectionLost(f"the connection dropped before the hub answered {op!r}")
        if reply.error is not None:
            raise RequestFailed.from_wire(reply.error)
        return reply.ok or {}


def _hub_error(body: bytes | bytearray | None) -> tuple[str, str] | None:
    """The code and message of a refusal in the hub's error shape, if ``body`` is one."""
    try:
        error = orjson.loads(body or b"")["error"]
        code, message = error["code"], error["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return (code, message) if isinstance(code, str) and isinstance(message, str) else None
