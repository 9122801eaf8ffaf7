"""Hubs on each engine: the memory engine, and two Redis nodes sharing one ``redis-server``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ..conftest import RunningHub
from ..redis_fixture import RedisServer, redis_server

__all__ = ["redis_server"]


@pytest.fixture(params=["memory", "redis"])
async def nodes(
    request: pytest.FixtureRequest, hub_factory: Callable[..., Any]
) -> AsyncIterator[Callable[..., Any]]:
    """A factory of hubs sharing one engine: on memory the same hub every time; on Redis a new
    node each call."""
    made: dict[str, RunningHub] = {}

    async def factory(**settings: Any) -> RunningHub:
        if request.param == "memory":
            if "hub" not in made:
                made["hub"] = await hub_factory(**settings)
            return made["hub"]
        server: RedisServer = request.getfixturevalue("redis_server")
        running: RunningHub = await hub_factory(engine=server.url, **settings)
        return running

    yield factory
