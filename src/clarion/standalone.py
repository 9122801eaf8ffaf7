"""The hub on clarion's own server, configured from its settings (``clarion serve``, tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clarion.asgi.app import build_app
from clarion.asgi.publish import body_cap
from clarion.core.hub import Hub
from clarion.protocol.proxies import TrustedProxies, address_key, parse_address
from clarion.server import Server
from clarion.settings import Settings


def make_server(
    hub: Hub,
    *,
    lifespan: bool = True,
    port: int | None = None,
    reuse_port: bool = False,
    app: Any = None,
) -> Server:
    """A :class:`Server` for ``hub``; with ``lifespan`` the server starts and stops the hub.

    ``reuse_port``: listen with ``SO_REUSEPORT``, beside the other workers of the same port.
    ``app`` serves instead of the hub's own app (one that wraps it, like ``clarion demo``'s);
    its lifespan is then the one that starts the hub.
    """
    settings = hub.settings
    limits = settings.limits
    return Server(
        build_app(hub, lifespan=lifespan) if app is None else app,
        host=settings.host,
        port=settings.port if port is None else port,
        max_message_bytes=limits.max_message_bytes,
        max_body_bytes=body_cap(hub),
        handshake_timeout=limits.handshake_timeout,
        send_limit=limits.send_queue_bytes,
        flush_interval=settings.flush_interval,
        compiled=settings.compiled,
        io_uring=settings.io_uring,
        keepalive_timeout=limits.keepalive_timeout,
        body_timeout=limits.body_timeout,
        send_timeout=limits.send_timeout,
        max_pending=limits.max_pending_connections,
        max_pending_per_ip=limits.max_pending_connections_per_ip,
        client_key=peer_key(settings),
        reuse_port=reuse_port,
        permessage_deflate=settings.permessage_deflate,
    )


def peer_key(settings: Settings) -> Callable[[str], str | None]:
    """What the server's per-IP cap counts a peer address as, before any request is read.

    A trusted proxy is not counted per address (the clients behind it are, once their address
    is read from its headers); anyone else counts as its address, IPv6 as its network.
    """
    proxies = TrustedProxies(settings.trusted_proxies)
    prefix = settings.limits.ipv6_prefix

    def key(peer: str) -> str | None:
        if proxies:
            address = parse_address(peer)
            if address is not None and address in proxies:
                return None
        return address_key(peer, prefix)

    return key
