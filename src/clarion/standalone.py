"""The hub on clarion's own server, configured from its settings (``clarion serve``, tests)."""

from __future__ import annotations

from clarion.asgi.app import build_app
from clarion.asgi.publish import ENVELOPE_BYTES
from clarion.hub import Hub
from clarion.server import Server


def make_server(hub: Hub, *, lifespan: bool = True, port: int | None = None) -> Server:
    """A :class:`Server` for ``hub``; with ``lifespan`` the server starts and stops the hub."""
    settings = hub.settings
    limits = settings.limits
    return Server(
        build_app(hub, lifespan=lifespan),
        host=settings.host,
        port=settings.port if port is None else port,
        max_message_bytes=limits.max_message_bytes,
        max_body_bytes=limits.max_message_bytes + ENVELOPE_BYTES,
        handshake_timeout=limits.handshake_timeout,
        send_limit=limits.send_queue_bytes,
        flush_interval=settings.flush_interval,
    )
