"""A hub mounted in an application that never started it (no ``hub.lifespan``) refuses every
request with ``503 not_started``, says why in the log, and refuses app code's publishes: it
would otherwise take publications and subscriptions and never deliver a live one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from clarion import Hub, Settings
from clarion.errors import NotStarted
from clarion.server import Server

from ..conftest import TEST_SERVER, start_uvicorn, timeout


@pytest.fixture
async def unstarted() -> AsyncIterator[tuple[Hub, str]]:
    """A hub's app served without the hub ever starting, on the suite's server path."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    hub = Hub(Settings())
    app = Starlette(routes=[Mount("/rt", app=hub.asgi_app())])  # no lifespan=hub.lifespan
    if TEST_SERVER == "asgi":
        portable = await start_uvicorn(app)
        port = portable.sockets[0].getsockname()[1]
        try:
            yield hub, f"127.0.0.1:{port}/rt"
        finally:
            await portable.shutdown(1.0)
    else:
        server = Server(hub.asgi_app(), host="127.0.0.1", port=0)  # its own app, unmounted
        await server.start()
        try:
            yield hub, f"127.0.0.1:{server.port}"
        finally:
            await server.shutdown(1.0)


async def test_every_request_is_refused_until_the_hub_starts(
    unstarted: tuple[Hub, str], caplog: Any
) -> None:
    hub, where = unstarted
    caplog.set_level(logging.ERROR, logger="clarion.hub")
    async with httpx.AsyncClient(base_url=f"http://{where}", timeout=timeout(10)) as http:
        for method, path, body in (
            ("POST", "/api/publish", {"channel": "chat:a", "data": 1}),
            ("POST", "/api/broadcast", {"channels": ["chat:a"], "data": 1}),
            ("GET", "/api/history?channel=chat:a", None),
            ("GET", "/sse?channel=chat:a", None),
            ("GET", "/poll?channel=chat:a&timeout=0", None),
            ("GET", "/healthz", None),
        ):
            r = await http.request(method, path, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["code"] == "not_started", path
            assert "hub.lifespan" in r.json()["error"]["message"]
    for path in ("/ws", "/stomp"):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(f"ws://{where}{path}", open_timeout=timeout(5)):
                pass
        assert refused.value.response.status_code == 503
    assert any("never started" in r.getMessage() for r in caplog.records)
    with pytest.raises(NotStarted):
        await hub.publish("chat:a", "from app code")
    with pytest.raises(NotStarted):
        await hub.broadcast(["chat:a"], "from app code")

    # Started, the same app serves.
    await hub.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{where}", timeout=timeout(10)) as http:
            r = await http.post("/api/publish", json={"channel": "chat:a", "data": 1})
            assert r.status_code == 200, r.text
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await hub.close()
