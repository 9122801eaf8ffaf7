"""The hub's ASGI application: every endpoint of the public contract under one router."""

from __future__ import annotations

import logging
from importlib.resources import files
from typing import Any, Protocol, runtime_checkable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from clarion.asgi import access
from clarion.asgi.admin import admin_routes
from clarion.asgi.api import ServerAPI
from clarion.asgi.clientapi import ClientEndpoint, ClientRates
from clarion.asgi.info import InfoAPI
from clarion.asgi.openapi import document
from clarion.asgi.poll import PollEndpoint
from clarion.asgi.portclaim import PortClaim
from clarion.asgi.publish import INTERNAL, BatchEndpoint, PublishEndpoint, body_cap
from clarion.asgi.responses import (
    EXCEPTION_HANDLERS,
    JSONResponse,
    error_body,
    refuse_handshake,
    send_error,
    watch_send,
)
from clarion.asgi.sse import SseEndpoint
from clarion.asgi.stomp import StompEndpoint
from clarion.asgi.websocket import ClarionWebSocket
from clarion.asgitypes import DirectRoute
from clarion.core.hub import Hub
from clarion.core.limits import LogLimit
from clarion.errors import (
    BadRequest,
    ClarionError,
    Forbidden,
    NodeFull,
    NotFound,
    NotStarted,
    TooLarge,
    UpgradeRequired,
)
from clarion.protocol.errors import ErrorCode


def encoded_path(scope: Scope) -> bool:
    """Whether the request's path, as sent, holds a percent-escape.

    Routes match the path as sent, not its decoded form: none of the hub's paths needs an
    escape, so ``/%61pi/…`` or ``/api%2Fhistory`` names nothing here, and a proxy in front that
    allows or denies by path prefix sees the same path the hub routes. A server that does not
    pass ``raw_path`` leaves only the decoded path to route on.
    """
    raw: bytes | None = scope.get("raw_path")
    # find, not ``in``: CPython's ``bytes in bytes`` raises and clears a TypeError first.
    return raw is not None and raw.partition(b"?")[0].find(b"%") >= 0


def route_path(scope: Scope) -> str:
    """The path below the app's mount point (``root_path``), as Starlette routes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


# A request to a hub never started: said at ERROR, once a minute (every request gets a 503).
_not_started = LogLimit(logging.getLogger("clarion.hub"))
# A request from another machine to a hub in development mode: once a minute per address.
_elsewhere = LogLimit(logging.getLogger("clarion.hub"))

UPGRADE_REQUIRED = (
    "this is a WebSocket endpoint: connect with a WebSocket client (the request needs "
    "'Upgrade: websocket' and 'Connection: Upgrade'). If a WebSocket client did, a proxy in "
    "front of the hub dropped those headers: pass them on (docs/deployment.md)"
)

LOCAL_ONLY = (
    "this hub is in local development mode (no api_key and no token secret), in which anyone "
    "may publish and subscribe: it answers this machine only. Configure api_key and "
    "token_secret (docs/security.md), or set insecure = true (CLARION_INSECURE=1) to let every "
    "address in"
)


class App:
    """The hub's ASGI application: the WebSocket endpoints, ``POST /api/publish`` and
    ``POST /api/publish_batch`` go straight to their handlers.

    A WebSocket connection's coroutine lives as long as the connection; skipping the framework's
    middleware frames for it saves memory on every idle connection. A publication through the
    API skips them too: they were a tenth of its cost, and the endpoint answers every error
    itself. Everything else is routed by Starlette (``self.router``).

    On clarion's own server, ``POST /api/publish`` and ``POST /api/publish_batch`` are direct
    routes (``direct_routes``): the server hands the endpoint a request whose body is in without
    making it an ASGI request.
    """

    def __init__(
        self,
        hub: Hub,
        router: Starlette,
        websockets: dict[str, Any],
        publish: PublishEndpoint | None = None,
        batch: BatchEndpoint | None = None,
        server_errors: dict[int, bytes] | None = None,
    ) -> None:
        self.hub = hub
        self.router = router
        self.websockets = websockets
        # What clarion's server answers itself, in the API's error shape (asgitypes).
        self.server_errors = server_errors or {}
        # Answered before the router, on any server; and on clarion's as direct routes.
        self.publishing: dict[str, PublishEndpoint] = {}
        if publish is not None:
            self.publishing["/api/publish"] = publish
        if batch is not None:
            self.publishing["/api/publish_batch"] = batch
        self.direct_routes: dict[bytes, DirectRoute] = {
            path.encode(): endpoint for path, endpoint in self.publishing.items()
        }
        # `clarion serve` refuses to listen beyond loopback in development mode; a hub in
        # another server cannot know where that listens, so it looks at each peer instead.
        settings = hub.settings
        self.local_only = self.direct_local_only = (
            settings.development_mode and not settings.insecure
        )
        # An engine that keeps channels in this process serves one process per port.
        self.claim: PortClaim | None = None
        if getattr(hub.engine, "process_local", False):
            self.claim = PortClaim(hub)
            hub.extensions.append(self.claim)  # let go when the hub closes

    @property
    def routes(self) -> list[BaseRoute]:
        return self.router.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal: ClarionError | None = None
            if encoded_path(scope):
                refusal = NotFound("Not Found")
            else:
                try:
                    self.hub.check_started()
                except NotStarted as exc:
                    _not_started.log(logging.ERROR, "", "%s", exc.message)
                    refusal = exc
                except ClarionError as exc:  # stood down: its port is another process's
                    refusal = exc
                if refusal is None and self.local_only and access.from_elsewhere(scope):
                    peer = str(scope["client"][0])
                    _elsewhere.log(logging.WARNING, peer, "refused %s: %s", peer, LOCAL_ONLY)
                    refusal = Forbidden(LOCAL_ONLY, code=ErrorCode.LOCAL_ONLY)
                if refusal is None and self.claim is not None and not self.claim.serves(scope):
                    # The application's own publishes too, until the port is this hub's.
                    refusal = self.claim.refuse(scope["server"][1])
            if refusal is not None:
                if scope["type"] == "http":
                    await send_error(send, refusal)
                else:  # refused at the handshake, like any unknown WebSocket path
                    await refuse_handshake(scope, send, refusal)
                return
        if scope["type"] == "http" and scope["method"] == "POST":
            publishing = self.publishing.get(route_path(scope))
            if publishing is not None:
                await publishing(scope, receive, send)
                return
        if scope["type"] == "http" and route_path(scope) in self.websockets:
            # Said plainly, not a bare 404: this is what a proxy that drops the upgrade's
            # headers (or a browser opening the address) gets.
            await send_error(send, UpgradeRequired(UPGRADE_REQUIRED), [(b"upgrade", b"websocket")])
            return
        if scope["type"] == "websocket":
            endpoint = self.websockets.get(route_path(scope))
            if endpoint is not None:
                connection = endpoint(scope, receive, send)
                # This frame lives as long as the connection: it must not keep the scope (and
                # its headers) alive after the endpoint has let go of it.
                del scope
                await connection
                return
        elif scope["type"] == "http":
            # So that the router's error handler tells a client that left from a fault.
            send = watch_send(scope, send)
        await self.router(scope, receive, send)


@runtime_checkable
class ServesRoutes(Protocol):
    """A hub extension with HTTP endpoints of its own (the webhooks' ``/api/webhooks``)."""

    def routes(self) -> list[BaseRoute]: ...


ROOT_MESSAGE = (
    "this is a clarion hub: nothing is served at /. Its endpoints: /ws (WebSocket, clarion.v1), "
    "/stomp (STOMP), /sse, /poll, /api/… (the server API), /healthz, /clarion.js (the "
    "browser client); clarion demo serves its apps at /demo/"
)


def _unrouted(default: Any) -> Any:
    """The router's answer to what no route takes; for a WebSocket, a 404 that says where the
    endpoints are, not the bare 403 that reads like an auth refusal."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) == "/":
            # Someone opened the hub's address in a browser: say what is here.
            await send_error(send, NotFound(ROOT_MESSAGE))
            return
        if scope["type"] != "websocket":
            await default(scope, receive, send)
            return
        message = (
            f"no WebSocket endpoint at {scope['path']}: the hub's are its /ws (clarion.v1) "
            "and /stomp (STOMP)"
        )
        await refuse_handshake(scope, send, NotFound(message))

    return answer


def build_app(hub: Hub, *, lifespan: bool = False) -> App:
    """The ASGI app of ``hub``.

    Mounted in a host application, the host's lifespan starts the hub (``hub.lifespan``);
    ``lifespan=True`` makes the app run it itself, as ``clarion serve`` does.
    """
    api = ServerAPI(hub)
    info = InfoAPI(hub)
    openapi = document()

    async def openapi_json(request: Request) -> Response:
        # It maps the API for whoever reads it: keyed like the rest of the server API.
        access.check_api_key(hub, request.scope)
        return JSONResponse(openapi)

    browser_client = (files("clarion") / "static" / "clarion.js").read_bytes()

    async def clarion_js(request: Request) -> Response:
        # A public, credential-free ES module: any page may import it.
        return Response(
            browser_client,
            media_type="text/javascript; charset=utf-8",
            headers={"access-control-allow-origin": "*", "cache-control": "public, max-age=300"},
        )

    websockets: dict[str, Any] = {"/ws": ClarionWebSocket(hub), "/stomp": StompEndpoint(hub)}
    publish = PublishEndpoint(hub)
    batch = BatchEndpoint(hub)
    rates = ClientRates(hub)  # the client API's paths share each user's budgets
    routes: list[BaseRoute] = [
        Route("/api/publish", publish, methods=["POST"]),
        Route("/api/publish_batch", batch, methods=["POST"]),
        Route("/api/broadcast", api.broadcast, methods=["POST"]),
        Route("/api/history", api.history, methods=["GET"]),
        Route("/api/presence", api.presence, methods=["GET"]),
        Route("/api/presence_stats", api.presence_stats, methods=["GET"]),
        Route("/api/channels", info.channels, methods=["GET"]),
        Route("/api/info", info.info, methods=["GET"]),
        Route("/api/disconnect", api.disconnect, methods=["POST"]),
        Route("/api/subscribe", api.subscribe, methods=["POST"]),
        Route("/api/unsubscribe", api.unsubscribe, methods=["POST"]),
        Route("/api/openapi.json", openapi_json, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/clarion.js", clarion_js, methods=["GET"]),
        WebSocketRoute("/ws", websockets["/ws"]),
        WebSocketRoute("/stomp", websockets["/stomp"]),
        # Raw ASGI endpoints: they answer OPTIONS (CORS preflight) and 405 themselves.
        Route("/sse", SseEndpoint(hub)),
        Route("/poll", PollEndpoint(hub)),
        # The client API for sessions off WebSocket: connection tokens, client rules.
        Route(
            "/client/publish",
            ClientEndpoint(hub, "publish", rates),
            methods=["POST", "OPTIONS"],
        ),
        Route("/client/history", ClientEndpoint(hub, "history", rates)),
        Route("/client/presence", ClientEndpoint(hub, "presence", rates)),
        Route("/client/presence_stats", ClientEndpoint(hub, "presence_stats", rates)),
        *(r for ext in hub.extensions if isinstance(ext, ServesRoutes) for r in ext.routes()),
        *admin_routes(hub),
    ]
    router = Starlette(
        routes=routes,
        lifespan=hub.lifespan if lifespan else None,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    # "/api/history/" is not "/api/history": no redirect, one spelling per route.
    router.router.redirect_slashes = False
    router.router.default = _unrouted(router.router.default)
    return App(hub, router, websockets, publish, batch, server_errors(hub))


def server_errors(hub: Hub) -> dict[int, bytes]:
    """The errors clarion's server answers before the app sees a request, as the API's
    ``{"error": {"code", "message"}}`` with its code's own status: a client of the hub reads
    them as any other. 408 and 431 have no code of theirs and stay plain text: the clients go by
    the status there (a 408 is tried again later)."""
    cap = body_cap(hub)
    return {
        error.status: error_body(error)
        for error in (
            BadRequest("malformed HTTP request"),
            TooLarge(f"request body over {cap} bytes"),
            INTERNAL,
            NodeFull("this node takes no more connections now"),
        )
    }
