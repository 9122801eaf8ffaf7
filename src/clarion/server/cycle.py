"""One HTTP request and its response: the ASGI ``http`` ``receive``/``send`` pair.

The connection (:mod:`clarion.server.http`) parses requests and feeds bodies in; this module hands
them to the app, frames the response (``Content-Length`` when the app gives one, chunked
otherwise) and writes each body message as it arrives, so streaming responses (SSE) reach the
client at once.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from typing import TYPE_CHECKING, Any

from clarion.asgitypes import Message, Scope
from clarion.core.limits import LogLimit
from clarion.protocol.frames import http_chunk
from clarion.server.config import ClientDisconnected, Config, date_header
from clarion.server.faststream import FAST_STREAM_EXTENSION, ChunkStream

if TYPE_CHECKING:
    from clarion.server.http import HttpProtocol

log = logging.getLogger("clarion.server.http")
# Tracebacks a peer may cause per request or frame: one per kind of failure a minute.
_failures = LogLimit(log)

DISCONNECT: Message = {"type": "http.disconnect"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TEXT = b"text/plain; charset=utf-8"

_status_lines: dict[int, bytes] = {}
# One search per header: ``b"\n" in value`` costs CPython a raised and cleared TypeError
# (it first tries the operand as an integer), four times per header of every response.
_cr_or_lf = re.compile(rb"[\r\n]").search


def status_line(status: int) -> bytes:
    line = _status_lines.get(status)
    if line is None:
        try:
            phrase = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b""
        line = _status_lines[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
    return line


def simple_response(
    status: int, body: bytes, *, close: bool = True, content_type: bytes = TEXT
) -> bytes:
    """A complete response, plain text unless said otherwise; never stored by a cache."""
    return b"".join(
        (
            status_line(status),
            date_header(),
            b"content-type: %s\r\n" % content_type,
            b"cache-control: no-store\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )


def error_response(config: Config, status: int, text: bytes) -> bytes:
    """An error the server answers itself, closing: the app's JSON body for ``status`` when it
    gives one (the hub's error shape), else ``text``."""
    body = config.errors.get(status)
    if body is None:
        return simple_response(status, text)
    return simple_response(status, body, content_type=b"application/json")


class HttpCycle:
    """The ASGI side of one request; created by the connection once the headers are parsed."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_final_delivered",
        "_head",
        "_head_handle",
        "_length",
        "_more_body",
        "_sent",
        "_stream",
        "_waiter",
        "body_size",
        "buffered",
        "chunked",
        "config",
        "disconnected",
        "expect_continue",
        "head_written",
        "http11",
        "is_head",
        "keep_alive",
        "no_body",
        "response_complete",
        "response_started",
        "scope",
    )

    # An app's answer is written as it sends it: none waits for a flush (see DirectRequest).
    answered = False

    def __init__(
        self,
        conn: HttpProtocol,
        config: Config,
        scope: Scope,
        *,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self._conn = conn
        self.config = config
        self.scope: Scope | None = scope  # until the app has it
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.is_head = scope["method"] == "HEAD"
        self.http11 = scope["http_version"] == "1.1"
        # Request side.
        self._chunks: list[bytes] = []
        self.buffered = 0  # body bytes received, not yet handed to the app
        self.body_size = 0
        self._more_body = True
        self._final_delivered = False
        self._waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        # Response side.
        self.response_started = False
        self.head_written = False
        self.response_complete = False
        self._head = b""
        self._head_handle: asyncio.Handle | None = None
        self._length: int | None = None
        self._sent = 0
        self.chunked = False
        self.no_body = False
        self._stream: ChunkStream | None = None

    # -- fed by the connection --------------------------------------------------------------

    def feed_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.response_complete:
            return  # the app answered without reading it all: the parser just skips it
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def end_body(self) -> None:
        self._more_body = False
        self._wake()

    @property
    def body_complete(self) -> bool:
        return not self._more_body

    def disconnect(self) -> None:
        self.disconnected = True
        if self._stream is not None:
            self._stream.discard_outbox()
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI -------------------------------------------------------------------------------

    def begin(self) -> None:
        """Run the app for this request (its turn on the connection has come)."""
        self._conn.registry.start(self.run(), "clarion-http")

    async def run(self) -> None:
        try:
            # The scope holds this cycle from now on (its stream extension's ``open``), and the
            # cycle lets go of the scope: never both, so that the two are freed by reference
            # counting, also when a queued request is dropped unrun with its connection.
            scope, self.scope = self.scope, None
            assert scope is not None
            if self.http11:  # HTTP/1.0 has no chunks: its streams end with the connection
                scope.setdefault("extensions", {})[FAST_STREAM_EXTENSION] = {
                    "open": self.open_stream
                }
            await self.config.app(scope, self.receive, self.send)
        except Exception as exc:
            if not isinstance(exc, ClientDisconnected) or not self.disconnected:
                _failures.log(
                    logging.ERROR,
                    type(exc).__name__,
                    "exception in ASGI application",
                    exc_info=exc,
                )
                self._fail()
        else:
            if not self.response_complete and not self.disconnected:
                _failures.log(
                    logging.ERROR, "", "ASGI application returned without completing its response"
                )
                self._fail()

    async def receive(self) -> Message:
        if self.expect_continue:
            self.expect_continue = False
            if not self.head_written and not self.disconnected:
                self._conn.transport.write(CONTINUE)
        while True:
            if self.disconnected or self.response_complete:
                return DISCONNECT
            if self._chunks or (not self._more_body and not self._final_delivered):
                body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks = []
                self.buffered = 0
                self._final_delivered = not self._more_body
                self._conn.update_reading()
                return {"type": "http.request", "body": body, "more_body": self._more_body}
            # Nothing to hand over: wait for body bytes, or (for SSE, long polls) the disconnect.
            self._conn.update_reading()
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def send(self, message: Message) -> None:
        conn = self._conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind!r}")
            self.response_started = True
            self._head = self._build_head(message["status"], message.get("headers") or ())
            # Written with the first body message (one write). A streamed response (no length)
            # also gets it at the end of this loop iteration if that takes longer, so that e.g.
            # an idle SSE stream sees its headers; a response of known length is one write.
            if self._length is None:
                self._head_handle = asyncio.get_running_loop().call_soon(self._write_head)
            return
        if self.response_complete:
            raise RuntimeError(f"{kind!r} after the response completed")
        if kind != "http.response.body":
            raise RuntimeError(f"expected http.response.body, got {kind!r}")
        self._write_body(message.get("body", b""), bool(message.get("more_body", False)))

    # -- response framing -------------------------------------------------------------------

    def _build_head(self, status: int, headers: Any) -> bytes:
        parts = [status_line(status)]
        has_connection = has_date = False
        for name, value in headers:
            lname = name.lower()
            if _cr_or_lf(name) or _cr_or_lf(value):
                raise RuntimeError("invalid header: CR or LF")
            if lname == b"content-length":
                self._length = int(value)
            elif lname == b"transfer-encoding":
                continue  # the body framing is ours
            elif lname == b"connection":
                has_connection = True
                if value.lower() == b"close":
                    self.keep_alive = False
            elif lname == b"date":
                has_date = True
            parts.append(b"%s: %s\r\n" % (name, value))
        if not has_date:
            parts.append(date_header())
        self.no_body = self.is_head or status < 200 or status in (204, 304)
        if self._length is None and not self.no_body:
            if self.http11:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 body without length ends with the socket
        if not has_connection:
            if not self.keep_alive:
                parts.append(b"connection: close\r\n")
            elif not self.http11:
                parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _write_head(self) -> None:
        self._head_handle = None
        if not self.head_written and not self.disconnected:
            self.head_written = True
            self._conn.transport.write(self._head)
            self._head = b""

    def open_stream(self) -> ChunkStream:
        """The fast path for a chunked streaming response (see ``faststream``)."""
        if not self.response_started or not self.chunked or self.response_complete:
            raise RuntimeError("open() needs a started, chunked and unfinished response")
        if self._stream is None:
            self._write_body(b"", True)  # the head goes out first
            conn = self._conn
            self._stream = ChunkStream(conn, conn._loop, self.config.send_limit)
        return self._stream

    def _write_body(self, body: bytes, more: bool) -> None:
        if self._stream is not None:
            self._stream.flush()  # what was pushed goes before what is sent
        parts: list[bytes] = []
        if not self.head_written:
            if self._head_handle is not None:
                self._head_handle.cancel()
                self._head_handle = None
            self.head_written = True
            parts.append(self._head)
            self._head = b""
        if not self.no_body:
            if self.chunked:
                if body:
                    parts.append(http_chunk(body))
                if not more:
                    parts.append(b"0\r\n\r\n")
            elif body:
                self._sent += len(body)
                if self._length is not None and self._sent > self._length:
                    raise RuntimeError("response body longer than its content-length")
                parts.append(body)
        if parts:
            self._conn.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if not more:
            if self._stream is not None:
                self._stream.discard_outbox()  # nothing pushed later may leak into a next reply
            self.response_complete = True
            # Nor is what the app left unread of the body read any more: let it go, so that
            # reading, paused for it, takes (and drops) the rest.
            self._chunks.clear()
            self.buffered = 0
            if self._length is not None and self._sent < self._length and not self.no_body:
                self.keep_alive = False  # the client would wait for the missing bytes
            self._wake()
            self._conn.response_complete(self)

    def _fail(self) -> None:
        """The app failed: answer 500 if nothing was written yet, else cut the connection."""
        if self.disconnected or self.response_complete:
            return
        if not self.head_written:
            if self._head_handle is not None:
                self._head_handle.cancel()
                self._head_handle = None
            self.head_written = self.response_started = self.response_complete = True
            self.keep_alive = False
            conn = self._conn
            conn.transport.write(error_response(conn.config, 500, b"Internal Server Error\n"))
            self._conn.response_complete(self)
        else:
            self.response_complete = True
            self._conn.close()

    def cancel_head(self) -> None:
        """The server answers itself (413): whatever the app started is dropped."""
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None
