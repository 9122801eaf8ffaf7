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

import os
from enum import StrEnum
from typing import Any

from clarion.protocol.errors import ErrorCode, ErrorRule, ForeignCode, rule_for


class LocalCode(StrEnum):
    """Codes of errors that never reach a peer of the hub (those that do: ``ErrorCode``)."""

    ERROR = "error"  # the root's, for its subclasses to replace
    STOMP = "stomp"  # the STOMP errors' root's, likewise
    CONFIG = "config"
    LISTEN = "listen"  # an address the server cannot bind
    STARTUP = "startup"
    INSECURE_BIND = "insecure_bind"
    UNREACHABLE = "unreachable"  # a command line client's hub
    # The Python client's own (docs/client.md).
    CLIENT_CLOSED = "client_closed"
    DISCONNECTED = "disconnected"
    CONNECT_FAILED = "connect_failed"
    CONNECTION_LOST = "connection_lost"
    REQUEST_TIMEOUT = "request_timeout"
    TRANSPORT_UNAVAILABLE = "transport_unavailable"


# Every error's code: the table's, a local one, or one read from elsewhere (never a free string).
Code = ErrorCode | LocalCode | ForeignCode


class ClarionError(Exception):
    """Root of clarion's exceptions; ``code`` is stable, ``message`` is for humans.

    What the error means on the wire (HTTP status, close code, reconnect) is the rule of its
    code in :mod:`clarion.protocol.errors`; a code outside that table (a hook's own) follows
    the rule of the class's code.
    """

    code: Code = LocalCode.ERROR

    def __init__(self, message: str, *, code: Code | None = None, **details: Any) -> None:
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
    code = ErrorCode.BAD_REQUEST


class BadRequest(ClientError):
    code = ErrorCode.BAD_REQUEST


class BadChannel(ClientError):
    code = ErrorCode.BAD_CHANNEL


class BadCursor(ClientError):
    code = ErrorCode.BAD_CURSOR


class Unauthorized(ClientError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(ClientError):
    code = ErrorCode.FORBIDDEN


class NotFound(ClientError):
    code = ErrorCode.NOT_FOUND


class UpgradeRequired(ClientError):
    """A plain HTTP request to a WebSocket endpoint."""

    code = ErrorCode.UPGRADE_REQUIRED


class TooLarge(ClientError):
    code = ErrorCode.TOO_LARGE


class MethodNotAllowed(ClientError):
    """A method the endpoint does not take; ``allow`` lists those it does (HTTP's ``Allow``)."""

    code = ErrorCode.METHOD_NOT_ALLOWED

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class LimitExceeded(ClientError):
    code = ErrorCode.LIMIT_EXCEEDED


class NodeFull(LimitExceeded):
    # 503, not 429: the client did nothing wrong, and a load balancer retries another node.
    code = ErrorCode.NODE_FULL


class ServerError(ClarionError):
    code: Code = ErrorCode.INTERNAL


class EngineNotShared(ServerError):
    """Another process serves this port with a hub of its own on an engine nothing shares."""

    code = ErrorCode.ENGINE_NOT_SHARED


class NotStarted(ServerError):
    """The hub was never started: nothing it accepted could reach a live subscriber."""

    code = ErrorCode.NOT_STARTED

    def __init__(
        self,
        message: str = "the hub was never started: give the application hub.lifespan "
        "(FastAPI(lifespan=hub.lifespan)), or await hub.start() before serving it",
    ) -> None:
        super().__init__(message)


class EngineUnavailable(ServerError):
    code = ErrorCode.ENGINE_UNAVAILABLE


class HookUnavailable(ServerError):
    """The application's backend did not give a usable answer to a hook (``[hooks]``)."""

    code = ErrorCode.HOOK_UNAVAILABLE
    logged: str | None = None  # what the hub's log says beyond the message (not for clients)


class ConfigError(ServerError):
    code = LocalCode.CONFIG


def os_reason(exc: BaseException) -> str | None:
    """The operating system's words for why ``exc`` (or an exception under it) failed —
    "connection refused" — or None without an errno. Libraries wrap the OSError in their own
    words ("All connection attempts failed"); the errno is the plain reason."""
    seen: BaseException | None = exc
    while seen is not None:
        errno = getattr(seen, "errno", None)
        if isinstance(errno, int) and errno > 0:
            reason = os.strerror(errno)
            return reason[:1].lower() + reason[1:]
        seen = seen.__cause__ or seen.__context__
    return None
