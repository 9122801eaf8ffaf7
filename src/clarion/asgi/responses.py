"""JSON responses and errors in the one shape the API promises: never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from clarion.errors import ClarionError

log = logging.getLogger("clarion.api")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: ClarionError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


def error_body(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def handle_clarion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClarionError)
    return error_response(exc)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_body("internal", "internal error", 500)
