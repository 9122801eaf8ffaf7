"""The hub mounted in an application with the application's own middleware: a client that
goes away leaves no error behind it."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.routing import Mount

from clarion import Hub, Settings

from ..conftest import start_uvicorn, timeout, until


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_long_poll_whose_client_went_away_is_answered_for_the_middleware() -> None:
    """Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) logged "No response
    returned" with a traceback for every long poll given up by its client: a line per request
    anyone could cause."""
    hub = Hub(Settings())
    await hub.start()

    async def passing(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    app = Starlette(routes=[Mount("/rt", app=hub.asgi_app())])
    app.add_middleware(BaseHTTPMiddleware, dispatch=passing)
    server = await start_uvicorn(app, 0, hub)
    errors = Records()  # uvicorn's own loggers do not reach the root logger
    for name in ("uvicorn.error", ""):
        logging.getLogger(name).addHandler(errors)
    try:
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /rt/poll?channel=chat:gone&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await until(lambda: hub.sessions)  # the poll waits
            writer.close()  # and its client goes away
            await until(lambda: not hub.sessions)
        await asyncio.sleep(timeout(0.3))
        gc.collect()
    finally:
        await server.shutdown(timeout=timeout(2))
        for name in ("uvicorn.error", ""):
            logging.getLogger(name).removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]
