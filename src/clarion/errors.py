"""clarion's exceptions.

Every error clarion raises on purpose derives from :class:`ClarionError` and carries a
machine-readable ``code`` (the string sent to clients and in API error bodies) and a human
``message``. Who is at fault is part of the type::

    ClarionError
    ├── ClientError            the peer sent something wrong; answered, never logged as a failure
    │   ├── BadRequest         malformed frame, unknown op, missing or mistyped field
    │   ├── BadChannel         channel name outside the grammar
    │   ├── BadCursor          garbage, corrupted or foreign cursor
    │   ├── Unauthorized       missing, invalid or expired token / API key
    │   ├── Forbidden          valid identity, but not allowed to do this
    │   ├── NotFound           unknown resource
    │   ├── TooLarge           message over ``max_message_bytes``
    │   └── LimitExceeded      a rate or count limit
    │       └── NodeFull       this node holds its maximum of connections: try another
    └── ServerError            clarion's side could not do it
        ├── EngineUnavailable  the engine (e.g. Redis) cannot be reached
        ├── HookUnavailable    the application's backend did not answer a hook
        └── ConfigError        the configuration is invalid
"""

from __future__ import annotations

from typing import Any


class ClarionError(Exception):
    """Root of clarion's exceptions; ``code`` is stable, ``message`` is for humans."""

    code: str = "error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return body


class ClientError(ClarionError):
    code = "bad_request"
    status = 400


class BadRequest(ClientError):
    code = "bad_request"


class BadChannel(ClientError):
    code = "bad_channel"


class BadCursor(ClientError):
    code = "bad_cursor"


class Unauthorized(ClientError):
    code = "unauthorized"
    status = 401


class Forbidden(ClientError):
    code = "forbidden"
    status = 403


class NotFound(ClientError):
    code = "not_found"
    status = 404


class TooLarge(ClientError):
    code = "too_large"
    status = 413


class LimitExceeded(ClientError):
    code = "limit_exceeded"
    status = 429


class NodeFull(LimitExceeded):
    # 503, not 429: the client did nothing wrong, and a load balancer retries another node.
    code = "node_full"
    status = 503


class ServerError(ClarionError):
    code = "internal"
    status = 500


class EngineUnavailable(ServerError):
    code = "engine_unavailable"
    status = 503


class HookUnavailable(ServerError):
    """The application's backend did not give a usable answer to a hook (``[hooks]``)."""

    code = "hook_unavailable"
    status = 503


class ConfigError(ServerError):
    code = "config"
