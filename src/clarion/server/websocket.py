"""One WebSocket connection after an ``Upgrade: websocket`` request: the ASGI ``websocket`` scope.

A plain handshake (nearly all of them) is checked and answered by
:mod:`clarion.protocol.handshake`, any other by the ``websockets`` library's sans-I/O
:class:`~websockets.server.ServerProtocol`, which writes the refusals. Inbound frames after it go
to clarion's own :class:`~clarion.protocol.wsreader.FrameReader` (a few slots per idle
connection, where the library's protocol object kept a generator, a buffer and a UUID); this
module moves bytes between them, the socket and the ASGI app, and owns timers and
backpressure. Every outgoing byte, whether from ``websocket.send``, the fast path, the handshake
or the reader (pongs, close frames), goes through the :class:`~clarion.server.fastws.Outbox` so
that the wire order is the call order.

Long on purpose: one connection's state machine — handshake, the app's receive and send, message
reassembly, close timers, flow control — reads best in one class.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeaderValue
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from clarion.asgitypes import Message, Scope
from clarion.core.limits import LogLimit, excerpt
from clarion.protocol import deflate, handshake
from clarion.protocol.codes import clip_reason
from clarion.protocol.frames import OP_BINARY, OP_TEXT, binary_frame, text_frame
from clarion.protocol.wsreader import FAILED, Closed, FrameReader, Pong
from clarion.server import flow
from clarion.server.config import ClientDisconnected, Config, Registry, http_date, reset
from clarion.server.fastws import FAST_WEBSOCKET_EXTENSION, Outbox

DENIAL_EXTENSION = "websocket.http.response"  # ASGI: refusing a handshake with a response

log = logging.getLogger("clarion.server.websocket")
# Tracebacks a peer may cause per request or frame: one per kind of failure a minute.
_failures = LogLimit(log)
# websockets logs every open and close at INFO; keep that under our tree, one level down.
protocol_log = logging.getLogger("clarion.server.websocket.protocol")
# The protocol objects log every connection's opening and closing at INFO: with thousands of
# connections that is the log. Lower it explicitly (logging config) to see them.
if protocol_log.level == logging.NOTSET:
    protocol_log.setLevel(logging.WARNING)

INBOUND_HIGH = 32  # queued messages at which reading from the socket pauses
INBOUND_LOW = 8  # ... and resumes
# Queued bytes (since the queue was last empty) at which reading pauses, until it empties: 32
# messages of max_message_bytes would be 2 MiB, and compressed they take one read.
INBOUND_HIGH_BYTES = 256 * 1024
# Messages handed to a listener before its task lets the loop turn: a handler that never
# suspends would otherwise run the whole queue in one turn.
HAND_OVER_BATCH = 16
SEND_HIGH = 65536  # queued bytes at which websocket.send writes now instead of next iteration
ABNORMAL = 1006
SERVICE_RESTART = 1012
PING = b"\x89\x00"  # an empty ping frame
OVERFLOW = 1008  # no standard "too slow" code; apps choose their own via set_send_limit


class Phase(enum.Enum):
    CONNECTING = "connecting"  # handshake received, app not yet answered
    OPEN = "open"
    CLOSING = "closing"  # a close frame was sent or received
    CLOSED = "closed"  # socket gone


class WebSocketProtocol(Outbox, asyncio.Protocol):
    """The asyncio protocol of one upgraded connection; also the fast-path connection object."""

    __slots__ = (
        "_close_timer",
        "_denial",
        "_disconnected",
        "_drain",
        "_draining",
        "_early",
        "_handshake",
        "_inbound",
        "_inbound_bytes",
        "_listener",
        "_loop",
        "_parse_scheduled",
        "_peer",
        "_reader",
        "_reading_paused",
        "_registry",
        "_request",
        "_response",
        "_waiter",
        "_write_blocked",
        "config",
        "deflate_bits",
        "last_activity",
        "phase",
        "scope",
    )

    def __init__(
        self,
        config: Config,
        registry: Registry,
        scope: Scope,
        method: str,
        target: bytes,
        version: str,
    ) -> None:
        self.config = config
        self._registry = registry
        client = scope.get("client")
        self._peer = str(client[0]) if client else ""  # what log lines are limited by
        self.scope: Scope | None = scope  # until the app has it; its headers are the request's
        # The request line until the handshake is checked.
        self._request: tuple[str, bytes, str] | None = (method, target, version)
        self._loop = asyncio.get_running_loop()
        self.phase = Phase.CONNECTING
        self.last_activity = time.monotonic()
        # permessage-deflate: the window the hub compresses within, 0 when not negotiated.
        self.deflate_bits = 0
        # Until the app accepts or refuses: the library's protocol and response, or (the plain
        # case, without the library) the plain upgrade alone.
        self._handshake: ServerProtocol | None = None
        self._response: Response | handshake.PlainUpgrade | None = None
        self._reader: FrameReader | None = None
        # A list, not a deque: an idle connection's empty deque still holds a 64-slot block,
        # and this queue is short (INBOUND_HIGH) so pop(0) costs nothing.
        self._inbound: list[Message] = [{"type": "websocket.connect"}]
        self._inbound_bytes = 0  # received since the queue was last empty
        self._waiter: asyncio.Future[None] | None = None
        # Set by listen(): inbound messages are handed to it instead of to receive().
        self._listener: Callable[[Message], Awaitable[None]] | None = None
        self._draining = False  # a task is handing the inbound messages to the listener
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._parse_scheduled = False  # the reader's backlog is parsed in the next turn
        self._write_blocked = False  # reading paused until the peer reads what is queued
        self._early = b""  # frames that came before the app accepted (rare: no buffer kept)
        self._disconnected = False
        self._close_timer: asyncio.TimerHandle | None = None
        # The app's own refusal while it is being sent: status, headers, body parts.
        self._denial: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.init_outbox(self._loop, self.config.send_limit)
        self.allow_direct_writes()  # every byte of a WebSocket goes through the outbox
        self._registry.connections.add(self)
        request, self._request = self._request, None
        scope = self.scope
        assert request is not None and scope is not None
        method, target, version = request
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        # The library logs each handshake (at INFO): whoever asks for that gets its path.
        plain = None
        if not protocol_log.isEnabledFor(logging.INFO):
            plain = handshake.plain_upgrade(method.encode(), version, headers)
        if plain is not None:
            self._response = plain
            offers, protocols = plain.extensions, plain.protocols
        else:
            library = ServerProtocol(logger=protocol_log)
            raw = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers])
            response = library.accept(
                Request(target.decode("latin-1"), raw, method, f"HTTP/{version}")
            )
            if response.status_code != 101:
                # Not a valid handshake (bad key, version, method): websockets wrote the answer.
                refusal = library.handshake_exc
                self._registry.handshakes.log(
                    logging.INFO,
                    self._peer,
                    "websocket handshake refused from %s: %s",
                    scope.get("client"),
                    excerpt(refusal, 120),
                )
                if refusal is not None:
                    # Its traceback, and its context's, hold the frames that led here, which
                    # hold this connection: cycles only the collector would free.
                    refusal.__traceback__ = refusal.__context__ = refusal.__cause__ = None
                self._send_handshake_failure(library, response)
                return
            self._handshake = library
            self._response = response
            offers = raw.get_all("Sec-WebSocket-Extensions")
            protocols = raw.get_all("Sec-WebSocket-Protocol")
        if self.config.permessage_deflate:
            agreement = deflate.negotiate(offers)
            if agreement is not None:
                if plain is not None:
                    plain.headers.append(
                        (b"Sec-WebSocket-Extensions", agreement.response.encode("latin-1"))
                    )
                else:
                    response.headers["Sec-WebSocket-Extensions"] = agreement.response
                self.deflate_bits = agreement.window_bits
        subprotocols = [p.strip() for value in protocols for p in value.split(",") if p.strip()]
        scope["subprotocols"] = subprotocols
        scope["extensions"] = {
            FAST_WEBSOCKET_EXTENSION: {"connection": self},
            DENIAL_EXTENSION: {},  # an app may refuse the handshake with a response of its own
        }
        task = self._registry.start(self._run(), "clarion-websocket")
        task.add_done_callback(self._app_done)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.phase is Phase.CONNECTING:
            # Frames sent before the app accepted wait; so does the socket.
            self._early += data
            self._pause_reading()
            return
        if self._reader is None:
            return
        self._feed(data)

    def eof_received(self) -> bool | None:
        reader = self._reader
        if reader is not None and self.phase is not Phase.CLOSED:
            reader.receive_eof()
            self.queue_eof()  # the server closes its side too
            self._deliver_disconnect()
        # Write what is queued (a close echo) before the transport closes itself.
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self._registry.connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.discard_outbox()
        self._deliver_disconnect()
        flow.release(self._drain)

    def pause_writing(self) -> None:
        self._drain = flow.paused(self._loop, self._drain)

    def resume_writing(self) -> None:
        flow.release(self._drain)
        if self._write_blocked:
            self._write_blocked = False
            if self.phase is not Phase.CONNECTING and not self._inbound_full():
                self._resume_reading()

    # -- the fast path (FastWebSocket); push/push_text/buffered_bytes/set_send_limit in Outbox -

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSING or self.phase is Phase.CLOSED

    def push_text(self, payload: bytes) -> None:
        bits = self.deflate_bits
        self.push(deflate.frame(payload, OP_TEXT, bits) if bits else text_frame(payload))

    def ping(self) -> None:
        if self._reader is not None and self.phase is Phase.OPEN:
            self.queue_raw(PING, counted=True)
            self.flush_if_over()

    def close(self, code: int, reason: str = "") -> None:
        reader = self._reader
        if reader is None or self.phase is not Phase.OPEN:
            return
        frame = reader.send_close(code, clip_reason(reason))  # ValueError: a bad code
        self.phase = Phase.CLOSING
        self.seal()  # what was queued goes first, nothing pushed later
        self.queue_raw(frame, counted=True)
        self._arm_close_timer()
        self.flush_if_over()

    def listen(self, handler: Callable[[Message], Awaitable[None]]) -> None:
        if self.phase is Phase.CONNECTING:
            raise RuntimeError("listen before websocket.accept")
        self._listener = handler
        if self._inbound:
            self._wake()

    async def _hand_over(self, handler: Callable[[Message], Awaitable[None]]) -> None:
        """Await the listener on each waiting message; the task ends once none waits."""
        handled = 0
        try:
            while self._inbound:
                handled += 1
                if handled > HAND_OVER_BATCH:
                    handled = 1
                    await asyncio.sleep(0)
                    if not self._inbound:
                        break
                message = self._take()
                try:
                    await handler(message)
                except Exception as exc:
                    _failures.log(
                        logging.ERROR,
                        type(exc).__name__,
                        "exception in ASGI websocket application",
                        exc_info=exc,
                    )
                    if self.phase is Phase.OPEN:
                        self.close(1011)
                if message["type"] == "websocket.disconnect":
                    # The last message: the handler (which holds this connection) is let go,
                    # so that the ended connection is freed by reference counting, not left in
                    # a cycle for the collector's walk over every live object.
                    self._listener = None
        finally:
            self._draining = False

    # -- Outbox hooks -----------------------------------------------------------------------

    def on_eof_flushed(self) -> None:
        # The close handshake is over on our side: half-close and give the peer a moment to
        # close its side (reading and discarding meanwhile) before dropping the socket.
        transport = self.transport
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                # The peer is already gone (ENOTCONN): nothing is left to half-close.
                transport.close()
                return
            self._resume_reading()
            self._arm_close_timer()
        else:
            transport.close()

    def on_backlog(self) -> None:
        # Over the send budget: read nothing more until the peer reads. Whatever it sends
        # (pings above all) would only make us write more; what it reads lets us go on.
        # Only while the transport reports its buffer above its high-water mark: then
        # resume_writing() is sure to come once it drains.
        if not self._write_blocked and flow.is_paused(self._drain):
            self._write_blocked = True
            self._pause_reading()

    def on_overflow_default(self) -> None:
        self._log_overflow(
            logging.INFO, "websocket send buffer over %d bytes: closing", self._limit
        )
        self.close(OVERFLOW, "send buffer overflow")

    def on_hard_overflow(self) -> None:
        if self.phase is Phase.OPEN:
            self._log_overflow(
                logging.WARNING,
                "websocket send buffer over twice its limit of %d bytes: closing",
                self._limit,
            )
            self.close(OVERFLOW, "send buffer overflow")
        elif self.phase is Phase.CLOSING:
            # Closing, and the peer still makes us write (pongs to its pings) without reading
            # what is queued: the close handshake cannot finish, drop the connection now.
            self._log_overflow(
                logging.INFO, "websocket peer makes the hub write while it does not read: dropped"
            )
            self.abort()

    def _log_overflow(self, level: int, msg: str, *args: object) -> None:
        self._registry.overflows.log(level, self._peer, msg, *args)

    # -- registry.Connection ----------------------------------------------------------------

    def is_idle(self) -> bool:
        return False

    def shutdown(self) -> None:
        if self.phase is Phase.CONNECTING:
            self._reject(503, "Service Unavailable\n")
        else:
            self.close(SERVICE_RESTART, "server shutting down")

    def abort(self) -> None:
        reset(self.transport)

    # -- ASGI -------------------------------------------------------------------------------

    async def _run(self) -> None:
        # No local holds the scope while the app runs: the app keeps it as long as it needs it.
        await self.config.app(self._hand_over_scope(), self.receive, self.send)

    def _hand_over_scope(self) -> Scope:
        scope, self.scope = self.scope, None
        assert scope is not None
        return scope

    def _app_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self.abort()
            return
        exc = task.exception()
        if exc is None and self._listener is not None:
            return  # the app listens: the connection goes on without its coroutine
        if isinstance(exc, ClientDisconnected):
            # The ASGI way of learning the peer is gone, left to propagate: nothing to report.
            log.debug("websocket app ended on a closed connection")
        elif exc is not None:
            _failures.log(
                logging.ERROR,
                type(exc).__name__,
                "exception in ASGI websocket application",
                exc_info=exc,
            )
        if self.phase is Phase.CONNECTING:
            if exc is None:
                self._reject(403, "Forbidden\n")
            else:
                self._reject(500, "Internal Server Error\n")
        elif self.phase is Phase.OPEN:
            self.close(1000 if exc is None else 1011)

    async def receive(self) -> Message:
        if self._listener is not None:
            raise RuntimeError("receive() on a websocket that listens")
        while not self._inbound:
            if self._disconnected:
                return {"type": "websocket.disconnect", "code": ABNORMAL, "reason": ""}
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._take()

    def _take(self) -> Message:
        inbound = self._inbound
        message = inbound.pop(0)
        if not inbound:
            self._inbound_bytes = 0
        if (
            self._reading_paused
            and len(inbound) <= INBOUND_LOW
            and self._inbound_bytes < INBOUND_HIGH_BYTES
            and self.phase is not Phase.CONNECTING
        ):
            self._resume_reading()
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if self.phase is not Phase.OPEN:
                if self.phase is Phase.CONNECTING:
                    raise RuntimeError("websocket.send before websocket.accept")
                raise ClientDisconnected("websocket is closed")
            text = message.get("text")
            bits = self.deflate_bits
            if text is not None:
                data = text.encode()
                frame = deflate.frame(data, OP_TEXT, bits) if bits else text_frame(data)
            else:
                data = message.get("bytes") or b""
                frame = deflate.frame(data, OP_BINARY, bits) if bits else binary_frame(data)
            self.queue_raw(frame)
            if self._out_bytes >= SEND_HIGH:
                self.flush()
            await flow.wait(self._drain)
        elif kind == "websocket.accept":
            if self._denial is not None:
                raise RuntimeError("websocket.accept after websocket.http.response.start")
            if self.phase is not Phase.CONNECTING:
                if self._disconnected:  # the client left (or shutdown refused it) meanwhile
                    raise ClientDisconnected("websocket is closed")
                raise RuntimeError(f"websocket.accept while {self.phase.value}")
            self._accept(message.get("subprotocol"), message.get("headers") or ())
        elif kind == "websocket.http.response.start":
            if self._disconnected:  # the client left meanwhile: nobody to refuse
                raise ClientDisconnected("websocket is closed")
            if self.phase is not Phase.CONNECTING or self._denial is not None:
                raise RuntimeError(f"{kind} after the handshake was answered")
            self._denial = (message["status"], list(message.get("headers") or ()), [])
        elif kind == "websocket.http.response.body":
            if self._denial is None or self.phase is not Phase.CONNECTING:
                if self._disconnected and self._denial is None:
                    raise ClientDisconnected("websocket is closed")
                raise RuntimeError(f"{kind} outside a response being sent")
            self._denial[2].append(message.get("body") or b"")
            if not message.get("more_body", False):
                self._deny(*self._denial)
        elif kind == "websocket.close":
            if self.phase is Phase.CONNECTING:
                self._reject(403, "Forbidden\n")
            elif self.phase is Phase.OPEN:
                self.close(message.get("code") or 1000, message.get("reason") or "")
            # Closing twice, or after the peer left, is harmless.
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a websocket")

    # -- handshake --------------------------------------------------------------------------

    def _accept(self, subprotocol: str | None, headers: Any) -> None:
        library, response = self._handshake, self._response
        if library is None:
            plain = response
            assert isinstance(plain, handshake.PlainUpgrade)
            extra = plain.headers
            if subprotocol is not None:
                extra.append(
                    (b"Sec-WebSocket-Protocol", _valid("Sec-WebSocket-Protocol", subprotocol))
                )
            for name, value in headers:
                extra.append((name, _valid(name.decode("latin-1"), value.decode("latin-1"))))
            self.queue_raw(handshake.switching_protocols(http_date(), plain.accept, extra))
        else:
            assert isinstance(response, Response)
            if subprotocol is not None:
                response.headers["Sec-WebSocket-Protocol"] = subprotocol
            for name, value in headers:
                response.headers[name.decode("latin-1")] = value.decode("latin-1")
            library.send_response(response)
            for chunk in library.data_to_send():
                self.queue_raw(chunk)
        self._reader = FrameReader(self.config.max_message_bytes, inflate=bool(self.deflate_bits))
        self._handshake = self._response = None
        self.phase = Phase.OPEN
        early, self._early = self._early, b""
        if early:
            self._feed(early)
        if self.phase is Phase.OPEN and not self._inbound_full():
            self._resume_reading()

    def _reject(self, status: int, text: str) -> None:
        if self.phase is not Phase.CONNECTING or self._response is None:
            return
        library = self._handshake
        if library is None:  # the plain case: the library writes refusals
            library = ServerProtocol(logger=protocol_log)
            library.accept_called = True
        self._send_handshake_failure(library, library.reject(status, text))

    def _deny(self, status: int, raw: list[tuple[bytes, bytes]], body: list[bytes]) -> None:
        """The app's own refusal of the handshake (the ASGI denial response extension)."""
        if self.phase is not Phase.CONNECTING or self._response is None:
            return
        library = self._handshake
        if library is None:
            library = ServerProtocol(logger=protocol_log)
            library.accept_called = True
        content = b"".join(body)
        headers = Headers()
        for name, value in raw:
            if name.lower() not in (b"content-length", b"connection", b"transfer-encoding"):
                headers[name.decode("latin-1")] = value.decode("latin-1")
        headers["Content-Length"] = str(len(content))
        headers["Connection"] = "close"
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        self._send_handshake_failure(library, Response(status, reason, headers, content))

    def _send_handshake_failure(self, handshake: ServerProtocol, response: Response) -> None:
        handshake.send_response(response)
        self._handshake = self._response = None
        self.phase = Phase.CLOSING
        self._disconnected = True
        self._inbound.clear()
        self._wake()
        data = b"".join(handshake.data_to_send())
        # send_response ends with EOF: an HTTP error response closes the connection.
        self.transport.write(data)
        self.transport.close()

    # -- inbound ----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse what came (``b""``: the reader's backlog), within the reader's budget."""
        reader = self._reader
        assert reader is not None
        for event in reader.receive_data(data):
            kind = type(event)
            if kind is str:
                self._inbound_bytes += len(event)  # type: ignore[arg-type]  # kind narrows it
                self._deliver({"type": "websocket.receive", "text": event})
            elif kind is bytes:
                self._inbound_bytes += len(event)  # type: ignore[arg-type]  # kind narrows it
                self._deliver({"type": "websocket.receive", "bytes": event})
            elif kind is Pong:
                self.queue_raw(cast(Pong, event).frame, counted=True)
            else:  # the peer closed, or broke the protocol: the last event
                closed = cast(Closed, event)
                if closed.failed:
                    log.debug("websocket closed on a protocol error: %s", closed.reason)
                    # Nothing more is read (RFC 6455 §7.1.7): a peer that goes on sending after
                    # it broke the protocol fills its socket buffers, not the hub's time, until
                    # the close timer ends the connection.
                    self._pause_reading()
                self.phase = Phase.CLOSING
                self.seal()
                if closed.frame is not None:
                    self.queue_raw(closed.frame, counted=True)
                self.queue_eof()  # the server closes the TCP connection first (RFC 6455 §7.1.1)
                self._arm_close_timer()
                self._deliver_disconnect(closed.code, closed.reason)
        self.flush_if_over()
        if (
            reader.backlog
            or len(self._inbound) >= INBOUND_HIGH
            or self._inbound_bytes >= INBOUND_HIGH_BYTES
        ):
            # The socket waits while frames already read are parsed: first the queue drains
            # (_take), then the backlog goes on in a later turn (_resume_reading).
            self._pause_reading()
            if not self._inbound_full():
                self._resume_reading()

    def _inbound_full(self) -> bool:
        return len(self._inbound) >= INBOUND_HIGH or self._inbound_bytes >= INBOUND_HIGH_BYTES

    def _parse_backlog(self) -> None:
        self._parse_scheduled = False
        reader = self._reader
        if reader is None or not reader.backlog or self.phase is Phase.CLOSED:
            return
        if self._write_blocked or self._inbound_full():
            return  # resume_writing() or _take() comes back here
        self._feed(b"")
        if not reader.backlog and not self._inbound_full():
            self._resume_reading()

    def _deliver(self, message: Message) -> None:
        self._inbound.append(message)
        self._wake()

    def _deliver_disconnect(self, code: int = ABNORMAL, reason: str = "") -> None:
        """The last message. What the peer sent before it is still handled, however it left:
        a publish sent just before a drop is made; the queue's bounds keep that work small,
        and bytes not yet parsed are not (a closed connection parses no backlog)."""
        if self._disconnected:
            return
        self._disconnected = True
        self._inbound.append({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._wake()

    def _wake(self) -> None:
        listener = self._listener
        if listener is not None:
            if not self._draining:
                self._draining = True
                self._registry.start(self._hand_over(listener), "clarion-websocket-inbound")
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- outbound ---------------------------------------------------------------------------

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self.phase is not Phase.CLOSED:
            self._close_timer = self._loop.call_later(
                self.config.close_timeout, self._on_close_timeout
            )

    def _on_close_timeout(self) -> None:
        self._close_timer = None
        # The peer did not finish the close handshake: reset, do not wait for it to read.
        self.abort()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._write_blocked:
            return  # resume_writing() reads again
        reader = self._reader
        if reader is not None and reader.state == FAILED:
            return
        if reader is not None and reader.backlog:
            # Frames already read come first, in a later turn: the socket after them.
            if not self._parse_scheduled:
                self._parse_scheduled = True
                self._loop.call_soon(self._parse_backlog)
            return
        if self._reading_paused and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()


def _valid(name: str, value: str) -> bytes:
    """A response header's value as the library would write it, or its InvalidHeaderValue."""
    if handshake.VALID_VALUE.fullmatch(value) is None:
        raise InvalidHeaderValue(name, value)
    return value.encode("latin-1")
