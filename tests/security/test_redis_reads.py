"""What a client's reads cost Redis, counted by Redis itself (``INFO commandstats``).

A client's presence read of a channel of 30,000 made Redis list and look up every entry, about
30 ms that blocked every node, to send the client a thousand; and a poll naming 128 channels
with nothing new ran a history script on each, some 900 commands. A presence read now asks for
one entry more than the reply lists, and a poll looks at its channels' positions first, in one
pipeline, and reads only those that moved — never missing a publication or a reset.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from clarion.engines.base import PresenceEntry

from ..conftest import RunningHub
from ..redis_fixture import RedisServer, redis_server  # noqa: F401  (a fixture)
from ..transports.streams import poll

KEY = "backend-key"
LISTED = 10  # limits.max_presence_clients
PRESENT = 3000


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Any]:  # noqa: F811
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def calls(raw: Any) -> dict[str, int]:
    """Commands run so far, by name (those run by scripts included)."""
    stats = await raw.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


def spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


async def started(
    hub_factory: Callable[..., Any],
    server: RedisServer,
    **kw: Any,
) -> RunningHub:
    running: RunningHub = await hub_factory(
        api_key=KEY,
        engine=server.url,
        namespaces={"room": {"anonymous": True, "presence_read": "anyone"}},
        **kw,
    )
    return running


async def test_a_clients_presence_read_costs_redis_its_reply_not_the_channel(
    hub_factory: Callable[..., Any],
    redis_server: RedisServer,  # noqa: F811
    raw: Any,
) -> None:
    hub = await started(hub_factory, redis_server, limits={"max_presence_clients": LISTED})
    channel = "room:big"
    for n in range(PRESENT):
        await hub.hub.engine.presence_add(channel, PresenceEntry(f"c{n}", f"u{n % 700}"))

    async def read(ask: Any) -> tuple[dict[str, Any], dict[str, int]]:
        before = await calls(raw)
        body = await ask()
        return body, spent(before, await calls(raw))

    async with hub.ws() as ws:
        reply, cost = await read(lambda: ws.call("presence", channel=channel))
        body = reply["ok"]
        assert len(body["clients"]) == LISTED and body["truncated"] is True
        # One page of the lease index and one lookup of LISTED + 1 entries, where the whole
        # channel took six HMGETs of 500 and a range over all 3,000.
        assert cost.get("hmget") == 1 and cost.get("zrangebyscore") == 2, cost

        stats, cost = await read(lambda: ws.call("presence_stats", channel=channel))
        assert stats["ok"] == {"clients": PRESENT, "users": 700}
        assert "hmget" not in cost and "zrangebyscore" not in cost, cost

    async with hub.http() as http:
        reply, cost = await read(lambda: http.get("/client/presence", params={"channel": channel}))
        assert len(reply.json()["clients"]) == LISTED and reply.json()["truncated"] is True
        assert cost.get("hmget") == 1, cost
        # The server API lists everyone, as it says it does.
        everyone = await http.get(
            "/api/presence", params={"channel": channel}, headers={"Authorization": f"apikey {KEY}"}
        )
        assert len(everyone.json()["clients"]) == PRESENT
        assert "truncated" not in everyone.json()

    # A channel with no more than the limit is listed whole, not said to be truncated.
    small = "room:small"
    for n in range(LISTED):
        await hub.hub.engine.presence_add(small, PresenceEntry(f"s{n}", None))
    async with hub.ws() as ws:
        body = (await ws.call("presence", channel=small))["ok"]
    assert len(body["clients"]) == LISTED and "truncated" not in body
    assert body["anonymous"] == LISTED


CHANNELS = [f"room:{n}" for n in range(64)]


async def test_a_wide_poll_with_nothing_new_runs_no_history_script(
    hub_factory: Callable[..., Any],
    redis_server: RedisServer,  # noqa: F811
    raw: Any,
) -> None:
    hub = await started(hub_factory, redis_server)
    for channel in CHANNELS[:-1]:  # the last is never written: its reads gave it a position
        await hub.publish(channel, {"at": channel})
    async with hub.http() as http:
        cursor = (await poll(http, *CHANNELS, timeout=0))["cursor"]

        before = await calls(raw)
        body = await poll(http, *CHANNELS, cursor=cursor, timeout=0)
        cost = spent(before, await calls(raw))
        assert body["publications"] == [] and body["cursor"] == cursor
        # One look at each channel's position; no history script (one each, before).
        assert "evalsha" not in cost and cost.get("hmget") == len(CHANNELS), cost

        # What moved is read, and only that.
        await hub.publish(CHANNELS[3], {"n": 1})
        await hub.publish(CHANNELS[-1], {"n": 2})
        before = await calls(raw)
        body = await poll(http, *CHANNELS, cursor=cursor, timeout=0)
        cost = spent(before, await calls(raw))
        got = [(p["channel"], p["data"]["n"]) for p in body["publications"]]
        assert got == [(CHANNELS[3], 1), (CHANNELS[-1], 2)]
        assert cost["evalsha"] <= 4, cost
        cursor = body["cursor"]

        # A channel whose meta is gone (lost, or lapsed) or whose epoch changed is read in
        # full, and its reader reset: never taken for one with nothing new.
        await raw.delete(hub.hub.engine.keys.meta(CHANNELS[5]))
        await raw.hset(hub.hub.engine.keys.meta(CHANNELS[6]), "e", "another")
        resets = set()
        for _ in range(3):  # one reset a reply
            body = await poll(http, *CHANNELS, cursor=cursor, timeout=0)
            if "reset" in body:
                resets.add(body["reset"]["channel"])
            cursor = body["cursor"]
        assert resets == {CHANNELS[5], CHANNELS[6]}
        assert body["publications"] == [] and "reset" not in body
