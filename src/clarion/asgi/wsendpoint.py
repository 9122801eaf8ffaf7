"""What every WebSocket endpoint does the same way: accept, open the pipe, serve, clean up."""

from __future__ import annotations

from typing import Any

from clarion.asgi import access
from clarion.asgi.pipe import Pipe, socket_pipe
from clarion.asgitypes import Message, Send
from clarion.core.hub import Hub
from clarion.errors import Forbidden
from clarion.protocol.codes import CloseCode

CLOSE_WAIT = 5.0  # seconds a refused connection's close may take on the portable path


async def accept(
    hub: Hub, scope: dict[str, Any], receive: Any, send: Send, subprotocol: str | None
) -> bool:
    """The handshake every WebSocket endpoint shares: origin check, shutdown, accept.

    A cross-site origin is refused before the upgrade completes (HTTP 403): that is what stops
    cross-site WebSocket hijacking. Returns whether the connection was accepted.
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return False
    try:
        access.check_origin(hub, scope)
    except Forbidden:
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
        return False
    if hub.closing:
        await send({"type": "websocket.close", "code": CloseCode.SHUTDOWN})
        return False
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    return True


class Handler:
    """One connection's handler, as an endpoint's :meth:`WebSocketEndpoint.open` returns it."""

    __slots__ = ()

    def start(self) -> None:
        """The connection is open and served from now on."""

    async def receive(self, message: Message) -> None:
        """One ``websocket.receive`` message, awaited before the next one is handed over."""
        raise NotImplementedError

    def finish(self) -> None:
        """The connection is over (called once)."""

    async def on_message(self, message: Message) -> None:
        """What a listening server hands over: messages, then the disconnect."""
        kind = message["type"]
        if kind == "websocket.receive":
            await self.receive(message)
        elif kind == "websocket.disconnect":
            self.finish()


class WebSocketEndpoint:
    """An ASGI application for one WebSocket endpoint; one instance serves every connection.

    Accept → pipe → :meth:`open` (with the scope) → the handler is served (without the scope:
    its headers are not kept for the connection's lifetime) → the pipe stopped, whatever
    happened. On clarion's own server the handler is handed to the connection
    (:meth:`~clarion.asgitypes.FastWebSocket.listen`), which calls it as messages come, and
    the endpoint's coroutine ends: an idle connection holds no coroutine or task. Elsewhere
    one coroutine per connection awaits ``receive()`` and hands each message over.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def subprotocol(self, offered: list[str]) -> str | None:
        raise NotImplementedError

    async def open(self, scope: dict[str, Any], pipe: Pipe) -> Handler | None:
        """The connection's handler, or ``None`` if it was refused (the pipe is closing)."""
        raise NotImplementedError

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        hub = self.hub
        subprotocol = self.subprotocol(list(scope.get("subprotocols", ())))
        if not await accept(hub, scope, receive, send, subprotocol):
            return
        pipe = socket_pipe(scope, send, hub.settings.limits.send_queue_bytes)
        try:
            handler = await self.open(scope, pipe)
            del scope
            if handler is None:
                await pipe.closed(receive, CLOSE_WAIT)
                return
            handler.start()
            if pipe.listen(handler.on_message):
                return
            try:
                while (message := await receive())["type"] != "websocket.disconnect":
                    if message["type"] == "websocket.receive":
                        await handler.receive(message)
            finally:
                handler.finish()
        finally:
            await pipe.stop()
