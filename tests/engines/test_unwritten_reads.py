"""Reading channels nobody publishes to: what it leaves behind, on both engines, over sockets.

Anyone may read any channel name, and names are free: a read of a channel never written must
leave nothing that lasts (Redis: a meta key held for ``history_meta_ttl``) or that grows with
the names read (memory: a channel state per name). Its readers are still told the truth when a
publication comes after their epoch was forgotten: a reset, never a silent loss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from clarion.core.auth import mint_token
from clarion.engines import memory
from clarion.engines.memory import UNWRITTEN_TTL
from clarion.engines.redis import engine as redis_engine
from clarion.protocol.cursor import Cursor

from ..conftest import RunningHub, timeout, until
from ..redis_fixture import RedisServer
from ..stomp.client import stomp
from ..transports.streams import poll, sse

pytestmark = pytest.mark.timeout(60)

DAY_MS = 86_400_000
SECRET = "unwritten-reads-secret-0123456789abcdef"
API_KEY = "unwritten-reads-key"
# Anonymous reads of "pub:" (as the attacker's), tokens and the API key for the other paths.
SECURED = {
    "token_secret": SECRET,
    "api_key": API_KEY,
    "namespaces": {"pub": {"anonymous": True}},
}


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=redis_server.port)
    yield client
    await client.aclose()


async def metas(raw: aioredis.Redis) -> dict[str, int]:
    """Every channel meta in Redis, with its TTL in ms."""
    names = [key async for key in raw.scan_iter(match="*:meta", count=1000)]
    pipe = raw.pipeline(transaction=False)
    for name in names:
        pipe.pttl(name)
    return {name.decode(): ttl for name, ttl in zip(names, await pipe.execute(), strict=True)}


def epoch_of(cursor: str, channel: str) -> str:
    position = Cursor.decode(cursor).get(channel)
    assert position is not None
    return position.epoch


async def read_by_poll(hub: RunningHub, names: list[str]) -> None:
    async with hub.http() as client:
        for i in range(0, len(names), 128):
            await poll(client, *names[i : i + 128], timeout=0)


async def read_by_ws_subscribe(hub: RunningHub, names: list[str]) -> None:
    async with hub.ws() as ws:
        for name in names:
            assert "error" not in await ws.subscribe(name)


async def read_by_ws_history(hub: RunningHub, names: list[str]) -> None:
    async with hub.ws() as ws:
        for name in names:
            assert "error" not in await ws.call("history", channel=name)


async def read_by_sse(hub: RunningHub, names: list[str]) -> None:
    async with sse(hub, *names) as stream:
        await stream.opening()


async def read_by_history_endpoint(
    hub: RunningHub, names: list[str], path: str, authorization: str
) -> None:
    async with hub.http() as client:
        for name in names:
            r = await client.get(
                path, params={"channel": name}, headers={"Authorization": authorization}
            )
            assert r.status_code == 200, r.text


async def read_by_api_history(hub: RunningHub, names: list[str]) -> None:
    await read_by_history_endpoint(hub, names, "/api/history", f"apikey {API_KEY}")


async def read_by_client_history(hub: RunningHub, names: list[str]) -> None:
    token = mint_token(SECRET, "mallory", ["pub:*"])
    await read_by_history_endpoint(hub, names, "/client/history", f"Bearer {token}")


async def read_by_stomp_subscribe(hub: RunningHub, names: list[str]) -> None:
    async with stomp(hub) as client:
        await client.connect(heart_beat="0,0")
        for n, name in enumerate(names):
            destination = "/topic/" + name.replace(":", "\\c")
            await client.send("SUBSCRIBE", id=f"s{n}", destination=destination, receipt=f"r{n}")
            await client.expect("RECEIPT")


READS = {
    "poll": read_by_poll,
    "ws_subscribe": read_by_ws_subscribe,
    "ws_history": read_by_ws_history,
    "sse": read_by_sse,
    "api_history": read_by_api_history,
    "client_history": read_by_client_history,
    "stomp_subscribe": read_by_stomp_subscribe,
}


@pytest.mark.parametrize("path", list(READS))
async def test_redis_reads_of_unwritten_channels_leave_only_short_lived_metas(
    redis_server: RedisServer, raw: aioredis.Redis, hub_factory: Any, path: str
) -> None:
    hub: RunningHub = await hub_factory(engine=f"{redis_server.url}?check_interval=0.2", **SECURED)
    names = [f"pub:x{n}" for n in range(256 if path == "poll" else 20)]
    await READS[path](hub, names)
    held = await metas(raw)
    assert len(held) == len(names)
    # No more than the memory engine keeps an unwritten channel (was: a day).
    assert 0 < max(held.values()) <= UNWRITTEN_TTL * 1000, max(held.values())
    # The first publication gives the meta the channel's full meta TTL, and keeps the epoch.
    before = (await poll(client := hub.http(), names[0], timeout=0))["cursor"]
    await client.aclose()
    published = await hub.publish(names[0], "first")
    assert published["offset"] == 1
    assert epoch_of(before, names[0]) == published["epoch"]
    ttl = await raw.pttl(f"clarion:{{{names[0]}}}:meta")
    assert ttl > DAY_MS - 60_000


@pytest.mark.parametrize("engine", ["memory", "redis"])
async def test_an_unwritten_channels_forgotten_epoch_resets_resumers_and_loses_nothing_live(
    hub_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    engine: str,
) -> None:
    """The epoch of a read-only channel lapses; a publication then starts a new epoch. A live
    subscriber gets an ``epoch`` reset, then the publication; a client resuming from the old
    epoch's cursor gets an ``epoch`` reset; the Redis engine's periodic position checks do not
    bring the meta back meanwhile."""
    monkeypatch.setattr(memory, "UNWRITTEN_TTL", 0.5)
    monkeypatch.setattr(memory, "SWEEP_TICK", 0.1, raising=False)
    monkeypatch.setattr(memory, "SWEEP_INTERVAL", 0.1)
    monkeypatch.setattr(redis_engine, "UNWRITTEN_TTL", 0.5, raising=False)
    raw = None
    if engine == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        raw = aioredis.Redis(port=server.port)
        hub: RunningHub = await hub_factory(engine=f"{server.url}?check_interval=0.1")
    else:
        hub = await hub_factory()
    channel = "chat:quiet"
    try:
        async with hub.ws() as live, hub.http() as client:
            subscribed = (await live.subscribe(channel))["ok"]
            old = (await poll(client, channel, timeout=0))["cursor"]
            assert subscribed["cursor"] == old and subscribed["offset"] == 0
            await asyncio.sleep(1.5)  # the epoch lapses; several position checks run meanwhile
            if raw is not None:
                assert await metas(raw) == {}
            published = await hub.publish(channel, "late")
            assert published["epoch"] != subscribed["epoch"]
            # The live subscriber is told its epoch ended, then gets the publication.
            reset = (await live.recv())["reset"]
            assert (
                reset["reason"] == "epoch"
                and epoch_of(reset["cursor"], channel) == (published["epoch"])
            )
            push = await live.recv()
            assert push["data"] == "late" and push["cursor"] == published["cursor"]
            reply = await poll(client, channel, cursor=old, timeout=0)
            assert reply["reset"] == {
                "channel": channel,
                "reason": "epoch",
                "cursor": published["cursor"],
            }
        async with hub.ws() as resumer:
            again = (await resumer.subscribe(channel, since=old))["ok"]
            assert again["reset"] == "epoch" and again["recovered"] is False, again
    finally:
        if raw is not None:
            await raw.aclose()


async def test_memory_reads_of_unwritten_channels_are_count_bounded(
    hub_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "MAX_UNWRITTEN", 1000, raising=False)
    hub: RunningHub = await hub_factory()
    eng = hub.hub.engine
    names = [f"pub:{n:0100d}" for n in range(40 * 128)]  # 128 names of 100 characters a poll
    await read_by_poll(hub, names)
    held = len(eng._logs) + len(getattr(eng, "_unwritten", ()))
    assert held <= 1000, held
    # The most recent names keep their epoch: a publication now continues it, no reset.
    async with hub.http() as client:
        cursor = (await poll(client, names[-1], timeout=0))["cursor"]
        published = await hub.publish(names[-1], "x")
        reply = await poll(client, names[-1], cursor=cursor, timeout=0)
    assert "reset" not in reply and [p["offset"] for p in reply["publications"]] == [1]
    assert reply["cursor"] == published["cursor"]


async def test_memory_sweep_of_many_channels_does_not_stall_the_loop(
    hub_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass over 150,000 channels goes a slice at a time, the loop turning between two
    (all at once, it held the loop 69 ms here): counted in channels looked at between two
    turns of the loop, which the machine's load does not change."""
    monkeypatch.setattr(memory, "SWEEP_INTERVAL", 1.0)
    monkeypatch.setattr(memory, "SWEEP_TICK", 0.05, raising=False)
    hub: RunningHub = await hub_factory(
        namespaces={
            "default": {"history_size": 0},
            "brief": {"history_size": 0, "history_meta_ttl": 0.1},
        }
    )
    eng = hub.hub.engine
    options = hub.hub.options("c:0")
    for n in range(150_000):
        await eng.publish(f"c:{n:090d}", 1, options)
    await hub.publish("brief:gone", 1)  # dropped by a pass: proof that passes ran
    looked = 0
    sweep_one = eng._sweep_one

    def counted(channel: str, now: float) -> int:
        nonlocal looked
        looked += 1
        return sweep_one(channel, now)

    eng._sweep_one = counted
    most = 0
    seen = 0
    deadline = time.monotonic() + timeout(10)
    while looked < 150_000 and time.monotonic() < deadline:  # a whole pass, turn by turn
        await asyncio.sleep(0)
        most = max(most, looked - seen)
        seen = looked
    assert looked >= 150_000, looked
    assert most <= memory.SWEEP_SLICE, most
    await until(lambda: "brief:gone" not in eng._logs)


async def test_redis_reads_never_lengthen_an_unwritten_meta_kept_by_an_earlier_version(
    redis_server: RedisServer, raw: aioredis.Redis, hub_factory: Any
) -> None:
    await raw.hset("clarion:{pub:old}:meta", mapping={"e": "0123456789ab", "s": 0})
    await raw.pexpire("clarion:{pub:old}:meta", DAY_MS)
    hub: RunningHub = await hub_factory(engine=redis_server.url)
    async with hub.http() as client:
        reply = await poll(client, "pub:old", timeout=0)
    assert epoch_of(reply["cursor"], "pub:old") == "0123456789ab"
    assert 0 < await raw.pttl("clarion:{pub:old}:meta") <= UNWRITTEN_TTL * 1000
