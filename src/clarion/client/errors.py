"""What the client raises. Every class derives from :class:`clarion.errors.ClarionError`::

    ClarionError
    ├── ClientClosed       the client is closed; ``close_code``/``reason`` say why
    │   └── Disconnected   the hub ended the connection with a "do not reconnect" code
    ├── ConnectFailed      the hub could not be reached, or refused the transport, when opening
    │   └── TransportUnavailable  the URL has no endpoint for the transport (404, refused upgrade)
    ├── ConnectionLost     the connection dropped with a request in flight: its outcome is unknown
    ├── RequestTimeout     no answer within ``request_timeout`` (also a :class:`TimeoutError`)
    └── RequestFailed      the hub answered with an error: ``code``, ``message``, HTTP ``status``

``subscribe()`` raises clarion's own :class:`~clarion.errors.BadChannel` and
:class:`~clarion.errors.BadCursor` for a bad argument (``clarion.client`` exports them too).

Which close codes and refusals stop the client is decided in :mod:`clarion.client.refusals`, from
the tables every clarion client shares.
"""

from __future__ import annotations

from typing import Any

from clarion.errors import ClarionError, Code, LocalCode
from clarion.protocol.codes import CloseCode
from clarion.protocol.errors import ErrorCode, ForeignCode, code_of


class ClientClosed(ClarionError):
    """The client is closed: ``close()`` was called, or the hub said not to reconnect."""

    code = LocalCode.CLIENT_CLOSED

    def __init__(self, reason: str = "the client is closed", close_code: int = CloseCode.NORMAL):
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


class Disconnected(ClientClosed):
    """The hub closed the connection with a code that forbids reconnecting (e.g. 4501)."""

    code = LocalCode.DISCONNECTED

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason, close_code)

    def __str__(self) -> str:
        return f"disconnected by the hub ({self.close_code}: {self.reason})"


class ConnectFailed(ClarionError):
    """The first connection could not be made (unreachable hub, refused upgrade, no endpoint)."""

    code = LocalCode.CONNECT_FAILED


class ConnectionLost(ClarionError):
    """The connection dropped while a request was in flight; it may or may not have been done."""

    code = LocalCode.CONNECTION_LOST


class RequestTimeout(ClarionError, TimeoutError):
    """No answer to a request within ``request_timeout`` seconds."""

    code = LocalCode.REQUEST_TIMEOUT


class RequestFailed(ClarionError):
    """The hub refused a request; ``code`` is the hub's error code (``forbidden``, ...)."""

    def __init__(
        self,
        message: str,
        *,
        code: Code,
        status: int | None = None,
        channel: str | None = None,
        limit: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self._status = status if status is not None else 0
        self.retry_after = retry_after
        """Seconds a rate limit asked to wait before the same request (``Retry-After``)."""
        self.channel = channel
        """The channel the refusal names (one channel of a stream of several), if it names one."""
        self.limit = limit
        """The cap the refusal names (``too_many_channels``, ...), if it names one."""

    @property
    def status(self) -> int:
        """The HTTP status the refusal came with (0: it came over WebSocket); for a publication
        of a batch, the status its code has, as a request of its own would have had."""
        return self._status

    @classmethod
    def from_wire(cls, error: Any, status: int | None = None) -> RequestFailed:
        """From the hub's ``{"code", "message"}`` error object (whatever shape it arrived in)."""
        if not isinstance(error, dict):
            error = {}
        code = error.get("code")
        message = error.get("message")
        channel = error.get("channel")
        limit = error.get("limit")
        wait = error.get("retry_after")
        return cls(
            message if isinstance(message, str) else "the hub refused the request",
            code=code_of(code)
            if isinstance(code, str)
            else ForeignCode(f"http_{status}")
            if status
            else LocalCode.ERROR,
            status=status,
            channel=channel if isinstance(channel, str) else None,
            limit=limit if type(limit) is int else None,
            retry_after=float(wait) if type(wait) is int and wait > 0 else None,
        )

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def unsubscribed(channel: str, reason: Any) -> RequestFailed:
    """What a subscription's reader gets when the hub ended it (``code`` ``unsubscribed``)."""
    why = reason if isinstance(reason, str) else "unknown"
    return RequestFailed(
        f"the hub ended the subscription to {channel!r} ({why})", code=ErrorCode.UNSUBSCRIBED
    )


class TransportUnavailable(ConnectFailed):
    """The hub does not offer this transport (refused upgrade, missing endpoint)."""

    code = LocalCode.TRANSPORT_UNAVAILABLE
