"""STOMP errors, named for whose fault they are (the h11 convention).

::

    ClarionError
    └── StompProtocolError          a STOMP exchange that cannot go on
        ├── RemoteProtocolError     the peer sent a frame we cannot accept (also a ClientError)
        └── LocalProtocolError      we tried to send a frame the session state forbids: a bug

A :class:`RemoteProtocolError` is answered with an ``ERROR`` frame whose ``message`` header is
the exception's message; ``receipt_id`` echoes the ``receipt`` header of the offending frame, so
the client can tell which of its frames failed.
"""

from __future__ import annotations

from typing import Any

from clarion.errors import ClarionError, ClientError, Code, LocalCode, ServerError
from clarion.protocol.errors import ErrorCode


class StompProtocolError(ClarionError):
    """Root of the STOMP errors; ``receipt_id`` is the failing frame's ``receipt`` header."""

    code: Code = LocalCode.STOMP

    def __init__(
        self,
        message: str,
        *,
        code: Code | None = None,
        receipt_id: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, code=code, **details)
        self.receipt_id = receipt_id


class RemoteProtocolError(StompProtocolError, ClientError):
    """The client broke the STOMP protocol (malformed frame, wrong state, missing header...)."""

    code = ErrorCode.BAD_FRAME


class LocalProtocolError(StompProtocolError, ServerError):
    """The hub asked to send a frame that the session's state does not allow."""

    code = ErrorCode.INTERNAL
