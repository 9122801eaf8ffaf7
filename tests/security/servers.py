"""Both ways of serving a hub (clarion's own server, uvicorn for the portable ASGI path) and a
raw HTTP/1.1 client that sends exactly the head it is given (Host included)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from clarion import Settings

from ..conftest import (
    TEST_SERVER,
    RunningHub,
    start_clarion_hub,
    start_portable_hub,
    stop_hub,
    timeout,
)

# On the asgi path (CLARION_TEST_SERVER=asgi) only uvicorn: the clarion variants ran on the other.
SERVERS = ["clarion", "uvicorn"] if TEST_SERVER == "clarion" else ["uvicorn"]
# The server of a test that is not about one in particular: the suite's server path.
SUITE = SERVERS[0]


@asynccontextmanager
async def serve(server: str, settings: Settings) -> AsyncIterator[RunningHub]:
    """A hub on a free loopback port, served by ``server``."""
    if server == "clarion":
        running = await start_clarion_hub(settings)
        try:
            yield running
        finally:
            await stop_hub(running)
        return
    running = await start_portable_hub(settings, mount=False)
    try:
        yield running
    finally:
        await stop_hub(running)


class Head:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers


def websocket_headers(subprotocol: str) -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": subprotocol,
    }


@asynccontextmanager
async def opened(
    port: int, method: str, target: str, headers: dict[str, str]
) -> AsyncIterator[tuple[Head, asyncio.StreamReader, asyncio.StreamWriter]]:
    """Send one request head; yield the response head while the connection stays open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        all_headers = {"Host": f"127.0.0.1:{port}", **headers}
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in all_headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(10))
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        parsed: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        yield Head(int(status_line.split()[1]), parsed), reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def head(port: int, method: str, target: str, headers: dict[str, str]) -> Head:
    async with opened(port, method, target, headers) as (response, _, _):
        return response


# How each transport is opened by a browser: (method, target, extra headers).
TRANSPORTS: dict[str, Callable[[], tuple[str, str, dict[str, str]]]] = {
    "ws": lambda: ("GET", "/ws", websocket_headers("clarion.v1")),
    "stomp": lambda: ("GET", "/stomp", websocket_headers("v12.stomp")),
    "sse": lambda: ("GET", "/sse?channel=news", {}),
    "poll": lambda: ("GET", "/poll?channel=news&timeout=0", {}),
    "preflight-sse": lambda: (
        "OPTIONS",
        "/sse?channel=news",
        {"Access-Control-Request-Method": "GET"},
    ),
    "preflight-poll": lambda: (
        "OPTIONS",
        "/poll?channel=news",
        {"Access-Control-Request-Method": "GET"},
    ),
}


def accepted(transport: str, response: Head, cross_origin: bool = True) -> bool:
    """Whether the hub let a browser on that origin in, and told it so consistently."""
    if transport in ("ws", "stomp"):
        assert response.status in (101, 403), response.status
        return response.status == 101
    allow = response.headers.get("access-control-allow-origin")
    credentials = response.headers.get("access-control-allow-credentials")
    ok = response.status in (200, 204)
    if ok:
        if cross_origin:
            assert allow is not None and credentials == "true", response.headers
    else:
        assert response.status == 403, response.status
        # A refused origin is never reflected, with or without credentials.
        assert allow is None and credentials is None, response.headers
    return ok


async def try_origin(
    running: RunningHub, transport: str, origin: str | None, **extra: str
) -> tuple[bool, Any]:
    method, target, headers = TRANSPORTS[transport]()
    if origin is not None:
        headers["Origin"] = origin
    headers.update(extra)
    response = await head(running.port, method, target, headers)
    if response.status in (200, 204) and origin is not None:
        assert response.headers["access-control-allow-origin"] == origin
    return accepted(transport, response, origin is not None), response
