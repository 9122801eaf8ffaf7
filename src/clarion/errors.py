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

from clarion.protocol.errors import ErrorRule, rule_for


class ClarionError(Exception):
    """Root of clarion's exceptions; ``code`` is stable, ``message`` is for humans.

    What the error means on the wire (HTTP status, close code, reconnect) is the rule of its
    code in :mod:`clarion.protocol.errors`; a code outside that table (a hook's own) follows
    the rule of the class's code.
    """

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    @property
    def rule(self) -> ErrorRule:
        return rule_for(self.code, rule_for(type(self).code).code)

    @property
    def status(self) -> int:
        return self.rule.status

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return body


class ClientError(ClarionError):
    code = "bad_request"


class BadRequest(ClientError):
    code = "bad_request"


class BadChannel(ClientError):
    code = "bad_channel"


class BadCursor(ClientError):
    code = "bad_cursor"


class Unauthorized(ClientError):
    code = "unauthorized"


class Forbidden(ClientError):
    code = "forbidden"


class NotFound(ClientError):
    code = "not_found"


class TooLarge(ClientError):
    code = "too_large"


class LimitExceeded(ClientError):
    code = "limit_exceeded"


class NodeFull(LimitExceeded):
    # 503, not 429: the client did nothing wrong, and a load balancer retries another node.
    code = "node_full"


class ServerError(ClarionError):
    code = "internal"


class EngineUnavailable(ServerError):
    code = "engine_unavailable"


class HookUnavailable(ServerError):
    """The application's backend did not give a usable answer to a hook (``[hooks]``)."""

    code = "hook_unavailable"


class ConfigError(ServerError):
    code = "config"
