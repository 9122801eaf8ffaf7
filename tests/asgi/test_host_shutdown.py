"""uvicorn stopping with its ``--timeout-graceful-shutdown``: it cancels the requests still
open before the application's lifespan hears of it. An event stream and a long poll it
cancels are answered as the hub's own shut-down would answer them (``disconnect`` 4000,
reconnect elsewhere), not ended by an error, a traceback in the log and a 500."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from clarion import Hub, Settings

from ..conftest import timeout, until


async def test_streams_and_polls_cancelled_by_uvicorn_are_told_to_reconnect(caplog: Any) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    caplog.set_level(logging.ERROR)
    hub = Hub(Settings())
    await hub.start()
    app = Starlette(routes=[Mount("/", app=hub.asgi_app())])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or serving.done(), wait=10)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=timeout(30)) as http:
            cursor = (await http.get("/poll?channel=chat:a&timeout=0")).json()["cursor"]

            async def read_stream() -> str:
                text = ""
                async with http.stream("GET", "/sse?channel=chat:a") as response:
                    async for chunk in response.aiter_text():
                        text += chunk
                return text

            stream = asyncio.create_task(read_stream())
            poll = asyncio.create_task(
                http.get("/poll", params={"channel": "chat:a", "cursor": cursor, "timeout": "30"})
            )
            await until(lambda: len(hub.sessions) == 2, wait=10)
            server.should_exit = True
            await asyncio.wait_for(serving, timeout(20))
            answer = await asyncio.wait_for(poll, timeout(10))
            assert answer.status_code == 200, answer.text
            assert answer.json()["disconnect"]["code"] == 4000
            told = await asyncio.wait_for(stream, timeout(10))
            assert "event: disconnect" in told and '"code":4000' in told
        assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
    finally:
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)
        await hub.close()
