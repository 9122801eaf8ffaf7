"""A hub on each engine, for what the transports do alike on both: in process, and on Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ..conftest import RunningHub
from ..redis_fixture import RedisServer, redis_server

__all__ = ["redis_server"]


@pytest.fixture(params=["memory", "redis"])
async def engine_hub(request: pytest.FixtureRequest, hub_factory: Callable[..., Any]) -> RunningHub:
    engine = "memory"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        engine = server.url
    running: RunningHub = await hub_factory(engine=engine)
    return running
