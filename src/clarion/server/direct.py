"""A request answered by one of the app's direct routes (:class:`~clarion.asgitypes.DirectRoute`).

The connection (:mod:`clarion.server.http`) takes a request this way when its path is a direct
route's, its method ``POST`` and its body small and of declared length (no ``Expect``, no
chunks): no ASGI scope, no receive/send messages, and no task while the route's coroutine
completes without suspending. Once the body is in and the responses before it are out, an eager
route's coroutine runs at once, in the read callback; its answer is written in one ``write``,
after the loop iteration's WebSocket frames, with its other answers. A coroutine that suspends
(an engine that waits on the network, a webhook outbox that stores) is driven on by a task from
where it stopped.

A :class:`DirectRequest` stands where an :class:`~clarion.server.cycle.HttpCycle` would in the
connection's state machine (the current request, the pipeline), with the attributes it reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from clarion.asgitypes import DirectResponse, DirectRoute
from clarion.core.limits import LogLimit
from clarion.server import fastws
from clarion.server.config import date_header
from clarion.server.cycle import error_response, status_line

if TYPE_CHECKING:
    from clarion.server.http import HttpProtocol

# Used only while the compiled loops run (fastws.COMPILED: built, and from this source).
step: Callable[[Coroutine[Any, Any, DirectResponse]], tuple[bool, Any]] | None
try:
    from clarion.server._fastloop import step
except ImportError:  # built without a C compiler
    step = None

log = logging.getLogger("clarion.server.http")
# Tracebacks a peer may cause per request: one per kind of failure a minute.
_failures = LogLimit(log)


def _step(coro: Coroutine[Any, Any, DirectResponse]) -> tuple[bool, Any]:
    """Run ``coro`` until it suspends or ends: ``(False, what it yielded)`` or ``(True, what it
    returned)``; the compiled ``step`` does the same without raising StopIteration at its end."""
    try:
        return False, coro.send(None)
    except StopIteration as done:
        return True, done.value


def _failed(exc: Exception) -> None:
    _failures.log(logging.ERROR, type(exc).__name__, "exception in direct route", exc_info=exc)


_heads: dict[int, bytes] = {}


def json_response(status: int, body: bytes, *, keep_alive: bool, http11: bool) -> bytes:
    """A whole JSON response, headers as ``send_json`` gives them through ASGI."""
    head = _heads.get(status)
    if head is None:
        head = _heads[status] = status_line(status) + b"content-type: application/json\r\n"
    if not keep_alive:
        connection = b"connection: close\r\n"
    else:
        connection = b"" if http11 else b"connection: keep-alive\r\n"
    return b"%scontent-length: %d\r\ncache-control: no-store\r\n%s%s\r\n%s" % (
        head,
        len(body),
        date_header(),
        connection,
        body,
    )


class DirectRequest:
    """One request for a direct route, from its head to its response."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_headers",
        "_route",
        "_started",
        "answered",
        "body_complete",
        "body_size",
        "buffered",
        "disconnected",
        "http11",
        "keep_alive",
        "response_complete",
        "response_started",
    )

    # What the connection reads of a request in flight, constant here.
    expect_continue = False

    def __init__(
        self,
        conn: HttpProtocol,
        route: DirectRoute,
        headers: list[tuple[bytes, bytes]],
        *,
        keep_alive: bool,
        http11: bool,
    ) -> None:
        self._conn = conn
        self._route = route
        self._headers = headers
        self.keep_alive = keep_alive
        self.http11 = http11
        self._chunks: list[bytes] = []
        self.body_size = 0
        self.buffered = 0
        self.body_complete = False
        self._started = False  # the responses before it are out: its turn
        self.answered = False  # its answer waits for the iteration's flush (see _respond)
        self.response_started = False
        self.response_complete = False
        self.disconnected = False

    @property
    def head_written(self) -> bool:
        return self.response_complete

    # -- driven by the connection -----------------------------------------------------------

    def feed_body(self, data: bytes) -> None:
        self.body_size += len(data)
        self.buffered += len(data)
        self._chunks.append(data)

    def end_body(self) -> None:
        self.body_complete = True
        if self._started:
            self._answer()

    def whole(self, body: bytes) -> None:
        """Its whole ``body``, on a connection with nothing before it in flight: answered now
        (what ``begin``, ``feed_body`` and ``end_body`` do for it, in one call)."""
        self.body_size = len(body)
        self.body_complete = self._started = True
        if self._conn.write_paused:
            self._chunks.append(body)
            self._answer()
        else:
            # What _answer checks first cannot be so: the connection is reading.
            self.response_started = True
            self._run(body)

    def begin(self) -> None:
        self._started = True
        if self.body_complete:
            # It waited behind another response, and more may wait behind it: answered from
            # the loop, not from inside the one before it, however long the pipeline.
            self._conn._loop.call_soon(self._answer)

    def disconnect(self) -> None:
        self.disconnected = True

    def cancel_head(self) -> None:
        """Nothing is written before the whole answer."""

    # -- the route --------------------------------------------------------------------------

    def _answer(self) -> None:
        conn = self._conn
        if self.disconnected or conn.transport.is_closing():
            # A request behind one that closed the connection: nobody would read the answer.
            self.disconnected = True
            return
        self.response_started = True
        if conn.write_paused:
            # The client does not read its answers: the next waits, and so does reading.
            conn.registry.start(self._after_drain(), "clarion-http")
            return
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self.buffered = 0
        self._run(body)

    def _run(self, body: bytes) -> None:
        route = self._route
        try:
            coro = route.respond(self._headers, body)
            if not route.eager:
                self._conn.registry.start(self._finish(coro, None), "clarion-http")
                return
            ended, value = (step if fastws.COMPILED and step else _step)(coro)
            if ended:
                self._respond(value)
                return
            self._conn.registry.start(self._finish(coro, _Resume(coro, value)), "clarion-http")
        except Exception as exc:
            # In a parser callback: nothing may escape to the parser, which would call it a 400.
            _failed(exc)
            self._fail()

    async def _after_drain(self) -> None:
        await self._conn.drain()
        self._answer()

    async def _finish(
        self, coro: Coroutine[Any, Any, DirectResponse], rest: _Resume | None
    ) -> None:
        try:
            result = await (coro if rest is None else rest)
        except Exception as exc:
            _failed(exc)
            self._fail()
        else:
            self._respond(result)

    def _respond(self, result: DirectResponse) -> None:
        # Written with the iteration's frames and other answers, not now: one by one as each
        # is ready, nearly every answer to a client that waits on it (a backend's publish, one
        # in flight per connection) woke that client's process from sleep, a cross-core
        # wake-up each; written together, the first wakes it and the rest find it awake. Until
        # then the request is simply still in flight, as one whose route has not finished; no
        # longer the app's to count (see HttpProtocol._recount), since its answer is ready.
        self.answered = True
        self._conn.flusher.after(self._write_reply, result)

    def _write_reply(self, result: DirectResponse) -> None:
        conn = self._conn
        if self.disconnected or conn.transport.is_closing():
            self.disconnected = True
            return
        try:
            status, body = result
            answer = json_response(status, body, keep_alive=self.keep_alive, http11=self.http11)
        except Exception as exc:
            _failed(exc)  # not a (status, body) answer
            self._fail()
            return
        conn.transport.write(answer)
        self.response_complete = True
        conn.response_complete(self)

    def _fail(self) -> None:
        conn = self._conn
        if self.disconnected or self.response_complete or conn.transport.is_closing():
            return
        self.keep_alive = False
        self.response_complete = True
        conn.transport.write(error_response(conn.config, 500, b"Internal Server Error\n"))
        conn.response_complete(self)


class _Resume:
    """The rest of a coroutine that suspended before any task ran it: awaited in a task, it
    hands the task what the coroutine yielded (the future it waits for), then drives it on
    exactly as the task would have — values sent in, exceptions (a cancellation) thrown in."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, DirectResponse], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, DirectResponse]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    yielded = coro.throw(exc)
                except StopIteration as done:
                    result: DirectResponse = done.value
                    return result
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    result = done.value
                    return result
