"""Fixtures for the server tests: real servers on 127.0.0.1, port 0, on both event loops."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from clarion.server import Server, fastws

from .helpers import open_writers


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    # The server runs under uvloop in production and must also work on the stdlib loop.
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """``await start_server(app, **options)`` → a started :class:`Server`; shut down after."""
    servers: list[Server] = []

    async def start(app: Any, **options: Any) -> Server:
        server = Server(app, host="127.0.0.1", port=0, **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await asyncio.wait_for(server.shutdown(timeout=1.0), 5)


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    """Close the raw client connections a test opened (and may have left open on purpose)."""
    yield
    while open_writers:
        writer = open_writers.pop()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


BUILT = fastws.use_compiled(True)  # whether the compiled loops were built here
# "" where the compiled flush sends through io_uring here, else why not (the kernel decides).
RING = fastws.NO_RING

# start_server's variants: the compiled loops as a server runs them by default (their sends
# batched through io_uring where the kernel allows it), the compiled loops with one send per
# connection (io_uring=False, and wherever the kernel refuses io_uring), the Python loops.
LOOPS = ["compiled", "one-send", "python"]


def on_both_loops(request: Any, start_server: StartServer, what: str) -> StartServer:
    """``start_server`` on the compiled loops (``request.param`` "compiled", or "one-send" for
    their sends one by one) or on the Python code they fall back to; ``what`` names what the
    compiled module would have tested."""
    compiled = request.param != "python"
    if compiled and not BUILT:
        # CI installs with a compiler: there, a missing module is a broken build, not a choice.
        if os.environ.get("CI") == "true":
            pytest.fail(f"clarion.server._fastloop was not built: {what} went untested")
        pytest.skip("clarion.server._fastloop is not built (no C compiler at install)")
    ring = request.param == "compiled"

    async def start(app: Any, **options: Any) -> Any:
        server = await start_server(app, compiled=compiled, io_uring=ring, **options)
        assert fastws.COMPILED is compiled
        return server

    return start
