"""JSON responses and errors in the one shape the API promises: never a traceback.

Every error an HTTP endpoint of the hub answers is written by :func:`send_error`: its status is
its code's (:mod:`clarion.protocol.errors`), its body ``{"error": {"code", "message", …}}``. The
raw ASGI endpoints (``/api/publish``, ``/sse``, ``/poll``, ``/client/*``) call it themselves;
the framework-routed ones raise, and the router's handlers (:data:`EXCEPTION_HANDLERS`) answer
with an :class:`ErrorResponse`, which calls it too. ``/api/publish`` on clarion's server's
direct path returns :func:`error_body` with the status instead, which the server writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from clarion.asgitypes import Message, Receive, Scope, Send
from clarion.core.limits import LogLimit, excerpt
from clarion.errors import ClarionError, ClientError, MethodNotAllowed, NotFound, ServerError

log = logging.getLogger("clarion.api")
# Tracebacks a peer may cause per request or frame: one per kind of failure a minute.
_failures = LogLimit(log)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def send_json(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """One whole JSON answer (``body`` already encoded) on a raw ASGI endpoint."""
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
    send: Send, exc: ClarionError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """``exc`` as the API's error body, with its code's status: every HTTP error of the hub."""
    if isinstance(exc, MethodNotAllowed) and exc.allow:  # a 405 says what the endpoint takes
        headers = [*headers, (b"allow", exc.allow.encode())]
    wait = exc.details.get("retry_after")
    if isinstance(wait, int):  # a rate limit says when its client may ask again
        headers = [*headers, (b"retry-after", b"%d" % wait)]
    await send_json(send, exc.status, error_body(exc), headers)


async def refuse_handshake(scope: Scope, send: Send, exc: ClarionError) -> None:
    """Refuse a WebSocket handshake with ``exc`` as an HTTP error, where the server lets the app
    answer it (the ASGI denial response extension); else with its plain 403."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = error_body(exc)
    await send(
        {
            "type": "websocket.http.response.start",
            "status": exc.status,
            "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


def error_body(exc: ClarionError) -> bytes:
    """The API's error body: ``{"error": {"code", "message", …}}`` (its status: ``exc.status``)."""
    return orjson.dumps({"error": exc.to_dict()})


class ErrorResponse(Response):
    """An error where the framework wants a response: written by :func:`send_error`."""

    def __init__(self, exc: ClarionError) -> None:
        super().__init__(status_code=exc.status, media_type="application/json")
        self.error = exc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(send, self.error)


def from_http_exception(exc: HTTPException) -> ClarionError:
    """The router's own refusals (no route, wrong method) as the table's errors."""
    if exc.status_code == 404:
        return NotFound(str(exc.detail))
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return MethodNotAllowed(str(exc.detail), allow=allow)
    if exc.status_code < 500:
        return ClientError(str(exc.detail))
    return ServerError(str(exc.detail))


async def handle_clarion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClarionError)
    return ErrorResponse(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ErrorResponse(from_http_exception(exc))


# Set in a request's scope by :func:`watch_send` when the server refused a message.
CLIENT_GONE = "clarion.client_gone"


def watch_send(scope: Scope, send: Send) -> Send:
    """``send``, marking ``scope`` when it raises: under ASGI 2.4 a ``send`` to a client that has
    gone raises an ``OSError``, and the error that reaches :func:`handle_unexpected` is then the
    client's leaving, not a fault of the hub's."""

    async def watched(message: Message) -> None:
        try:
            await send(message)
        except OSError:
            scope[CLIENT_GONE] = True
            raise

    return watched


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    method, path = request.method, request.url.path
    if isinstance(exc, ClientDisconnect) or (
        isinstance(exc, OSError) and request.scope.get(CLIENT_GONE)
    ):
        # A browser that navigated away, a health check that timed out: nobody to answer.
        log.debug("the client went away before the answer to %s %s", method, excerpt(path))
    else:
        _failures.log(
            logging.ERROR,
            type(exc).__name__,
            "unhandled error on %s %s",
            method,
            excerpt(path),
            exc_info=exc,
        )
    return ErrorResponse(ServerError("internal error"))


# The exception handlers of every Starlette router that serves the hub's errors.
EXCEPTION_HANDLERS = {
    ClarionError: handle_clarion_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
