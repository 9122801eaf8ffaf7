"""JSON responses and errors in the one shape the API promises: never a traceback.

One writer for every HTTP answer of clarion's own: :class:`JSONResponse` and
:func:`error_response` for the framework-routed API, :func:`send_json` and :func:`send_error` for
the raw ASGI endpoints (``/api/publish``, ``/sse``, ``/poll``, ``/client/*``). An error's status
is its code's, from :mod:`clarion.protocol.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from clarion.asgitypes import Send
from clarion.errors import ClarionError

log = logging.getLogger("clarion.api")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: ClarionError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


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
    """``exc`` as the API's error body, with its code's status."""
    await send_json(send, exc.status, orjson.dumps({"error": exc.to_dict()}), headers)


def error_body(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def handle_clarion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClarionError)
    return error_response(exc)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_body("internal", "internal error", 500)
