"""What passes between a server and clarion's ASGI app: ASGI's own types, and the two extensions
clarion's server adds to them.

One home for both sides: :mod:`clarion.server` offers the extensions, :mod:`clarion.asgi` uses
them when a scope carries them (and works, slower, under any other ASGI server):

* ``scope["extensions"]["clarion.fast_websocket"]["connection"]`` is a :class:`FastWebSocket`;
* ``scope["extensions"]["clarion.fast_stream"]["open"]()``, called once a chunked response has
  started, returns a :class:`FastStream`.

Both take bytes already framed once for every receiver (a WebSocket frame, an HTTP chunk) and
coalesce them into one write per connection per event-loop iteration. See ``docs/server.md``.

The other way round, an app may offer the server :class:`DirectRoute` objects
(its ``direct_routes``, read by :func:`direct_routes`): JSON endpoints the server calls with a
request's headers and whole body, without a scope, a task or ASGI messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FAST_WEBSOCKET = "clarion.fast_websocket"
FAST_STREAM = "clarion.fast_stream"


class FastOutbox(Protocol):
    """What both extensions offer: pushes of pre-framed bytes, and a send budget."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued here plus bytes in the transport's write buffer."""
        ...

    @property
    def closed(self) -> bool:
        """True once the connection is closing or gone."""
        ...

    @property
    def cut(self) -> bool:
        """True once pushes took the connection past twice its send limit: what is pushed
        from then on is dropped, and the connection is ending."""
        ...

    def push(self, frame: bytes) -> None:
        """Queue complete framed bytes; written at the end of this loop iteration."""
        ...

    def push_pair(self, head: bytes, body: bytes) -> None:
        """:meth:`push` the frame ``head + body`` without making it: both or neither."""
        ...

    def push_many(self, connections: Iterable[Any], frame: bytes) -> None:
        """:meth:`push` ``frame`` to each of ``connections`` (objects offered by the extension).

        The fan-out's inner loop: the same for every connection, so it lives on each of them.
        """
        ...

    def set_send_limit(self, limit: int, on_overflow: Callable[[], None]) -> None:
        """Call ``on_overflow()`` once when pushes take :attr:`buffered_bytes` over ``limit``.

        Called soon after, from the loop, never from inside :meth:`push`. Calling this again
        re-arms it. The app must then stop pushing (close, or conflate until the backlog
        drains). Past twice the limit nothing more is taken (:attr:`cut`), at once, even
        within the loop that pushes; the app is told if it was not yet, and must close: if it
        does not (or was told before), the server closes the connection itself.
        """
        ...


class FastWebSocket(FastOutbox, Protocol):
    """``clarion.fast_websocket``: pushes are complete unmasked server frames.

    Usable only after ``websocket.accept`` and only from the event loop's thread.
    """

    @property
    def last_activity(self) -> float:
        """``time.monotonic()`` when bytes were last received from the peer."""
        ...

    @property
    def deflate_bits(self) -> int:
        """permessage-deflate was negotiated: the window (8-15) compressed frames must fit;
        0 when it was not (:mod:`clarion.protocol.deflate` builds such frames)."""
        ...

    def push_text(self, payload: bytes) -> None:
        """Frame ``payload`` (UTF-8) as one text frame, compressed if negotiated, and
        :meth:`push` it."""
        ...

    def ping(self) -> None: ...

    def close(self, code: int, reason: str = "") -> None:
        """Send what is queued, then a close frame; the socket closes after the handshake."""
        ...

    def listen(self, handler: Callable[[Message], Awaitable[None]]) -> None:
        """From now on, ``await handler(message)`` for each inbound ASGI message instead of
        ``receive()``: in order, one at a time, the last one ``websocket.disconnect``.

        The server awaits them in a task of its own that exists only while messages wait, so
        an idle connection holds no coroutine; the app's coroutine may return once it has
        called this without ending the connection. A handler that raises is logged and the
        connection closed with 1011; the messages that follow (the disconnect) still come.
        """
        ...


class FastStream(FastOutbox, Protocol):
    """``clarion.fast_stream``: pushes are complete HTTP chunks of one streaming response.

    The app still ends the response with a normal ``http.response.body`` message
    (``more_body: False``), which writes what was pushed first.
    """

    def drop_pending(self) -> None:
        """Forget what was pushed and not yet written (a reader too slow to take it)."""
        ...


def fast_websocket(scope: Scope) -> FastWebSocket | None:
    """The scope's ``clarion.fast_websocket`` connection, when its server offers one."""
    offered = scope.get("extensions", {}).get(FAST_WEBSOCKET)
    return None if offered is None else offered["connection"]


def fast_stream(scope: Scope) -> Callable[[], FastStream] | None:
    """The scope's ``clarion.fast_stream`` opener, when its server offers one."""
    offered = scope.get("extensions", {}).get(FAST_STREAM)
    return None if offered is None else offered["open"]


# A direct route's answer: the status and a JSON body (sent with ``cache-control: no-store``).
DirectResponse = tuple[int, bytes]


class DirectRoute(Protocol):
    """A ``POST`` endpoint clarion's server may answer without ASGI (``POST /api/publish``).

    For a request to the route's path whose body is small, of declared length and complete, the
    server calls :meth:`respond` with the request's headers (names lower-cased) and body instead
    of building a scope for the app; anything else about such a request (another method, a
    chunked or large body, ``Expect``) goes to the app as usual, which must answer it the same.
    """

    @property
    def eager(self) -> bool:
        """Run :meth:`respond`'s coroutine at once, outside any task, up to its first
        suspension (a task takes it on from there): true when it usually completes without one,
        and when nothing it runs before suspending needs to be in a task."""
        ...

    def respond(
        self, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Coroutine[Any, Any, DirectResponse]: ...


def server_errors(app: object) -> Mapping[int, bytes]:
    """The JSON bodies ``app`` gives the errors clarion's server answers itself (a malformed or
    slow request, a body or head over its limits, a server over its cap, an app that failed),
    by status; none by default (plain text)."""
    errors: Mapping[int, bytes] | None = getattr(app, "server_errors", None)
    return {} if errors is None else errors


def direct_routes(app: object) -> Mapping[bytes, DirectRoute]:
    """The direct routes ``app`` offers, by path as sent (without query); none by default."""
    routes: Mapping[bytes, DirectRoute] | None = getattr(app, "direct_routes", None)
    return {} if routes is None else routes


def direct_local_only(app: object) -> bool:
    """Does ``app`` take requests from this machine only (``direct_local_only``)? Then its
    direct routes are for loopback peers, and the app itself answers the others."""
    return bool(getattr(app, "direct_local_only", False))
