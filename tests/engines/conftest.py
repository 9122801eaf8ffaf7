"""Engines under test: each contract test runs once per engine, against real parts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from clarion.engines.memory import MemoryEngine
from clarion.engines.redis import RedisEngine
from clarion.settings import Settings

from ..redis_fixture import redis_server
from .helpers import RecordingSink, Subject

__all__ = ["engine", "redis_server"]


@pytest.fixture(params=["memory", "redis"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    sink = RecordingSink()
    server = None
    if request.param == "memory":
        eng: Any = MemoryEngine()
    else:
        server = request.getfixturevalue("redis_server")
        eng = RedisEngine(server.url + "?check_interval=0.5", Settings())
    await eng.start(sink)
    try:
        yield Subject(request.param, eng, sink, server)
    finally:
        await eng.close()
