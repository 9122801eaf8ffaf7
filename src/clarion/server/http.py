"""One TCP connection speaking HTTP/1.1: parsing, keep-alive, pipelining, timeouts, upgrade.

``httptools`` parses; this protocol turns each request head into an ASGI scope and a
:class:`~clarion.server.cycle.HttpCycle`, runs one cycle at a time (pipelined requests wait,
with reading paused: at most ``MAX_QUEUED`` parsed, the rest of a read kept unparsed until
they are answered), and hands the socket to
:class:`~clarion.server.websocket.WebSocketProtocol` on ``Upgrade: websocket``.

Limits, each answered before the app sees anything: request head bytes and header count (431),
malformed requests (400), declared or streamed bodies over ``max_body_bytes`` (413), a head not
complete within ``handshake_timeout`` (closed: slowloris), a declared body not complete within
``body_timeout`` of its head (408 if the app still waits for it, else closed), and an idle
keep-alive connection after ``keepalive_timeout`` (closed), a response the client reads
nothing of for ``send_timeout`` (reset). A timer runs in every state in
which the connection waits on its client; timers do not run out while the server is the one
not reading (a pipelined request waiting for the response before it).

Connections that wait on their client count against ``max_pending_per_ip`` and
``max_pending`` (a request being answered is the app's to count: SSE streams and long polls
are sessions); the file descriptor limit caps all connections, with a reserve. A connection
over a cap is answered 503 and closed, and the refusals are logged, at most once per 10 s.

Long on purpose: one connection's state machine — parser callbacks, pipelining,
flow control, timers — reads best in one class.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn, cast
from urllib.parse import unquote

import httptools

from clarion.asgitypes import DirectRoute, Scope
from clarion.protocol.numbers import ascii_int
from clarion.protocol.proxies import elsewhere
from clarion.server import fastws, flow
from clarion.server.config import ASGI_VERSION, Config, Registry, reset, unread, writable
from clarion.server.cycle import HttpCycle, error_response
from clarion.server.direct import DirectRequest
from clarion.server.flusher import flusher_for
from clarion.server.websocket import WebSocketProtocol
from clarion.tasks import READ_FIRST

WholeDirect = Callable[
    [bytes, dict[bytes, DirectRoute], int, int, int],
    tuple[DirectRoute, list[tuple[bytes, bytes]], int, int] | None,
]
# Used only while the compiled loops run (fastws.COMPILED: built, and from this source).
whole_direct: WholeDirect | None
try:
    from clarion.server._fastloop import whole_direct
except ImportError:  # built without a C compiler: every request goes through httptools
    whole_direct = None

log = logging.getLogger("clarion.server.http")

BODY_HIGH = 65536  # unread request body bytes at which reading pauses
# Requests parsed and waiting behind the one in flight, per connection. They are answered one
# at a time, so a request parsed long before its turn gains nothing and holds memory (its
# scope, headers and cycle: about 2 KB): 16 keep the next ones ready however quick the app,
# and what a client pipelines beyond them stays as it was read, unparsed, until they are
# answered. One read (up to 256 KiB) of tiny requests no longer becomes thousands of cycles.
MAX_QUEUED = 16
# No request is shorter: a three-letter method, a one-character target, the version and two
# line ends ("GET / HTTP/1.1\n\n"; the parser wants CRLF, which is longer).
MIN_REQUEST = 16
# Digits of the largest Content-Length the parser takes (2**64 - 1): longer is no length.
LENGTH_DIGITS = 20
# A body comes to the app in pieces, one Python call each: one per chunk of a chunked body,
# one per read of any other. Chunks of a byte each cost 130 times the CPU of the same bytes in
# one chunk. A body has FREE_PIECES pieces of any size, and MIN_PIECE bytes a piece beyond,
# on average: a body in crumbs is refused (400), one written in pieces as it is made is not.
FREE_PIECES = 64
MIN_PIECE = 64
# Seconds an answered connection reads and drops what its client still sends (a body we
# refused) before it is cut: the time for a client to see the answer and stop.
LINGER = 5.0

# A request in flight or waiting behind one: for the app (ASGI) or for a direct route.
InFlight = HttpCycle | DirectRequest

# With the compiled loops, a request for a direct route that a chunk holds whole is read by
# ``_fastloop.whole_direct`` instead of the parser's callbacks (eight calls into Python, one
# more per header) when it is written in the plainest way: exactly ``POST <path> HTTP/1.1``,
# header lines of a token, a colon, optional blanks and a value of visible characters (blanks
# inside only) ended by CRLF, one ``Content-Length``, no ``Transfer-Encoding``, ``Expect``,
# ``Upgrade`` or ``Proxy-Connection``, ``Connection`` only ``keep-alive``, the head under the
# limits. Any other request, and every request without the compiled loops, is httptools'.


class _Reject(Exception):
    """Raised from a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status


class _Upgrade:
    """A parsed ``Upgrade: websocket`` request waiting for the socket to be handed over."""

    __slots__ = ("leftover", "method", "scope", "target", "version")

    def __init__(self, scope: Scope, method: str, target: bytes, version: str) -> None:
        self.scope = scope  # its headers are the request's
        self.method = method
        self.target = target
        self.version = version
        self.leftover = bytearray()


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_between",
        "_body_due",
        "_body_left",
        "_body_max",
        "_body_timer",
        "_completing",
        "_counted",
        "_cycle",
        "_detached",
        "_direct",
        "_drain",
        "_head_bytes",
        "_head_due",
        "_head_timer",
        "_headers",
        "_idle_since",
        "_idle_timer",
        "_ignoring",
        "_in_head",
        "_key",
        "_linger_timer",
        "_loop",
        "_parser",
        "_parsing",
        "_pieces",
        "_pipeline",
        "_progress",
        "_raw_bytes",
        "_reading_paused",
        "_reject",
        "_resume",
        "_send_timer",
        "_unparsed",
        "_upgrade",
        "_url",
        "_whole",
        "client",
        "config",
        "flusher",
        "registry",
        "server",
        "transport",
    )

    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self._loop = asyncio.get_running_loop()
        self.flusher = flusher_for(self._loop)  # writes the direct routes' answers
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        # The head being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._raw_bytes = 0  # bytes of reads that completed nothing and brought no body bytes
        self._in_head = True
        self._between = True  # the parser is between two requests (none begun)
        self._progress = False  # this chunk completed a head or a message
        self._completing = False  # in on_message_complete, which settles the state after
        self._reject = 0
        # Requests.
        self._cycle: InFlight | None = None  # response in flight
        self._parsing: InFlight | None = None  # body being parsed
        self._pipeline: deque[InFlight | _Upgrade] = deque()
        # What was read behind MAX_QUEUED requests, parsed once they are answered (reading
        # is paused meanwhile), and the call that will parse it.
        self._unparsed = b""
        self._resume: asyncio.Handle | None = None
        self._body_left = 0  # bytes of a declared body still to come: no request head in them
        self._pieces = 0  # on_body calls for the request's body so far
        self._direct: dict[bytes, DirectRoute] = config.direct
        self._whole = whole_direct if self._direct and fastws.COMPILED else None
        self._body_max = min(BODY_HIGH, config.max_body_bytes)  # a direct request's body
        self._upgrade: _Upgrade | None = None
        self._detached = False  # the socket belongs to a WebSocketProtocol now
        self._ignoring = False  # the parser stopped (error, foreign upgrade): drop input
        # Flow control and timers.
        self._reading_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        # Loop time since when the connection idles (None: not idle). A new request does not
        # cancel the idle timer, which re-arms itself when it finds the connection busy or
        # idle for less than the timeout: keep-alive requests arm and cancel no timer each.
        self._idle_since: float | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        # A head or body is on its way: its timer is armed once the chunk that began it is
        # parsed, so a request that arrives whole in one read arms and cancels no timer.
        self._head_due = False
        self._body_due = False
        # Counted as waiting on its client (registry.pending), under this address key.
        self._counted = False
        self._key: str | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        # (Nagle's algorithm is already off: uvloop and asyncio set TCP_NODELAY on every TCP
        # transport they make.)
        self.transport = transport = cast(asyncio.Transport, transport)
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        registry, config = self.registry, self.config
        if self.client is not None:
            peer = self.client[0]
            self._key = peer if config.client_key is None else config.client_key(peer)
            if config.direct_local_only and elsewhere(peer):  # the app refuses it itself
                self._direct = {}
                self._whole = None
        budget = registry.descriptors
        if budget is not None and len(registry.connections) >= budget:
            registry.refusals.refused("descriptors", self._key, budget)
            self._refuse()
            return
        if not registry.pending.admit(self._key):
            self._refuse()
            return
        self._counted = True
        registry.connections.add(self)
        self._head_timer = self._loop.call_later(config.handshake_timeout, self._timed_out)

    def _refuse(self) -> None:
        # Over a cap: answer at once (a client that sends its request reads it) and close.
        self._ignoring = True
        self._detached = True  # nothing of ours to clean up
        del self._parser  # the cycle through its callbacks: see _hand_over
        self.transport.write(error_response(self.config, 503, b"Service Unavailable\n"))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._upgrade is not None:
            # Frames behind a pipelined upgrade wait for the handover.
            self._upgrade.leftover += data
            return
        if self._ignoring:
            return
        if self._unparsed:  # a read that was under way when reading paused: it waits too
            self._unparsed += data
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        while (
            self._whole is not None and self._between and self._cycle is None and not self._pipeline
        ):
            taken = self._whole_direct(data)
            if not taken:
                break
            if taken == len(data) or self._ignoring or self.transport.is_closing():
                return
            data = data[taken:]  # a pipelined request behind it
        while data:
            room = MAX_QUEUED - len(self._pipeline)
            if room <= 0:
                self._unparsed = data
                self.update_reading()
                break
            end = _span(data, room, self._body_left)
            if end < len(data):
                fed, data = data[:end], data[end:]
            else:
                fed, data = data, b""
            if not self._feed(fed, data):
                return
        if self._head_due:
            self._head_due = False
            if self._head_timer is None:
                self._head_timer = self._loop.call_later(
                    self.config.handshake_timeout, self._timed_out
                )
        if self._body_due:
            self._body_due = False
            self._arm_body_timer()

    def _feed(self, data: bytes, rest: bytes) -> bool:
        """Parse ``data`` (``rest`` follows it); False once the connection takes no more."""
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_parsed(data[exc.args[0] :] + rest)
            return False
        except httptools.HttpParserError:
            reject, self._reject = self._reject, 0
            self._error(reject or 400, self._parsing)
            return False
        if not self._progress and (self._in_head or self._parsing is not None):
            # httptools buffers an unfinished header or trailer line without telling us: bound
            # it here (a read that brought body bytes is progress).
            self._raw_bytes += len(data)
            if self._raw_bytes > self.config.max_header_bytes:
                self._error(431, self._parsing)
                return False
        return not (self._ignoring or self.transport.is_closing())

    def _parse_unparsed(self) -> None:
        self._resume = None
        data, self._unparsed = self._unparsed, b""
        if not data or self._detached or self._ignoring or self.transport.is_closing():
            return
        self._parse(data)
        self.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._unparsed = b""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.registry.connections.discard(self)
        self._uncount()
        if self._detached:
            return
        del self._parser  # the cycle through its callbacks: see _hand_over
        for cycle in (self._cycle, self._parsing, *self._pipeline):
            if cycle is not None and not isinstance(cycle, _Upgrade):
                cycle.disconnect()
        self._pipeline.clear()
        # Each request names this connection: one whose app still runs (a stream, a long poll)
        # would hold it, and be held by it, until a full collection. Nothing reads them now.
        self._cycle = self._parsing = None
        flow.release(self._drain)

    def pause_writing(self) -> None:
        self._drain = flow.paused(self._loop, self._drain)
        if self._send_timer is None and not self._detached:
            # The client takes none of what we write: it gets send_timeout to start again.
            self._send_timer = self._loop.call_later(self.config.send_timeout, self._send_stalled)
        self._recount()

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        flow.release(self._drain)
        self._recount()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._between = False
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._in_head = True
        self._idle_since = None
        self._head_due = True
        self._body_left = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.config.max_header_bytes:
            self._raise(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_bytes = self._head_bytes + len(name) + len(value) + 4
        config = self.config
        if not self._in_head:
            # A trailer, after a chunked body: not supported, so dropped. The headers are the
            # head's, which the app may have read already; its bytes count with the head's.
            if size > config.max_header_bytes:
                self._raise(431)
            return
        headers = self._headers
        headers.append((name.lower(), value))
        if size > config.max_header_bytes or len(headers) > config.max_headers:
            self._raise(431)

    def on_headers_complete(self) -> None:
        self._pieces = 0
        self._head_due = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._in_head = False
        self._progress = True
        self._raw_bytes = 0
        parser = self._parser
        url, headers = self._url, self._headers
        version = parser.get_http_version()
        values = dict(headers)
        try:
            if url.startswith(b"/"):
                raw_path, _, query = url.partition(b"?")
                route = self._direct.get(raw_path) if self._direct else None
                if route is not None and self._take_direct(route, headers, values, version):
                    return
            else:  # absolute-form (proxy style) or asterisk-form
                parsed = httptools.parse_url(url)
                raw_path, query = parsed.path or b"/", parsed.query or b""
            method = parser.get_method().decode("ascii")
            path = unquote(raw_path.decode("ascii"))
        except (UnicodeDecodeError, httptools.HttpParserInvalidURLError):
            self._raise(400)
        upgrade = values.get(b"upgrade", b"").lower()
        scope: Scope = {
            "asgi": ASGI_VERSION,
            "http_version": version,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": self.client,
            "server": self.server,
            "state": dict(self.registry.state),
        }
        keep_alive = parser.should_keep_alive()
        if parser.should_upgrade():
            if upgrade == b"websocket":
                scope["type"] = "websocket"
                scope["scheme"] = "ws"
                self._upgrade = _Upgrade(scope, method, url, version)
                return
            # Any other upgrade (h2c, CONNECT) is ignored: answered as plain HTTP, then closed,
            # since httptools stops parsing this connection at the upgrade.
            keep_alive = False
        length = values.get(b"content-length")
        size = None if length is None else ascii_int(length, max_digits=LENGTH_DIGITS)
        if size is not None and size > self.config.max_body_bytes:
            self._raise(413)
        coding = values.get(b"transfer-encoding")
        if coding is not None and coding.strip().lower() != b"chunked":
            # A coding besides chunked (gzip, chunked): the parser would take the chunks off
            # and hand the app a body still coded, as if it were plain (RFC 9112, 6.1).
            self._raise(501)
        self._body_left = _declared(length, values)
        if (length is not None and length.strip(b"0")) or coding is not None:
            # A body is coming: it must be complete within body_timeout.
            self._body_due = True
        scope["type"] = "http"
        scope["method"] = method
        scope["scheme"] = "http"
        cycle = HttpCycle(
            self,
            self.config,
            scope,
            keep_alive=keep_alive,
            expect_continue=values.get(b"expect", b"").lower() == b"100-continue",
        )
        self._parsing = cycle
        if self._cycle is None and not self._pipeline:
            self._start(cycle)
        else:
            self._pipeline.append(cycle)
            self.update_reading()

    def _take_direct(
        self,
        route: DirectRoute,
        headers: list[tuple[bytes, bytes]],
        values: dict[bytes, bytes],
        version: str,
    ) -> bool:
        """Take the request for ``route`` if it is a plain ``POST`` of a small body of declared
        length; anything else about it goes to the app."""
        parser = self._parser
        if (
            parser.get_method() != b"POST"
            or parser.should_upgrade()
            or b"transfer-encoding" in values
            or b"expect" in values
        ):
            return False
        length = values.get(b"content-length")
        if length is not None:
            size = ascii_int(length, max_digits=LENGTH_DIGITS)
            if size is None or size > min(BODY_HIGH, self.config.max_body_bytes):
                return False  # the app's path reads (or refuses) a body this large
            if length.strip(b"0"):
                self._body_due = True
        self._body_left = _declared(length, values)
        request = DirectRequest(
            self, route, headers, keep_alive=parser.should_keep_alive(), http11=version == "1.1"
        )
        self._parsing = request
        if self._cycle is None and not self._pipeline:
            self._start(request)
        else:
            self._pipeline.append(request)
            self.update_reading()
        return True

    def _whole_direct(self, data: bytes) -> int:
        """Answer the direct route's request at the start of ``data`` if the compiled reader
        takes it (see ``whole_direct`` above): what the parser's callbacks would do for it, in
        one call. The bytes it took; 0 when it leaves ``data`` to the parser."""
        assert self._whole is not None
        config = self.config
        found = self._whole(
            data, self._direct, config.max_headers, config.max_header_bytes, self._body_max
        )
        if found is None:
            return 0
        route, headers, body_start, end = found
        # What on_message_begin, on_headers_complete (with _take_direct and _start), on_body
        # and on_message_complete do for this request, in their order, less what cannot apply
        # on a connection with nothing in flight, between requests and reading: no timer but
        # the head's, and nothing to recount or to resume while the answer waits for the flush.
        self._idle_since = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._raw_bytes = 0
        request = DirectRequest(self, route, headers, keep_alive=True, http11=True)
        self._cycle = request
        self._completing = True
        try:
            request.whole(data[body_start:end])
        finally:
            self._completing = False
        if (
            request is not self._cycle  # answered at once (an error)
            or not request.answered  # its route goes on in a task: the app's to count
            or not self._counted
            or self._reading_paused
            or self._body_timer is not None
        ):
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            self._recount()
            self._arm_idle_timer()
            self.update_reading()
        return end

    def on_body(self, body: bytes) -> None:
        self._progress = True
        self._raw_bytes = 0
        if self._body_left:
            self._body_left = max(0, self._body_left - len(body))
        cycle = self._parsing
        if cycle is None:
            return
        cycle.feed_body(body)
        if cycle.body_size > self.config.max_body_bytes:
            self._raise(413)
        self._pieces += 1
        if cycle.body_size < (self._pieces - FREE_PIECES) * MIN_PIECE:
            self._raise(400)  # a body in crumbs: see MIN_PIECE
        if cycle.buffered > BODY_HIGH:
            self.update_reading()

    def on_message_complete(self) -> None:
        if self._upgrade is not None:
            return
        self._between = True
        self._body_due = False
        self._body_left = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        cycle, self._parsing = self._parsing, None
        if cycle is not None:
            # A direct request is answered in end_body: its response_complete leaves the
            # counting, the idle timer and reading to the lines below, which redo them anyway.
            self._completing = True
            try:
                cycle.end_body()
            finally:
                self._completing = False
        self._in_head = True
        self._progress = True
        self._raw_bytes = 0
        self._recount()
        self._arm_idle_timer()  # a body that came after its response: now the connection idles
        self.update_reading()

    def _raise(self, status: int) -> NoReturn:
        # Exceptions from callbacks reach us as HttpParserCallbackError: remember the status.
        self._reject = status
        raise _Reject(status)

    # -- requests ---------------------------------------------------------------------------

    def _start(self, cycle: InFlight) -> None:
        self._cycle = cycle
        self._recount()
        cycle.begin()

    def response_complete(self, cycle: InFlight) -> None:
        """Called by the cycle once its last body byte is written."""
        if cycle is not self._cycle:
            return
        self._cycle = None
        if self.transport.is_closing():
            return
        if not cycle.keep_alive or self.registry.shutting_down:
            if cycle is self._parsing and not cycle.expect_continue:
                self._linger()  # answered before the whole body came
            else:
                self.close()
            return
        if cycle is self._parsing and cycle.expect_continue:
            # The client waits for "100 Continue" before sending a body we never asked for.
            self.close()
            return
        if self._pipeline:
            following = self._pipeline.popleft()
            if isinstance(following, _Upgrade):
                self._hand_over(following)
                return
            self._start(following)
            self.update_reading()
            return
        if self._completing:
            return  # on_message_complete settles the rest, right after
        if not self._counted:
            self._recount()
        self._arm_idle_timer()
        if self._reading_paused or self._parsing is not None:
            self.update_reading()  # otherwise nothing for it to change: nothing is queued

    def _recount(self) -> None:
        """Count this connection as waiting on its client unless the app is answering it.

        A request whose body is in and whose response is in flight is the app's business (an
        SSE stream, a long poll: the hub counts those as sessions); in every other state the
        connection waits on its client. So does one whose direct route has its answer ready:
        that only waits for the next flush. Counted again after a response even over the cap:
        it is there already, and its timers end it.
        """
        cycle = self._cycle
        serving = (
            cycle is not None
            and cycle.body_complete
            and not cycle.response_complete
            and not cycle.answered
            # A response the client does not read waits on the client: counted under its
            # address's cap, or one address could hold any number of them.
            and not flow.is_paused(self._drain)
        )
        if serving:
            self._uncount()
        elif not self._counted and not self._detached:
            self._counted = True
            self.registry.pending.hold(self._key)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.registry.pending.release(self._key)

    def update_reading(self) -> None:
        """Read only while nothing is queued: pipelined requests, unread bodies and bytes read
        but not yet parsed wait."""
        if self._detached or self._ignoring or self.transport.is_closing():
            return
        parsing = self._parsing
        held = bool(self._pipeline) or (parsing is not None and parsing.buffered > BODY_HIGH)
        if self._unparsed and not held and self._resume is None:
            # Parsed from the loop: never inside the parser's callbacks or a response's.
            self._resume = self._loop.call_soon(self._parse_unparsed)
        pause = held or bool(self._unparsed)
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
                # The client could not get through while we were not reading: its head or
                # body gets a whole timeout from now.
                if self._body_timer is not None:
                    self._arm_body_timer()
                if self._head_timer is not None:
                    self._head_timer.cancel()
                    self._head_timer = self._loop.call_later(
                        self.config.handshake_timeout, self._timed_out
                    )

    def _upgrade_parsed(self, leftover: bytes) -> None:
        upgrade = self._upgrade
        if upgrade is None:
            # A non-websocket upgrade: its response closes the connection; ignore what follows.
            self._ignoring = True
            return
        upgrade.leftover += leftover
        if self._cycle is None and not self._pipeline:
            self._hand_over(upgrade)
        else:
            self._pipeline.append(upgrade)
            self.update_reading()

    def _hand_over(self, upgrade: _Upgrade) -> None:
        self._cancel_timers()
        self._uncount()  # the WebSocket app counts its own (sessions, sockets before CONNECT)
        self._detached = True
        self.registry.connections.discard(self)
        # The parser holds this object's bound methods as its callbacks: without it, what the
        # upgrade leaves here is freed by reference counting, not by the collector's walk.
        del self._parser
        self._upgrade = None
        transport = self.transport
        if self._reading_paused:
            transport.resume_reading()  # the websocket protocol pauses on its own terms
        protocol = WebSocketProtocol(
            self.config,
            self.registry,
            upgrade.scope,
            upgrade.method,
            upgrade.target,
            upgrade.version,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if upgrade.leftover:
            protocol.data_received(bytes(upgrade.leftover))

    # -- errors, timers, shutdown -----------------------------------------------------------

    def _error(self, status: int, at_fault: InFlight | None) -> None:
        """Answer ``status`` and close; a response already on the wire is only cut short."""
        active = self._cycle
        if at_fault is not None and at_fault.response_complete:
            self.close()  # the app already answered: only the rest of its body was wrong
            return
        if active is not None and active is not at_fault:
            # The error is in a pipelined request: finish the one in flight, then close.
            active.keep_alive = False
            self._pipeline.clear()
            self._unparsed = b""
            self._ignoring = True
            self.transport.pause_reading()
            self._reading_paused = True
            return
        if active is not None:
            active.cancel_head()
            written = active.head_written
            active.disconnect()
            self._cycle = None
            if written:
                self.transport.close()
                return
        body = {
            400: b"Bad Request\n",
            408: b"Request Timeout\n",
            413: b"Payload Too Large\n",
            501: b"Not Implemented\n",
        }.get(status, b"")
        if status == 431:
            body = b"Request Header Fields Too Large\n"
        self.registry.errors.log(logging.INFO, self.peer_key, "HTTP %d to %s", status, self.client)
        self.transport.write(error_response(self.config, status, body))
        self._linger()

    @property
    def peer_key(self) -> str:
        """The key this connection's log lines are limited by: its caps key."""
        return self._key or ""

    def _timed_out(self, look: bool = True) -> None:
        self._head_timer = None
        if self._waiting_on_us():
            self._head_timer = self._loop.call_later(self.config.handshake_timeout, self._timed_out)
            return
        if look and unread(self.transport):  # once: a trickle of bytes buys no more time
            self._head_timer = self._loop.call_later(READ_FIRST, self._timed_out, False)
            return
        self.registry.stalls.log(
            logging.INFO,
            self.peer_key,
            "closing %s: request head not received in time",
            self.client,
        )
        self.transport.close()

    def _arm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self._loop.call_later(self.config.body_timeout, self._body_timed_out)

    def _body_timed_out(self, look: bool = True) -> None:
        self._body_timer = None
        if self._waiting_on_us():
            self._arm_body_timer()
            return
        if look and unread(self.transport):  # once, as the head's
            self._body_timer = self._loop.call_later(READ_FIRST, self._body_timed_out, False)
            return
        self.registry.stalls.log(
            logging.INFO,
            self.peer_key,
            "closing %s: request body not received in time",
            self.client,
        )
        cycle = self._parsing
        if cycle is not None and cycle is self._cycle and not cycle.response_started:
            self._error(408, cycle)  # the app still waits for it: tell the client why
        else:
            self.close()

    def _waiting_on_us(self) -> bool:
        """Reading is paused by us: a pipelined request waits for the response before it, or
        the app has not taken the body read so far. The client is not the one stalling."""
        return self._reading_paused and not self._ignoring and not self.transport.is_closing()

    def _arm_idle_timer(self) -> None:
        # Idle: no response in flight, nothing queued, no head or body on its way.
        if (
            self._cycle is None
            and not self._pipeline
            and self._in_head
            and self._head_timer is None
            and self._idle_since is None
            and not self._detached
            and not self.transport.is_closing()
        ):
            self._idle_since = self._loop.time()
            if self._idle_timer is None:
                self._idle_timer = self._loop.call_later(
                    self.config.keepalive_timeout, self._idle_timed_out
                )

    def _idle_timed_out(self, look: bool = True) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None:
            return  # busy: armed again once the connection idles
        left = since + self.config.keepalive_timeout - self._loop.time()
        if left <= 0 and look and unread(self.transport):  # once, as the head's
            self._idle_timer = self._loop.call_later(READ_FIRST, self._idle_timed_out, False)
            return
        if left > 0:
            self._idle_timer = self._loop.call_later(left, self._idle_timed_out)
        else:
            self.transport.close()

    def _send_stalled(self) -> None:
        self._send_timer = None
        if writable(self.transport):
            # It read, and the loop has not seen it yet (it could not run): it gets
            # send_timeout again, as a client that starts reading does.
            self._send_timer = self._loop.call_later(self.config.send_timeout, self._send_stalled)
            return
        self.registry.stalls.log(
            logging.INFO,
            self.peer_key,
            "closing %s: the client read nothing of its response in time",
            self.client,
        )
        # A reset: what the kernel holds for a client that does not read would keep it open.
        reset(self.transport)

    def _cancel_timers(self) -> None:
        for timer in (
            self._head_timer,
            self._idle_timer,
            self._body_timer,
            self._send_timer,
            self._linger_timer,
        ):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = self._body_timer = self._send_timer = None
        self._linger_timer = None
        self._idle_since = None

    def _linger(self) -> None:
        """Close after an answer given while the request may still be arriving (its body).

        Closing a socket with unread bytes in its receive buffer sends a reset, which can reach
        the client before it has read the answer: it would see its connection fail, not the
        413. So the answer goes, then our end of the stream, and what the client still sends
        is read and dropped until it closes its end, for ``LINGER`` seconds at most."""
        self._cancel_timers()
        self._ignoring = True  # data_received drops what comes
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._linger_timer = self._loop.call_later(LINGER, self.transport.abort)

    @property
    def write_paused(self) -> bool:
        return flow.is_paused(self._drain)

    async def drain(self) -> None:
        await flow.wait(self._drain)

    def close(self) -> None:
        self._cancel_timers()
        self.transport.close()

    @property
    def queued(self) -> int:
        """Requests parsed and waiting behind the one in flight (at most ``MAX_QUEUED``)."""
        return len(self._pipeline)

    def is_idle(self) -> bool:
        return self._cycle is None and not self._pipeline and not self._unparsed

    def shutdown(self) -> None:
        if self.is_idle():
            self.close()
        elif self._cycle is not None:
            self._cycle.keep_alive = False

    def abort(self) -> None:
        # A FIN after what the kernel holds: a streaming client sees its response end.
        self.transport.abort()


def _span(data: bytes, heads: int, skip: int) -> int:
    """How much of ``data`` may be parsed without completing more than ``heads`` request
    heads: up to its ``2 * heads``-th line feed after the first ``skip`` bytes (the rest of a
    declared body), and never less than ``heads`` shortest requests. A head holds two line
    feeds at least (its request line and the empty line that ends it: the parser wants CRLF),
    or one if it began in an earlier read, and a request :data:`MIN_REQUEST` bytes: so a body
    dense with line feeds (a chunked one, whose length is not declared) is still parsed in
    slices of some size, not a few bytes each."""
    floor = min(len(data), skip + heads * MIN_REQUEST)
    pos = skip
    for _ in range(2 * heads):
        pos = data.find(b"\n", pos) + 1
        if not pos:
            return len(data)
    return max(pos, floor)


def _declared(length: bytes | None, values: dict[bytes, bytes]) -> int:
    """The body length a head declares, if the parser takes it so (not chunked)."""
    if length is None or b"transfer-encoding" in values:
        return 0
    return ascii_int(length, max_digits=LENGTH_DIGITS) or 0


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
