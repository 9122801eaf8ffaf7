"""A hub in local development mode (no API key, no token secret) trusts everyone who reaches
it. ``clarion serve`` refuses to listen beyond loopback then; a hub in another server cannot
know where that listens, so it answers this machine's peers only (``403 local_only``), on
every route and transport, unless ``insecure`` lets every address in."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from clarion import Hub, Settings
from clarion.server import Server

from ..conftest import TEST_SERVER, start_uvicorn, timeout


def _outward_address() -> str | None:
    """This machine's address on its outward interface, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


OUTWARD = _outward_address()
pytestmark = pytest.mark.skipif(OUTWARD is None, reason="no address but loopback here")


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[int]:
    """A hub mounted in an application, listening on every interface; its port."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    hub = Hub(settings)
    async with hub.lifespan(None):
        if TEST_SERVER == "asgi":
            app = Starlette(routes=[Mount("/rt", app=hub.asgi_app())])
            portable = await start_uvicorn(app, host="0.0.0.0")
            try:
                yield portable.sockets[0].getsockname()[1]
            finally:
                await portable.shutdown(1.0)
        else:  # clarion's own server, with its direct routes
            server = Server(hub.asgi_app(), host="0.0.0.0", port=0)
            await server.start()
            try:
                yield server.port
            finally:
                await server.shutdown(1.0)


def base(host: str, port: int) -> str:
    return f"{host}:{port}" + ("/rt" if TEST_SERVER == "asgi" else "")


REQUESTS: list[tuple[str, str, Any]] = [
    ("POST", "/api/publish", {"channel": "chat:a", "data": 1}),
    ("POST", "/api/publish_batch", {"publications": [{"channel": "chat:a", "data": 1}]}),
    ("POST", "/api/broadcast", {"channels": ["chat:a"], "data": 1}),
    ("GET", "/api/history?channel=chat:a", None),
    ("GET", "/sse?channel=chat:a", None),
    ("GET", "/poll?channel=chat:a&timeout=0", None),
    ("POST", "/client/publish", {"channel": "chat:a", "data": 1}),
    ("GET", "/healthz", None),
]


async def answers(where: str, check: Callable[[httpx.Response, str], None]) -> None:
    async with httpx.AsyncClient(base_url=f"http://{where}", timeout=timeout(10)) as http:
        for method, path, body in REQUESTS:
            if path.startswith("/sse"):
                async with http.stream(method, path) as r:
                    check(r, path)
                continue
            check(await http.request(method, path, json=body), path)


async def test_development_mode_answers_this_machine_only(caplog: Any) -> None:
    assert OUTWARD is not None
    caplog.set_level(logging.WARNING, logger="clarion.hub")
    async with served(Settings()) as port:

        def refused(r: httpx.Response, path: str) -> None:
            assert r.status_code == 403, path
            if not path.startswith("/sse"):
                assert r.json()["error"]["code"] == "local_only", path

        await answers(base(OUTWARD, port), refused)
        for path in ("/ws", "/stomp"):
            with pytest.raises(InvalidStatus) as handshake:
                async with websockets.connect(
                    f"ws://{base(OUTWARD, port)}{path}", open_timeout=timeout(5)
                ):
                    pass
            assert handshake.value.response.status_code == 403
        said = [
            r.getMessage()
            for r in caplog.records
            if "local development mode" in r.getMessage() and OUTWARD in r.getMessage()
        ]
        assert said and "insecure" in said[0]
        assert len(said) == 1  # once a minute per address, not once per request

        def served_here(r: httpx.Response, path: str) -> None:
            assert r.status_code == 200, (path, r.status_code)

        await answers(base("127.0.0.1", port), served_here)
        async with websockets.connect(f"ws://{base('127.0.0.1', port)}/ws") as ws:
            await ws.send('{"id": 1, "op": "ping"}')
            assert await ws.recv() == '{"id":1,"ok":{}}'


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(Settings(insecure=True), id="insecure"),
        pytest.param(Settings(api_key="k" * 32, token_secret="s" * 32), id="configured"),
    ],
)
async def test_insecure_or_configured_answers_every_address(settings: Settings) -> None:
    assert OUTWARD is not None
    headers = {"Authorization": "apikey " + "k" * 32}
    async with served(settings) as port:
        where = f"http://{base(OUTWARD, port)}"
        async with httpx.AsyncClient(base_url=where, timeout=timeout(10)) as http:
            r = await http.post(
                "/api/publish", json={"channel": "chat:a", "data": 1}, headers=headers
            )
            assert r.status_code == 200, r.text
            assert (await http.get("/healthz")).status_code == 200


async def test_the_python_client_says_why_the_hub_refused_it() -> None:
    """A refused WebSocket upgrade in the hub's error shape is told as the hub said it, not
    guessed at (a wrong URL)."""
    from clarion.client import ConnectFailed, connect

    assert OUTWARD is not None
    async with served(Settings()) as port:
        with pytest.raises(ConnectFailed) as refused:
            async with connect(f"http://{base(OUTWARD, port)}", transport="ws", open_timeout=5):
                pass  # pragma: no cover
    said = str(refused.value)
    assert "HTTP 403" in said and "local_only" in said and "insecure" in said
    assert "the hub's URL" not in said


@pytest.mark.parametrize(
    ("settings", "who"),
    [
        (Settings(), "anyone on this machine"),
        (Settings(insecure=True), "anyone who can reach it"),
        (Settings(api_key="k" * 32), None),
    ],
)
async def test_a_hub_mounted_in_an_application_announces_development_mode(
    caplog: Any, settings: Settings, who: str | None
) -> None:
    # Not only `clarion serve`: the hub itself says so at start, once.
    caplog.set_level(logging.INFO, logger="clarion")
    hub = Hub(settings)
    await hub.start()
    await hub.close()
    said = [r for r in caplog.records if "local development mode" in r.getMessage()]
    if who is None:
        assert said == []
    else:
        (line,) = said
        assert line.levelno == logging.WARNING and who in line.getMessage()
