"""The demo hub: its settings, its token endpoint, its pages, the feeds it runs, and the board
it keeps."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from importlib.resources import files
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from clarion.asgi import access
from clarion.asgi.responses import EXCEPTION_HANDLERS, ErrorResponse, JSONResponse
from clarion.asgitypes import DirectRoute, direct_routes, server_errors
from clarion.core.auth import mint_token
from clarion.core.hub import Hub
from clarion.demo.board import Board, keep
from clarion.demo.feeds import DEVICES, DeviceSpec, device, ticker
from clarion.errors import BadRequest, EngineUnavailable, NotFound
from clarion.settings import Settings
from clarion.tasks import stop

# A person's name on the demo pages: it is the token's user. Device users are "device:<id>",
# which no name can spell, so a page cannot pose as a device.
NAME = re.compile(r"[A-Za-z0-9_-]{1,24}")
TOKEN_TTL = 600  # seconds; the pages' client asks for a new one before it expires
BOARD_WAIT = 10  # seconds a snapshot waits for the keeper's first load before giving up

# What a person may do on the demo pages.
READ = ["chat:*", "typing:*", "ticker:*", "iot:*", "board:*", "cursors:*"]
WRITE = ["chat:*", "typing:*", "board:*", "cursors:*"]

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def demo_settings(host: str = "127.0.0.1", port: int = 8000, data_dir: str = ".") -> Settings:
    """The demo hub's settings: a fresh token secret and API key for each run, origins of the
    pages it serves, and one namespace per kind of channel the apps use."""
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    if host in ("", "0.0.0.0", "::"):
        origins = ["*"]  # reached by any of the machine's addresses: the demo was asked to be open
    elif host not in ("127.0.0.1", "localhost", "::1"):
        origins.append(f"http://{f'[{host}]' if ':' in host else host}:*")
    people = {"presence_info": True, "join_leave": "user", "presence_grace": 2}
    day = 86400
    return Settings(
        host=host,
        port=port,
        token_secret=secrets.token_urlsafe(32),
        # The server API stays closed: the feeds publish in-process, the pages with tokens.
        api_key=secrets.token_urlsafe(24),
        allowed_origins=origins,
        data_dir=data_dir,
        namespaces={
            "chat": {"history_size": 200, "history_ttl": day, **people},
            "board": {"history_size": 1000, "history_ttl": day, **people},
            "iot": {
                "history_size": 100,
                "presence_info": True,
                "join_leave": "user",
                "presence_grace": 1,
            },
            "ticker": {"history_size": 300, "presence": False, "client_publish": False},
            # Live signals, never stored: a typing flag or a cursor is worth its latest value.
            "typing": {"ephemeral": True, "presence": False},
            "cursors": {"ephemeral": True, "presence": False},
        },
    )


def person_token(settings: Settings, name: str) -> str:
    assert settings.token_secret is not None
    return mint_token(
        settings.token_secret,
        name,
        READ,
        publish=WRITE,
        ttl=TOKEN_TTL,
        info={"name": name, "color": color_of(name)},
    )


def color_of(name: str) -> str:
    """A stable hue per name, so a person has one colour on every page and in every tab."""
    hue = sum(name.encode()) * 47 % 360
    return f"hsl({hue} 70% 45%)"


class Pages:
    """The files of ``clarion/static/demo``, read once."""

    def __init__(self) -> None:
        root = files("clarion") / "static" / "demo"
        self.files: dict[str, tuple[bytes, str]] = {}
        for entry in root.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in TYPES:
                self.files[entry.name] = (entry.read_bytes(), TYPES[suffix])

    def response(self, name: str) -> Response:
        found = self.files.get(name) or self.files.get(name + ".html")
        if found is None:
            return ErrorResponse(NotFound("no such demo page"))
        body, media_type = found
        return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})


class Demo:
    """The demo around a hub: pages, token endpoint and the board's snapshot in front of the
    hub's own app, and beside it the publishers (the ticker's prices, the simulated devices)
    and the board's keeper.

    ``app`` is the ASGI application to serve; its lifespan starts the hub and the ticker. The
    devices and the keeper connect as clients over the network, so they start once the server
    listens: :meth:`serving` gives them its URL.
    """

    def __init__(self, hub: Hub, devices: tuple[DeviceSpec, ...] = DEVICES) -> None:
        self.hub = hub
        self.devices = devices
        self.pages = Pages()
        self.board = Board()
        self.tasks: set[asyncio.Task[None]] = set()
        self.hub_app = hub.asgi_app()
        self.router = Starlette(
            routes=[
                Route("/", self._home, methods=["GET"]),
                Route("/demo", self._home, methods=["GET"]),
                Route("/demo/token", self._token, methods=["GET"]),
                Route("/demo/board.json", self._board, methods=["GET"]),
                Route("/demo/devices.json", self._devices, methods=["GET"]),
                Route("/demo/{name:path}", self._page, methods=["GET"]),
            ],
            lifespan=self._lifespan,
            # Errors in the shape of every other of the hub (a GET-only page asked with POST: 405).
            exception_handlers=EXCEPTION_HANDLERS,
        )

    @property
    def direct_routes(self) -> Mapping[bytes, DirectRoute]:
        # The hub's: no demo path is one of them.
        return direct_routes(self.hub_app)

    @property
    def server_errors(self) -> Mapping[int, bytes]:
        return server_errors(self.hub_app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or (
            scope["type"] == "http"
            and (scope["path"] in ("/", "/demo") or scope["path"].startswith("/demo/"))
        ):
            await self.router(scope, receive, send)
        else:
            await self.hub_app(scope, receive, send)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def serving(self, url: str) -> None:
        """The server listens at ``url``: the devices and the board's keeper can connect."""
        secret = self.hub.settings.token_secret
        assert secret is not None
        for spec in self.devices:
            self.spawn(device(url, secret, spec), f"demo device {spec.id}")
        self.spawn(keep(url, secret, self.board), "demo board keeper")

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        async with self.hub.lifespan():
            self.spawn(ticker(self.hub), "demo ticker")
            try:
                yield
            finally:
                # Re-cancelling: the ticker publishes through the engine and the devices run
                # the client, either of which may lose a cancel (see clarion.tasks).
                await stop(list(self.tasks), timeout=5)

    async def _home(self, request: Request) -> Response:
        return RedirectResponse("/demo/", status_code=307)

    async def _page(self, request: Request) -> Response:
        name = request.path_params["name"] or "index"
        return self.pages.response(name)

    async def _devices(self, request: Request) -> Response:
        return JSONResponse(
            [{"id": d.id, "label": d.label, "temperature": d.temperature} for d in self.devices]
        )

    async def _board(self, request: Request) -> Response:
        # The notes and the cursor they are at: a page draws them, then subscribes from there.
        try:
            async with asyncio.timeout(BOARD_WAIT):
                await self.board.loaded.wait()
        except TimeoutError:
            return ErrorResponse(EngineUnavailable("the board is not loaded yet: try again"))
        return JSONResponse(self.board.snapshot(), headers={"cache-control": "no-store"})

    async def _token(self, request: Request) -> Response:
        # Demo-only: a token for whoever asks, for the name they ask for.
        name = access.single_param(access.query_params(request.scope), "user") or ""
        if not NAME.fullmatch(name):
            return ErrorResponse(BadRequest("user: 1 to 24 letters, digits, '_' or '-'"))
        token = person_token(self.hub.settings, name)
        body = {"token": token, "user": name, "expires": int(time.time()) + TOKEN_TTL}
        return JSONResponse(body, headers={"cache-control": "no-store"})
