"""``GET /stomp``: STOMP 1.0, 1.1 and 1.2 over WebSocket, on the hub's channels.

The STOMP session itself is the pure :class:`~clarion.protocol.stomp.StompSession`; this module
moves bytes between it, the socket and the hub, and owns the timers: the ``CONNECT`` deadline,
the hub's heart-beats, and the deadline of a frame split across WebSocket messages. The hub's
tick watches the client (:attr:`StompConnection.last_activity`, :meth:`StompConnection.ping`).

Publications reach subscribers as ``MESSAGE`` frames cut in two
(:mod:`clarion.protocol.stomp.message`): the tail, shared by every subscriber, is built once per
publication and flavour; each delivery only adds the subscription's prefix and, on the fast path,
the WebSocket frame header for the combined length.

Long on purpose: the connection is both its session's transport and what carries out its frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from clarion import __version__
from clarion.asgi import access
from clarion.asgi.pipe import Pipe
from clarion.asgi.stompshared import Shared, subscribe_shared
from clarion.asgi.stompwire import StompWire
from clarion.asgi.wsendpoint import Handler, WebSocketEndpoint
from clarion.asgitypes import Message
from clarion.core.hub import Hub
from clarion.core.limits import LogLimit
from clarion.core.resume import SubscribeResult
from clarion.core.session import Session
from clarion.errors import ClarionError, LimitExceeded, Unauthorized
from clarion.protocol.codes import CloseCode, disconnect_for
from clarion.protocol.cursor import Cursor
from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import Publication, StreamPosition
from clarion.protocol.stomp import (
    Abort,
    Ack,
    Begin,
    Commit,
    Connect,
    Disconnect,
    Event,
    RemoteProtocolError,
    Send,
    State,
    StompSession,
    Subscribe,
    Unsubscribe,
    acked_cursor,
    select_subprotocol,
)
from clarion.protocol.wsreader import FRAMES_PER_CALL

log = logging.getLogger("clarion.stomp")
# Tracebacks a peer may cause per request or frame: one per kind of failure a minute.
_failures = LogLimit(log)

SERVER = f"clarion/{__version__}"


# ---- one connection ------------------------------------------------------------------------------


class StompConnection(Handler):
    """One STOMP client: the hub's :class:`~clarion.core.transport.Transport` for it, and the code
    that carries out its frames in the order they arrive."""

    kind = "stomp"

    def __init__(self, hub: Hub, scope: dict[str, Any], pipe: Pipe) -> None:
        self.hub = hub
        # The upgrade request's token (header, query, cookie), for a CONNECT without one: the
        # scope itself, headers and all, is not kept for the connection's lifetime.
        self.upgrade_refusal: Unauthorized | None = None
        try:
            self.upgrade_token = access.token_from(hub, scope)
        except Unauthorized as exc:  # told at CONNECT, where a STOMP client can read it
            self.upgrade_token = None
            self.upgrade_refusal = exc
        self.pipe = pipe
        self.wire = StompWire(pipe)
        limits = hub.settings.limits
        # The hub beats as often as the client asks, down to stomp_min_heart_beat; it wants to
        # hear from the client every ping_interval, which its liveness sweep allows anyway.
        send_ms = max(1, int(limits.stomp_min_heart_beat * 1000))
        receive_ms = max(1, int(limits.ping_interval * 1000))
        self.stomp = StompSession(
            heart_beat=(send_ms, receive_ms),
            max_frame_bytes=limits.max_message_bytes,
            max_subscriptions=limits.max_subscriptions_per_connection,
        )
        # Channels with several subscriptions on this connection: one hub subscription each,
        # fanned out here (see stompshared).
        self.shared: dict[str, Shared] = {}
        self.session: Session | None = None
        self.closed = False
        # Counted in hub.pending until CONNECT opens a session (which counts instead).
        self.address = access.client_address(hub, scope)
        self._pending_key = hub.pending_key(self.address)
        self._pending = False
        self._finishing = False
        self.last_received = time.monotonic()
        self._receipt: str | None = None  # of the frame being carried out
        self._frames = 0  # carried out since this connection last let the loop turn
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._handshake_timer: asyncio.TimerHandle | None = loop.call_later(
            limits.handshake_timeout, self._handshake_expired
        )
        self._beat_timer: asyncio.TimerHandle | None = None
        self._partial_timer: asyncio.TimerHandle | None = None

    # ---- Transport (called by the hub) ---------------------------------------------------------

    @property
    def last_activity(self) -> float:
        if self.pipe.pings:
            return self.pipe.last_activity  # any bytes, WebSocket pongs included
        promised = self.stomp.heart_beat.receive_ms / 1000
        if not promised:
            return time.monotonic()  # no heart-beats promised: the host server's pings decide
        # The hub's tick allows ping_interval + pong_timeout of silence; stretch that to the
        # interval this client negotiated, if longer.
        return self.last_received + max(0.0, promised - self.hub.settings.limits.ping_interval)

    def ping(self) -> None:
        if not self.closed:
            self.pipe.ping()

    def backlog(self) -> int:
        return self.pipe.backlog()

    def cut(self) -> bool:
        return self.pipe.cut

    def watch_overflow(self) -> None:
        self.pipe.watch_overflow()

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        if self.closed:
            return
        for sub in list(self.stomp.by_channel.get(channel, ())):
            frame = self.stomp.reset(sub, reason, cursor)
            if frame is not None:
                self.wire.send(frame)

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        if not self.closed:
            frame = self.stomp.presence_event(channel, kind, orjson.dumps(event))
            if frame is not None:
                self.wire.send(frame)

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        self.shared.pop(channel, None)
        if not self.closed:
            frame = self.stomp.unsubscribed(channel, reason)
            if frame is not None:
                self.wire.send(frame)

    async def hub_subscribe(
        self, session: Session, channel: str, since: StreamPosition | None, *, server: bool
    ) -> None:
        if self.closed or channel in self.stomp.by_channel:
            return
        sub = self.stomp.hub_subscription(channel)
        fmt = self.wire.formats[(self.stomp.escaped, False)]

        def ready(result: SubscribeResult) -> None:
            sub.start(result.start)
            frame = self.stomp.subscribed(sub, Cursor.single(channel, result.start).encode())
            if frame is not None and not self.closed:
                self.wire.send(frame)

        try:
            await session.subscribe(
                channel,
                fmt,
                self.wire.push_for(sub.prefix),
                since=since,
                on_ready=ready,
                server=server,
            )
        except ClarionError:
            # Refused: the hub's unsubscribe signal (with the error code) names this id, unless
            # the channel is held otherwise (or the session is over): then it is only forgotten.
            if session.closed or channel in session.subscriptions:
                self.stomp.forget(sub)
            raise
        except BaseException:
            self.stomp.forget(sub)
            raise

    def close(self, code: int, reason: str) -> None:
        """End the connection: an ``ERROR`` first unless the client asked to leave."""
        if self.closed:
            return
        self.closed = True
        for timer in (self._handshake_timer, self._beat_timer, self._partial_timer):
            if timer is not None:
                timer.cancel()
        frame = None
        if code != CloseCode.NORMAL:
            frame = self.stomp.error(
                reason,
                code=disconnect_for(code).reason.replace(" ", "_"),
                headers=self._close_headers(code),
            )
        self.stomp.close()
        # The ERROR goes as the pipe's last message: what is queued may be dropped (a slow
        # reader's), the reason why never is.
        self.pipe.close(code, reason, frame)
        if self.session is not None and not self._finishing and not self._pending:
            # The session is over, the socket not yet: it counts as one without a session.
            self._pending = True
            self.hub.pending.hold(self._pending_key)

    @staticmethod
    def _close_headers(code: int) -> tuple[tuple[str, str], ...]:
        reconnect = "true" if disconnect_for(code).reconnect else "false"
        return (("x-close-code", str(code)), ("x-reconnect", reconnect))

    # ---- failures -------------------------------------------------------------------------------

    def fail(self, exc: ClarionError, receipt: str | None = None) -> None:
        """Answer ``exc`` with an ``ERROR`` frame and close the connection."""
        if self.closed:
            return
        self.hub.stats.errors[exc.code] += 1
        code = exc.rule.close
        frame = self.stomp.error(
            exc.message, code=exc.code, receipt_id=receipt, headers=self._close_headers(code)
        )
        if frame is not None:
            self.wire.send(frame)
        self.end(code, exc.message)

    def end(self, code: int, reason: str) -> None:
        if self.session is not None:
            self.session.close(code, reason)
        else:
            self.close(code, reason)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self.stomp.state is State.AWAITING_CONNECT and not self.closed:
            limit = self.hub.settings.limits.handshake_timeout
            self.fail(
                ClarionError(
                    f"no CONNECT frame within {limit:g} seconds", code=ErrorCode.HANDSHAKE_TIMEOUT
                )
            )

    def _partial_expired(self) -> None:
        self._partial_timer = None
        if self.stomp.pending_bytes and not self.closed:
            limit = self.hub.settings.limits.pong_timeout
            self.fail(
                RemoteProtocolError(
                    f"incomplete frame: no NUL octet within {limit:g} seconds",
                    code=ErrorCode.INCOMPLETE_FRAME,
                )
            )

    def _watch_partial(self, completed: bool) -> None:
        """A frame split across messages must end within ``pong_timeout`` of its start.

        ``completed``: frames ended in the bytes just read, so the unfinished one is new.
        """
        timer = self._partial_timer
        if timer is not None and (completed or not self.stomp.pending_bytes):
            timer.cancel()
            self._partial_timer = timer = None
        if timer is None and self.stomp.pending_bytes and self.stomp.state is State.CONNECTED:
            self._partial_timer = self._loop.call_later(
                self.hub.settings.limits.pong_timeout, self._partial_expired
            )

    def _beat(self) -> None:
        self._beat_timer = None
        if self.closed:
            return
        self.wire.heart_beat()
        interval = self.stomp.heart_beat.send_ms / 1000
        self._beat_timer = self._loop.call_later(interval, self._beat)

    # ---- client frames ---------------------------------------------------------------------------

    async def receive(self, message: Message) -> None:
        if self.closed:
            return
        self.last_received = time.monotonic()
        data = message.get("bytes")
        if data is None:
            data = (message.get("text") or "").encode()
        await self.feed(data)

    async def feed(self, data: bytes) -> None:
        self._receipt = None
        completed = False
        try:
            self.stomp.receive_data(data)
            while not self.closed:
                self._receipt = None
                event = self.stomp.next_event()
                if event is None:
                    break
                completed = True
                await self.dispatch(event)
                self._frames += 1
                if self._frames >= FRAMES_PER_CALL:
                    # Frames packed in messages: other connections get their turn between
                    # batches, as between the WebSocket frames of one read.
                    self._frames = 0
                    await asyncio.sleep(0)
        except ClarionError as exc:
            receipt = getattr(exc, "receipt_id", None) or self._receipt
            self.fail(exc, receipt)
        except Exception as exc:
            _failures.log(logging.ERROR, type(exc).__name__, "STOMP frame failed", exc_info=exc)
            self.fail(ClarionError("internal error", code=ErrorCode.INTERNAL), self._receipt)
        if not self.closed:
            self._watch_partial(completed)

    async def dispatch(self, event: Event) -> None:
        if isinstance(event, Connect):
            await self.connect(event)
            return
        session = self.session
        assert session is not None  # the state table admits nothing else before CONNECT
        self._receipt = event.receipt
        if isinstance(event, Send | Ack) and event.transaction is not None:
            if isinstance(event, Send):  # refused now rather than at COMMIT
                self.hub.auth.check_publish(session.credentials, event.channel)
            self._reply(event.receipt)  # held until COMMIT
        elif isinstance(event, Send):
            pub = await self.publish(session, event)
            if pub.ephemeral:  # no place in the stream: no cursor to give
                self._reply(event.receipt, ("x-ephemeral", "true"))
            else:
                self._reply(event.receipt, ("x-cursor", self.hub.cursor_of(pub)))
        elif isinstance(event, Commit):
            # In the order the frames arrived; a SEND that fails now ends the connection like
            # any failed SEND, after the ones before it were published.
            for held in event.frames:
                if isinstance(held, Send):
                    await self.publish(session, held)
                else:
                    self.stomp.apply_ack(held)
            self._reply(event.receipt)
        elif isinstance(event, Begin | Abort):
            self._reply(event.receipt)
        elif isinstance(event, Subscribe):
            session.take_command("SUBSCRIBE")
            await self.subscribe(session, event)
        elif isinstance(event, Unsubscribe):  # never refused (see websocket.py)
            sub = event.subscription
            if sub is not None:
                shared = self.shared.get(sub.channel)
                if shared is not None:
                    shared.remove(sub)
                if sub.channel not in self.stomp.by_channel:
                    self.shared.pop(sub.channel, None)
                    await session.unsubscribe(sub.channel)
                cursor = acked_cursor(sub)
                self._reply(event.receipt, *([("x-cursor", cursor)] if cursor else []))
            else:
                self._reply(event.receipt)
        elif isinstance(event, Ack):
            cursor = acked_cursor(event.subscription) if event.subscription else None
            self._reply(event.receipt, *([("x-cursor", cursor)] if cursor else []))
        elif isinstance(event, Disconnect):
            self._reply(event.receipt)
            self.end(CloseCode.NORMAL, "normal")

    async def publish(self, session: Session, event: Send) -> Publication:
        pub: Publication = await session.publish(
            event.channel,
            event.data,
            idempotency_key=event.idempotency_key,
            attrs=event.attrs,
            ephemeral=event.ephemeral,
            key=event.key,
        )
        return pub

    def _reply(self, receipt: str | None, *headers: tuple[str, str]) -> None:
        if receipt is not None and not self.closed:
            self.wire.send(self.stomp.receipt(receipt, headers))

    async def connect(self, event: Connect) -> None:
        hub = self.hub
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        # Browsers cannot set CONNECT headers from every library: fall back to the upgrade
        # request's token (Authorization header, token= query parameter, cookie).
        if event.token:
            credentials = hub.auth.verify(event.token)
        elif self.upgrade_refusal is not None:
            raise self.upgrade_refusal
        elif self.upgrade_token:
            credentials = hub.auth.verify_request(self.upgrade_token)
        else:
            credentials = hub.auth.anonymous()
        if hub.hooks is not None:
            credentials = await hub.authenticate(credentials, "stomp")
            if self.closed:
                return
        self.session = hub.open_session(self, credentials, self.address)
        self.unpend()
        self.wire.send(self.stomp.connected(self.session.id, SERVER, credentials.user))
        hub.subscribe_claimed(self.session)
        if event.heart_beat.send_ms:
            self._beat_timer = self._loop.call_later(event.heart_beat.send_ms / 1000, self._beat)

    async def subscribe(self, session: Session, event: Subscribe) -> None:
        sub = event.subscription
        if len(self.stomp.by_channel[sub.channel]) > 1:
            try:
                # Another subscription holds the channel (the client's own, or one the backend
                # made, which grants the client nothing): this one is asked about as any.
                await self.hub.authorize_read(
                    session.credentials, sub.channel, session.transport.kind, session.id
                )
                if session.closed:
                    self.stomp.forget(sub)
                    return
                await subscribe_shared(self, session, event)
            except BaseException:
                self.stomp.forget(sub)
                raise
            return
        fmt = self.wire.formats[(self.stomp.escaped, sub.needs_ack)]

        def ready(result: SubscribeResult) -> None:
            sub.start(result.start)
            cursor = Cursor.single(sub.channel, result.start).encode()
            self._reply(event.receipt, ("x-cursor", cursor))

        try:
            await session.subscribe(
                sub.channel,
                fmt,
                self.wire.push_for(sub.prefix),
                since=event.since,
                latest=event.latest,
                on_ready=ready,
            )
        except BaseException:
            self.stomp.forget(sub)
            raise

    def admit(self) -> bool:
        """Count this socket against the caps for sockets before CONNECT; refuse it if over."""
        self._pending = self.hub.pending.admit(self._pending_key)
        if not self._pending:
            self.fail(
                LimitExceeded(
                    "too many connections without CONNECT from this address",
                    code=ErrorCode.TOO_MANY_CONNECTIONS,
                )
            )
        return self._pending

    def unpend(self) -> None:
        if self._pending:
            self._pending = False
            self.hub.pending.release(self._pending_key)

    def finish(self) -> None:
        """The socket is gone: release the session (idempotent)."""
        self._finishing = True
        self.end(CloseCode.NORMAL, "normal")
        self.unpend()
        self.pipe.release()
        # The session names this connection as its transport, and each shared channel names
        # it too: kept, each would be a cycle.
        self.session = None
        self.shared.clear()


class StompEndpoint(WebSocketEndpoint):
    """``/stomp``: STOMP over WebSocket."""

    def subprotocol(self, offered: list[str]) -> str | None:
        return select_subprotocol(offered)

    async def open(self, scope: dict[str, Any], pipe: Pipe) -> StompConnection:
        hub = self.hub
        connection = StompConnection(hub, scope, pipe)

        def overflow() -> None:
            if connection.session is not None:
                hub.overflow(connection.session)
            else:
                connection.close(CloseCode.SLOW, disconnect_for(CloseCode.SLOW).reason)

        pipe.on_overflow = overflow
        connection.admit()  # refused: an ERROR frame and 4503, then the close handshake
        return connection
