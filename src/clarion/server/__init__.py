"""clarion's standalone ASGI 3 server, built for WebSocket fan-out.

It serves any ASGI 3 app over HTTP/1.1 and WebSocket, and offers websocket apps a faster write
path through the ``clarion.fast_websocket`` scope extension: pre-built frames pushed to a
connection are coalesced into one write per connection per event-loop iteration. See
``docs/server.md``.
"""

from clarion.server.config import ClientDisconnected
from clarion.server.fastws import FAST_WEBSOCKET_EXTENSION, FastWebSocket
from clarion.server.lifespan import LifespanFailed
from clarion.server.runner import Server, serve

__all__ = [
    "FAST_WEBSOCKET_EXTENSION",
    "ClientDisconnected",
    "FastWebSocket",
    "LifespanFailed",
    "Server",
    "serve",
]
