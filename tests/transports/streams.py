"""Clients for /sse and /poll over real HTTP, and a check that nothing outlives its client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from ..conftest import RunningHub, timeout


class SseClient:
    """One open stream, read event by event with httpx-sse (an independent parser).

    A read that times out closes the parser: use a timeout only as the last read of a stream.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._events = EventSource(response).aiter_sse()
        self.last_id = ""
        self.retry: int | None = None

    async def opening(self) -> ServerSentEvent:
        """The block every stream starts with: ``retry:`` and the starting ``id:``."""
        block = await asyncio.wait_for(anext(self._events), timeout(5))
        assert block.data == "" and block.retry is not None and block.id, block
        self.retry, self.last_id = block.retry, block.id
        return block

    async def next(self, wait: float = 5) -> ServerSentEvent:
        """The next event, skipping blocks that only set ``retry:``/``id:``."""
        while True:
            event = await asyncio.wait_for(anext(self._events), timeout(wait))
            if event.retry is not None:
                self.retry = event.retry
            self.last_id = event.id
            if event.event == "message" and event.data == "":
                continue
            return event

    async def messages(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        """``count`` publication events as ``(id, publication)``."""
        out = []
        for _ in range(count):
            event = await self.next()
            assert event.event == "message", event
            out.append((event.id, event.json()))
        return out

    async def rest(self, wait: float = 5) -> list[ServerSentEvent]:
        """Every event until the hub ends the stream."""
        out = []
        while True:
            try:
                out.append(await self.next(wait))
            except StopAsyncIteration:
                return out


@asynccontextmanager
async def sse(
    hub: RunningHub,
    *channels: str,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> AsyncIterator[SseClient]:
    async with (
        hub.http() as client,
        client.stream(
            "GET", "/sse", params={"channel": list(channels), **params}, headers=headers or {}
        ) as response,
    ):
        assert response.status_code == 200, (await response.aread()).decode()
        yield SseClient(response)


async def poll(
    client: httpx.AsyncClient, *channels: str, expect: int = 200, **params: Any
) -> dict[str, Any]:
    response = await client.get("/poll", params={"channel": list(channels), **params})
    assert response.status_code == expect, response.text
    body: dict[str, Any] = response.json()
    return body


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """One ``GET`` on its own connection, read to its end: no client-side pool in the way."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def error_code(response: httpx.Response) -> str:
    code: str = json.loads(response.content)["error"]["code"]
    return code


class Baseline:
    """Sessions, node channels and asyncio tasks before a test opened its clients."""

    def __init__(self, hub: RunningHub) -> None:
        self.hub = hub
        self.tasks = len(asyncio.all_tasks())

    async def restored(self, wait: float = 5) -> None:
        core = self.hub.hub
        deadline = time.monotonic() + timeout(wait)
        while True:
            state = (len(core.sessions), dict(core.local), len(asyncio.all_tasks()))
            if state[0] == 0 and not state[1] and state[2] <= self.tasks:
                return
            if time.monotonic() > deadline:
                names = sorted(t.get_name() for t in asyncio.all_tasks())
                raise AssertionError(f"left behind: {state}, baseline {self.tasks}, {names}")
            await asyncio.sleep(0.01)
