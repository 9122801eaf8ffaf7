"""Routes match the path as sent: no spelling of a path reaches a route but its own.

A proxy in front of the hub may allow or deny by path prefix; if the hub decoded or normalised
paths before routing, ``/%61pi/…`` would pass the proxy as "not /api" and reach the API. Every
route of the app is tried over a raw socket in many spellings, with and without the API key:
each spelling is refused (404, or 400 where the request line itself is refused), and only the
canonical path reaches the route, where the API key is required — but on ``/healthz`` and
``/clarion.js``, the two public paths.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from starlette.routing import BaseRoute, Route, WebSocketRoute

from clarion import Hub, Settings

from ..conftest import RunningHub, timeout
from .servers import SERVERS

KEY = "paths-key"
# Public without the API key. The client transports and the client API take connection tokens.
PUBLIC = {"/healthz", "/clarion.js"}
TOKEN_AUTH = {"/sse", "/poll", "/ws", "/stomp", "/client/publish", "/client/history"}
TOKEN_AUTH |= {"/client/presence", "/client/presence_stats"}


def _concrete(path: str) -> str:
    return path.replace("{id}", "wh_paths")


def _routes(routes: list[BaseRoute]) -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, Route):
            methods = sorted((route.methods or {"GET"}) - {"HEAD"})
            yield route.path, methods[0]
        elif isinstance(route, WebSocketRoute):
            yield route.path, "GET"


def _spellings(path: str) -> Iterator[str]:
    """Other ways to write ``path`` that a decoding or normalising router would accept."""
    first = path[1]
    yield "/" + f"%{ord(first):02x}" + path[2:]  # /%61pi/…
    yield "/" + f"%{ord(first):02X}" + path[2:]
    yield "/" + f"%25{ord(first):02x}" + path[2:]  # double encoding
    yield "".join(f"%{ord(c):02X}" if c != "/" else c for c in path)  # every character
    yield path[:-1] + f"%{ord(path[-1]):02x}"  # the last character
    if path.count("/") > 1:
        head, _, tail = path.rpartition("/")
        yield f"{head}%2F{tail}"  # an encoded separator
        yield f"{head}%2f{tail}"
        yield f"{head}//{tail}"
        yield f"{head}/./{tail}"
        yield f"{head}/x/../{tail}"
        yield f"{head}%2E%2E/{tail}"
        yield f"{head}\\{tail}"
    yield "/" + path  # //api/…
    yield path + "/"
    yield path + "."
    yield path + "%20"
    yield path + "%00"
    yield path + ";x=1"
    yield path.upper()
    yield path[0] + path[1].upper() + path[2:]


async def _status(hub: RunningHub, method: str, target: str, key: str | None) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{hub.port}", "Connection: close"]
        if key is not None:
            head.append(f"Authorization: apikey {key}")
        body = b"{}" if method in ("POST", "DELETE") else b""
        head.append(f"Content-Length: {len(body)}")
        writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        line = await asyncio.wait_for(reader.readline(), timeout(5))
        return int(line.split()[1])
    finally:
        writer.close()


def _settings() -> Settings:
    return Settings(api_key=KEY, token_secret="s" * 32)


@pytest.fixture(params=SERVERS)
async def keyed(request, hub_factory) -> AsyncIterator[RunningHub]:  # type: ignore[no-untyped-def]
    """The hub under clarion's own server, and under uvicorn (the portable ASGI path)."""
    if request.param == "clarion":
        yield await hub_factory(_settings())
        return
    hub = Hub(_settings())
    await hub.start()
    server = uvicorn.Server(
        uvicorn.Config(hub.asgi_app(), host="127.0.0.1", port=0, log_level="error", lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(timeout(10)):
            while not server.started:
                await asyncio.sleep(0.01)
        yield RunningHub(hub, server, server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout(10))
        await hub.close()


async def test_the_canonical_paths_need_the_key_but_the_public_ones(keyed: RunningHub) -> None:
    routes = list(_routes(keyed.hub.asgi_app().routes))
    assert {path for path, _ in routes} >= {"/api/openapi.json", "/api/publish", "/metrics"}
    seen = {}
    for path, method in routes:
        if path in TOKEN_AUTH:
            continue
        target = _concrete(path)
        without = await _status(keyed, method, target, None)
        with_key = await _status(keyed, method, target, KEY)
        seen[path] = (without, with_key)
        if path in PUBLIC:
            assert without == with_key == 200, path
        else:
            assert without == 401, path
            assert with_key != 401, path
    assert seen["/api/openapi.json"] == (401, 200)


async def test_no_other_spelling_of_a_path_reaches_its_route(keyed: RunningHub) -> None:
    tried = 0
    for path, method in _routes(keyed.hub.asgi_app().routes):
        if "{" in path:  # respelling what follows a parameter may name another resource
            prefix, brace, rest = path.partition("/{")
            spellings = [s + _concrete(brace + rest) for s in _spellings(prefix)]
        else:
            spellings = list(_spellings(_concrete(path)))
        for spelling in spellings:
            for key in (None, KEY):
                status = await _status(keyed, method, spelling, key)
                assert status in (400, 404, 405), (method, spelling, key, status)
                tried += 1
            # As an absolute-form request target, as a proxy would send it.
            absolute = f"http://127.0.0.1:{keyed.port}{spelling}"
            assert await _status(keyed, method, absolute, KEY) in (400, 404, 405), absolute
    assert tried > 500


async def test_a_websocket_upgrade_on_another_spelling_is_refused(keyed: RunningHub) -> None:
    # 404 with the API's error body, on both servers (they let the app answer the handshake):
    # a 403 would read like a refused origin or token.
    for path in ("/%77s", "/w%73", "/%73tomp", "//ws", "/ws/", "/WS", "/", "/wrong/ws"):
        reader, writer = await asyncio.open_connection("127.0.0.1", keyed.port)
        try:
            writer.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{keyed.port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Protocol: clarion.v1\r\n\r\n"
                ).encode()
            )
            response = await asyncio.wait_for(reader.read(), timeout(5))
            head, _, body = response.partition(b"\r\n\r\n")
            assert int(head.split()[1]) == 404, (path, response)
            error = json.loads(body)["error"]
            assert error["code"] == "not_found", (path, response)
            if path == "/wrong/ws":  # a wrong URL is told where the endpoints are
                assert "/ws (clarion.v1) and /stomp (STOMP)" in error["message"]
        finally:
            writer.close()
