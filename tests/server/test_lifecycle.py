"""Lifespan, graceful shutdown, and ``serve()`` under signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from clarion.server import LifespanFailed, Server

from ..conftest import free_port
from .helpers import TIMEOUT, connect, get, read_chunk, read_eof, read_head, read_response, respond
from .test_websocket import closed, open_ws


class LifespanApp:
    """Records lifespan events; puts ``{"db": "ready"}`` in the state on startup."""

    def __init__(self, fail_startup: bool = False) -> None:
        self.events: list[str] = []
        self.fail_startup = fail_startup
        self.request_states: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if self.fail_startup:
                        await send({"type": "lifespan.startup.failed", "message": "no db"})
                        return
                    scope["state"]["db"] = "ready"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.request_states.append(dict(scope["state"]))
        scope["state"]["scratch"] = True  # a request's copy: must not leak to the next one
        await respond(send, 200, b"ok")


async def test_lifespan_startup_and_shutdown_and_state(start_server: Any) -> None:
    app = LifespanApp()
    server = await start_server(app)
    assert app.events == ["lifespan.startup"]
    await connect_and_get(server.port)
    await connect_and_get(server.port)
    assert app.request_states[1] == {"db": "ready"}
    await server.shutdown(timeout=1)
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


async def connect_and_get(port: int) -> None:
    reader, writer = await connect(port)
    writer.write(get())
    assert (await read_response(reader)).status == 200
    writer.close()


async def test_failed_startup_is_raised(start_server: Any) -> None:
    with pytest.raises(LifespanFailed, match="no db"):
        await start_server(LifespanApp(fail_startup=True))


async def test_app_without_lifespan_is_served(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "no lifespan support"
        await respond(send, 200, b"ok")

    server = await start_server(app)
    await connect_and_get(server.port)


async def test_shutdown_closes_everything_and_frees_the_port() -> None:
    stream_ended = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass
            return
        if scope["path"] == "/stream":  # an endless stream, like SSE
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"tick", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            stream_ended.set()
            return
        await respond(send, 200, b"ok")

    server = Server(app, host="127.0.0.1", port=0)
    await server.start()
    port = server.port
    idle_reader, idle_writer = await connect(port)
    idle_writer.write(get())
    await read_response(idle_reader)  # now an idle keep-alive connection
    stream_reader, stream_writer = await connect(port)
    stream_writer.write(get("/stream"))
    await read_head(stream_reader)
    assert await read_chunk(stream_reader) == b"tick"
    async with open_ws(port) as ws:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(server.shutdown(timeout=0.3), TIMEOUT)
        assert loop.time() - started < 2
        assert await read_eof(idle_reader) == b""
        assert (await read_eof(stream_reader)).endswith(b"") and stream_ended.is_set()
        assert (await closed(ws))[0] == 1012
    assert server.registry.connections == set()
    assert server.registry.tasks == set()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    again = Server(app, host="127.0.0.1", port=port)  # the port is free to bind again
    await again.start()
    await again.shutdown(timeout=0.1)
    idle_writer.close()
    stream_writer.close()


async def test_shutdown_lets_an_in_flight_request_finish(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        await asyncio.sleep(0.2)
        await respond(send, 200, b"finished")

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(get())
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(server.shutdown(timeout=2))
    response = await read_response(reader)
    assert response.body == b"finished"
    assert response.headers[b"connection"] == b"close"
    await asyncio.wait_for(stopping, TIMEOUT)


SERVE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from clarion.server import serve

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    loop = type(asyncio.get_running_loop()).__module__
                    print("startup", loop, flush=True)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    print("shutdown", flush=True)
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    serve(app, "127.0.0.1", int(sys.argv[1]), shutdown_timeout=1.0)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_under_uvloop_and_stops_on_signals(signum: int) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["startup", "uvloop"]
        wait_for_listener(port)  # startup runs before the socket listens
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert "shutdown" in out, err
    assert proc.returncode == 0, err


def wait_for_listener(port: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
                return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


async def test_failing_to_listen_starts_nothing(start_server: Any) -> None:
    # The server binds before the lifespan: a taken port fails before the app starts anything.
    first = await start_server(LifespanApp())
    app = LifespanApp()
    taken = Server(app, host="127.0.0.1", port=first.port)
    with pytest.raises(OSError):
        await taken.start()
    assert app.events == []
    await asyncio.wait_for(taken.shutdown(timeout=0), TIMEOUT)  # harmless afterwards
    assert app.events == []
