"""Helpers for engine tests: a recording sink, and an engine with the ways to break it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from clarion.engines.base import Engine
from clarion.engines.memory import MemoryEngine
from clarion.engines.redis import RedisEngine
from clarion.protocol.publication import Publication

from ..conftest import timeout as scaled
from ..redis_fixture import RedisServer


class RecordingSink:
    """An :class:`EngineSink` that remembers everything it is handed."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.signals: list[Publication] = []  # ephemeral publications
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.controls: list[tuple[str, dict[str, Any]]] = []
        self.restored: list[tuple[str, str]] = []  # presence entries added again

    def on_publication(self, pub: Publication) -> None:
        self.publications.append(pub)

    def on_ephemeral(self, pub: Publication) -> None:
        self.signals.append(pub)

    def on_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        self.events.append((channel, kind, event))

    def on_control(self, command: str, payload: dict[str, Any]) -> None:
        self.controls.append((command, payload))

    def on_presence_restored(self, channel: str, client: str) -> None:
        self.restored.append((channel, client))

    def offsets(self, channel: str) -> list[int]:
        return [p.offset for p in self.publications if p.channel == channel]


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (engines deliver asynchronously), or fail."""
    deadline = time.monotonic() + scaled(timeout)
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Subject:
    """One started engine, its sink, and the engine-specific ways to break it."""

    def __init__(self, kind: str, engine: Engine, sink: RecordingSink, server: Any) -> None:
        self.kind = kind
        self.engine = engine
        self.sink = sink
        self.server: RedisServer | None = server

    async def lose_meta(self, channel: str) -> None:
        """Make the engine forget the channel's epoch and offset (and so its history)."""
        if isinstance(self.engine, MemoryEngine):
            # Past every TTL: history expires, then the meta.
            assert self.engine.sweep(time.monotonic() + 10**7) >= 1
        else:
            assert isinstance(self.engine, RedisEngine) and self.server is not None
            client = aioredis.Redis(port=self.server.port)
            try:
                assert await client.delete(self.engine.keys.meta(channel)) == 1
            finally:
                await client.aclose()
