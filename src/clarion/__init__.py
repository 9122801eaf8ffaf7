"""clarion: a real-time messaging hub for Python.

A backend publishes to a channel once; every subscriber gets it at once over WebSocket, SSE,
long polling or STOMP, and reconnecting clients resume from their cursor without loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clarion import lazy

if TYPE_CHECKING:
    from clarion.core.auth import Credentials, mint_token
    from clarion.core.hub import Hub
    from clarion.core.resume import SubscribeResult
    from clarion.core.session import Session
    from clarion.engines.base import Engine, History, PresenceEntry
    from clarion.errors import (
        BadChannel,
        BadCursor,
        BadRequest,
        ClarionError,
        ClientError,
        ConfigError,
        EngineUnavailable,
        Forbidden,
        LimitExceeded,
        NotFound,
        ServerError,
        TooLarge,
        Unauthorized,
    )
    from clarion.protocol.codes import CloseCode, Disconnect
    from clarion.protocol.cursor import Cursor
    from clarion.protocol.publication import Publication, StreamPosition
    from clarion.settings import Limits, NamespaceOptions, Settings

__version__ = "0.1.0"

# Exports load on first use, so that importing a pure layer (e.g. ``clarion.protocol.cursor``)
# does not drag in the core, asyncio and the HTTP stack.
_EXPORTS = {
    "Credentials": "clarion.core.auth",
    "mint_token": "clarion.core.auth",
    "Hub": "clarion.core.hub",
    "Session": "clarion.core.session",
    "SubscribeResult": "clarion.core.resume",
    "Engine": "clarion.engines.base",
    "History": "clarion.engines.base",
    "PresenceEntry": "clarion.engines.base",
    "CloseCode": "clarion.protocol.codes",
    "Disconnect": "clarion.protocol.codes",
    "Cursor": "clarion.protocol.cursor",
    "Publication": "clarion.protocol.publication",
    "StreamPosition": "clarion.protocol.publication",
    "Limits": "clarion.settings",
    "NamespaceOptions": "clarion.settings",
    "Settings": "clarion.settings",
    **{
        name: "clarion.errors"
        for name in (
            "BadChannel",
            "BadCursor",
            "BadRequest",
            "ClarionError",
            "ClientError",
            "ConfigError",
            "EngineUnavailable",
            "Forbidden",
            "LimitExceeded",
            "NotFound",
            "ServerError",
            "TooLarge",
            "Unauthorized",
        )
    },
}


__getattr__ = lazy.exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BadChannel",
    "BadCursor",
    "BadRequest",
    "ClarionError",
    "ClientError",
    "CloseCode",
    "ConfigError",
    "Credentials",
    "Cursor",
    "Disconnect",
    "Engine",
    "EngineUnavailable",
    "Forbidden",
    "History",
    "Hub",
    "LimitExceeded",
    "Limits",
    "NamespaceOptions",
    "NotFound",
    "PresenceEntry",
    "Publication",
    "ServerError",
    "Session",
    "Settings",
    "StreamPosition",
    "SubscribeResult",
    "TooLarge",
    "Unauthorized",
    "__version__",
    "mint_token",
]
