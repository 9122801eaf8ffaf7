"""Redis at its ``maxmemory``: what a client sends is refused whole, and Redis stays within it.

Redis checks ``maxmemory`` for a script without flags only until its first write, and the
publish script's first write for a new channel frees (the ``DEL`` of a stream left over from a
lost meta): publications to new channel names went on past the limit, 5 MB/s of them from one
user, while every existing channel's were refused. The scripts that store what a client sends
are declared with Redis 7's ``#!lua`` line, so Redis refuses them before they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from ..conftest import RunningHub
from ..redis_fixture import RedisServer, redis_server  # noqa: F401  (a fixture)

KEY = "maxmemory-key"
BODY = "x" * 60_000
HEADROOM = 2 * 1024 * 1024
SLACK = 256 * 1024  # Redis's own bookkeeping between INFO readings


async def used(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


async def test_publications_to_new_channels_stop_at_maxmemory(
    hub_factory: Callable[..., Any],
    redis_server: RedisServer,  # noqa: F811
) -> None:
    hub: RunningHub = await hub_factory(api_key=KEY, engine=redis_server.url)
    client = aioredis.from_url(redis_server.url)
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        limit = await used(client) + HEADROOM
        await client.config_set("maxmemory", limit)
        refused: list[dict[str, Any]] = []
        async with hub.http(headers={"Authorization": f"apikey {KEY}"}) as http:
            # Each to a channel never written: three times the headroom's worth in all.
            for n in range(3 * HEADROOM // len(BODY)):
                r = await http.post("/api/publish", json={"channel": f"chat:{n}", "data": BODY})
                if r.status_code != 200:
                    assert r.status_code == 503, r.text
                    refused.append(r.json()["error"])
        assert refused, "Redis never refused a publication"
        assert await used(client) <= limit + SLACK, (await used(client), limit)
        assert {e["code"] for e in refused} == {"engine_unavailable"}
        # What the client is told: the kind of failure, not Redis's script and line.
        told = {e["message"].split(": ", 1)[1] for e in refused}
        assert told == {"Redis is over its maxmemory"}, told
    finally:
        await client.config_set("maxmemory", 0)
        await client.aclose()
