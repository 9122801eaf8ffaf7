"""``wait_replicas``: a publication is answered once that many replicas acknowledged its write.

Against real redis-server processes: a primary alone (no replica ever acknowledges: every
publication fails after ``wait_timeout``, nothing hangs, and reads go on), and a primary with a
replica started by the test (publications succeed; with the replica stopped they fail, and the
retry with the same idempotency key is answered once the replica has the write).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aioredis

from clarion.engines.redis import RedisEngine
from clarion.engines.redis.connect import parse_url
from clarion.errors import ConfigError, EngineUnavailable
from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import NamespaceOptions, Settings

from ..conftest import free_port
from ..conftest import timeout as scaled
from ..redis_cluster import Servers, command
from ..redis_fixture import RedisServer
from .helpers import RecordingSink, eventually

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="redis-server and redis-cli are needed",
    ),
]

OPTS = NamespaceOptions(idempotency_window=60)


def test_wait_parameters() -> None:
    target = parse_url("redis://h:6379/0?wait_replicas=2&wait_timeout=0.25")
    assert (target.wait_replicas, target.wait_timeout) == (2, 0.25)
    assert "wait" not in target.url  # clarion's own: not handed to redis-py
    plain = parse_url("redis://h:6379/0")
    assert plain.wait_replicas == 0
    for bad in ("wait_replicas=-1", "wait_replicas=x", "wait_replicas=1&wait_timeout=0"):
        with pytest.raises(ConfigError):
            parse_url(f"redis://h:6379/0?{bad}")
    # WAIT answers after up to wait_timeout: a read timeout shorter than that would drop the
    # connection of every publication a replica is slow to acknowledge.
    with pytest.raises(ConfigError, match="shorter than socket_timeout"):
        parse_url("redis://h:6379/0?wait_replicas=1&wait_timeout=5")
    with pytest.raises(ConfigError, match="shorter than socket_timeout"):
        parse_url("redis://h:6379/0?wait_replicas=1&wait_timeout=2&socket_timeout=1")
    assert parse_url("redis+cluster://h:7000?wait_replicas=1").wait_replicas == 1


async def start(url: str) -> RedisEngine:
    engine = RedisEngine(url, Settings())
    await engine.start(RecordingSink())
    return engine


async def test_without_a_replica_publications_fail_after_wait_timeout(
    redis_server: RedisServer,
) -> None:
    engine = await start(f"{redis_server.url}?wait_replicas=1&wait_timeout=0.3")
    try:
        began = time.monotonic()
        with pytest.raises(EngineUnavailable, match="0 of the 1 replicas"):
            await engine.publish("alone", 1, OPTS)
        assert 0.25 < time.monotonic() - began < scaled(3)
        # A burst (one pipeline, one WAIT) fails as a whole, each caller on its own; a read
        # batched with it is answered.
        began = time.monotonic()
        results = await asyncio.gather(
            *(engine.publish(f"burst-{i % 3}", i, OPTS) for i in range(30)),
            engine.history("burst-0", OPTS),
            return_exceptions=True,
        )
        assert all(isinstance(r, EngineUnavailable) for r in results[:-1]), results
        assert not isinstance(results[-1], BaseException)
        assert time.monotonic() - began < scaled(3)
        # The writes ran on the primary: a 503 means "may have been applied", as ever. They
        # are not read back before a confirmed publication announces them.
        raw = aioredis.Redis(port=redis_server.port)
        try:
            assert await raw.xlen(engine.keys.stream("alone")) == 1
        finally:
            await raw.aclose()
        history = await engine.history("alone", OPTS)
        assert (history.position.offset, history.publications) == (0, [])
    finally:
        await engine.close()


@pytest.fixture
def replicated(redis_server: RedisServer) -> Iterator[tuple[RedisServer, Servers, int]]:
    servers = Servers()
    port = free_port()
    # The replica's first sync starts at once, not after Redis' default 5 s wait for others.
    command(redis_server.port, "CONFIG", "SET", "repl-diskless-sync-delay", "0")
    try:
        # fmt: off
        servers.start(
            port, "--replicaof", "127.0.0.1", str(redis_server.port),
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        )
        # fmt: on
        servers.wait_answering([port])
        yield redis_server, servers, port
    finally:
        servers.cleanup()


async def wait_synced(primary: RedisServer) -> None:
    client = aioredis.Redis(port=primary.port)
    try:
        deadline = time.monotonic() + scaled(20)
        while (await client.info("replication")).get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica did not sync"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_with_a_replica_publications_are_answered_once_it_has_them(
    replicated: tuple[RedisServer, Servers, int],
) -> None:
    primary, servers, replica_port = replicated
    await wait_synced(primary)
    # Long enough for a replica on a loaded machine; a stopped one never answers anyway.
    engine = await start(f"{primary.url}?wait_replicas=1&wait_timeout={min(scaled(2), 4)}")
    replica = aioredis.Redis(port=replica_port)
    stream = engine.keys.stream("ch")
    try:
        pubs = await asyncio.gather(*(engine.publish("ch", i, OPTS) for i in range(20)))
        assert sorted(p.offset for p in pubs) == list(range(1, 21))
        # Answered only once the replica had them: all are there already.
        assert await replica.xlen(stream) == 20

        # The replica stops: the write runs on the primary, unacknowledged, and fails.
        pid = servers.processes[replica_port].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(EngineUnavailable, match="replicas"):
                await engine.publish("ch", "late", OPTS, idempotency_key="k")
        finally:
            os.kill(pid, signal.SIGCONT)
        # The retry with the same key finds the first write, and is answered once the
        # replica has it too.
        again = await engine.publish("ch", "late", OPTS, idempotency_key="k")
        assert again.repeated and again.offset == 21
        assert await replica.xlen(stream) == 21
    finally:
        await replica.aclose()
        await engine.close()


def seen(sink: RecordingSink) -> list[int]:
    """The offsets of ``ch`` the sink was handed, each once, in the order first handed. A
    position check's read-back may hand on one that pub/sub brings too, while the message is on
    its way; the hub drops the second (as it drops any publication it has)."""
    return list(dict.fromkeys(sink.offsets("ch")))


async def test_a_publication_is_announced_only_once_the_replica_has_it(
    replicated: tuple[RedisServer, Servers, int],
) -> None:
    primary, servers, replica_port = replicated
    await wait_synced(primary)
    url = f"{primary.url}?wait_replicas=1&wait_timeout={min(scaled(2), 4)}"
    publisher = await start(url)
    sink = RecordingSink()
    # Position checks run while the write waits for the replica: they do not show it either.
    subscriber = RedisEngine(f"{url}&check_interval=0.1", Settings())
    await subscriber.start(sink)
    try:
        await subscriber.subscribe("ch")
        await subscriber.subscribe("barrier")
        first = await publisher.publish("ch", "first", OPTS)
        await eventually(lambda: seen(sink) == [first.offset])

        pid = servers.processes[replica_port].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(EngineUnavailable, match="replicas"):
                await publisher.publish("ch", "unconfirmed", OPTS)
            # Pub/sub keeps one connection's messages in order: once this signal is here, an
            # announcement the failed publication made would be too.
            signal_pub = Publication("barrier", 0, "", "after", 0)
            await publisher.publish_ephemeral(signal_pub)
            await eventually(lambda: len(sink.signals) == 1)
            await asyncio.sleep(0.3)
            assert seen(sink) == [first.offset]
        finally:
            os.kill(pid, signal.SIGCONT)

        # Once a later publication is confirmed, the replica has the earlier one too: both are
        # announced, in offset order.
        last = await publisher.publish("ch", "last", OPTS)
        await eventually(lambda: len(seen(sink)) == 3)
        assert seen(sink) == [1, 2, 3]
        data = {p.offset: p.data for p in sink.publications}
        assert [data[offset] for offset in (1, 2, 3)] == ["first", "unconfirmed", "last"]
        assert last.offset == 3
    finally:
        await subscriber.close()
        await publisher.close()


async def reaches(read: Callable[[], Awaitable[object]], value: object) -> None:
    deadline = time.monotonic() + scaled(10)
    while (got := await read()) != value:
        assert time.monotonic() < deadline, f"{got!r}, not {value!r}"
        await asyncio.sleep(0.02)


async def test_reads_show_only_what_was_announced(
    replicated: tuple[RedisServer, Servers, int],
) -> None:
    """A write still waiting for its replicas (or one that never got them) may be lost in a
    failover and its offset given to another publication: a reader shown it would skip that
    one. Resumes, position reads and history pages stop at the announced top."""
    primary, servers, replica_port = replicated
    await wait_synced(primary)
    url = f"{primary.url}?wait_replicas=1&wait_timeout={min(scaled(2), 4)}"
    publisher = await start(url)
    reader = await start(url)
    raw = aioredis.Redis(port=primary.port)
    opts = NamespaceOptions()

    async def offsets(**kwargs: object) -> tuple[int, list[int]]:
        history = await reader.history("ch", opts, **kwargs)  # type: ignore[arg-type]
        return history.position.offset, [p.offset for p in history.publications]

    try:
        first = await publisher.publish("ch", "first", opts)
        epoch = first.epoch
        await reaches(lambda: raw.hget(publisher.keys.meta("ch"), "a"), b"1")

        pid = servers.processes[replica_port].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            pending = asyncio.ensure_future(publisher.publish("ch", "unconfirmed", opts))
            await reaches(lambda: raw.xlen(publisher.keys.stream("ch")), 2)
            for _ in range(2):  # while its WAIT runs, and once it has failed
                assert await offsets(limit=0) == (1, [])
                assert await offsets(since=StreamPosition(epoch, 0)) == (1, [1])
                assert await offsets(since=StreamPosition(epoch, 1)) == (1, [])
                assert await offsets(limit=10, reverse=True) == (1, [1])
                assert await offsets(limit=10) == (1, [1])
                # A cursor above the announced top but within what the primary holds (after a
                # failover that kept the writes and lost the meta's last update): no reset, and
                # nothing shown twice.
                assert await offsets(since=StreamPosition(epoch, 2)) == (2, [])
                if not pending.done():
                    with pytest.raises(EngineUnavailable, match="replicas"):
                        await pending
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await reader.history("ch", opts, limit=0)).position.epoch == epoch

        # A later confirmed publication announces the earlier one with it: both are read.
        await publisher.publish("ch", "last", opts)
        await reaches(lambda: raw.hget(publisher.keys.meta("ch"), "a"), b"3")
        assert await offsets(since=StreamPosition(epoch, 1)) == (3, [2, 3])
        assert await offsets(limit=0) == (3, [])
    finally:
        await raw.aclose()
        await reader.close()
        await publisher.close()


async def test_publications_of_several_nodes_are_announced_in_offset_order(
    replicated: tuple[RedisServer, Servers, int],
) -> None:
    primary, _, _ = replicated
    await wait_synced(primary)
    url = f"{primary.url}?wait_replicas=1&wait_timeout={min(scaled(2), 4)}"
    publishers = [await start(url) for _ in range(3)]
    sink = RecordingSink()
    # No position check in the test's time: what arrives, arrives through pub/sub, in the order
    # the announcements made.
    subscriber = RedisEngine(f"{url}&check_interval=60", Settings())
    await subscriber.start(sink)
    history_off = NamespaceOptions(history_size=0)
    try:
        await subscriber.subscribe("ch")
        await subscriber.subscribe("off")
        # Bursts from three nodes at once: their WAITs end, and their announcements leave,
        # in any order; the channel's announcements still reach the subscriber in order.
        for _ in range(5):
            await asyncio.gather(
                *(engine.publish("ch", i, OPTS) for i in range(20) for engine in publishers),
                # Without history (or one shorter than a burst) a node's announcement
                # carries its own publications' bodies.
                *(publishers[0].publish("off", i, history_off) for i in range(20)),
            )
        await eventually(lambda: len(sink.offsets("ch")) == 300, timeout=10)
        await eventually(lambda: len(sink.offsets("off")) == 100, timeout=10)
        assert sink.offsets("ch") == list(range(1, 301))
        assert sink.offsets("off") == list(range(1, 101))
        assert [p.data for p in sink.publications if p.channel == "off"] == list(range(20)) * 5
        assert subscriber.recovered == 0  # none had to be read back from the stream
    finally:
        await subscriber.close()
        for engine in publishers:
            await engine.close()


async def test_a_node_confirmed_first_announces_the_earlier_offsets_of_another(
    replicated: tuple[RedisServer, Servers, int],
) -> None:
    """Node a writes offset 1 of a new channel, node b offset 2; b's WAIT ends first and b
    announces before a does. b's announcement starts at the epoch's first offset, not at its
    own: a's, which found the channel announced past it, announces nothing, and offset 1 was
    never announced (its subscribers met the channel at 2: seen under load, 20 or 40 of the
    first publications of a burst missing)."""
    primary, _, _ = replicated
    await wait_synced(primary)
    url = f"{primary.url}?wait_replicas=1&wait_timeout={min(scaled(2), 4)}"
    a, b = await start(url), await start(url)
    sink = RecordingSink()
    subscriber = RedisEngine(f"{url}&check_interval=60", Settings())
    await subscriber.start(sink)
    held: list[Callable[[], None]] = []
    announce = a._announce_up_to

    def later(channel: str, pubsub_channel: str, item: list[object]) -> None:
        held.append(lambda: announce(channel, pubsub_channel, item))

    a._announce_up_to = later  # type: ignore[method-assign]
    try:
        await subscriber.subscribe("ch")
        assert (await a.publish("ch", "from a", OPTS)).offset == 1
        assert len(held) == 1  # confirmed, its announcement held back
        assert (await b.publish("ch", "from b", OPTS)).offset == 2
        await eventually(lambda: len(sink.offsets("ch")) == 2, timeout=10)
        held.pop()()
        await asyncio.sleep(0.2)  # anything a's call would add, duplicates or not
        assert sink.offsets("ch") == [1, 2]
        assert [p.data for p in sink.publications] == ["from a", "from b"]
    finally:
        await subscriber.close()
        await a.close()
        await b.close()


@pytest.mark.parametrize("durable", [False, True])
async def test_standing_says_what_the_history_script_would(
    redis_server: RedisServer, durable: bool
) -> None:
    """A poll's look at positions (one HMGET a channel) never says "nothing new" where the
    read it saves would have found a publication or a reset: with ``wait_replicas`` the
    writes above the announced top ``a`` are not shown, and a cursor inside them stands."""
    query = "?wait_replicas=1&wait_timeout=0.3" if durable else ""
    engine = await start(redis_server.url + query)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        meta = engine.keys.meta("m")
        # (stored top, announced top or None, cursor offset)
        cases = [(s, a, c) for s in (0, 3, 5) for a in (None, 0, 3, 5) for c in (0, 2, 3, 4, 5, 6)]
        cases = [(s, a, c) for s, a, c in cases if a is None or a <= s]
        for top, announced, offset in cases:
            await raw.delete(meta)
            await raw.hset(meta, mapping={"e": "E", "s": top})
            if announced is not None:
                await raw.hset(meta, "a", announced)
            since = StreamPosition("E", offset)
            said = "m" in await engine.standing({"m": since})
            history = await engine.history("m", OPTS, since=since, limit=1)
            nothing = not history.publications and history.position == since
            assert said == nothing, (top, announced, offset)
            if not durable:
                assert said == (top == offset)
        await raw.delete(meta)
        await raw.hset(meta, mapping={"e": "E", "s": "x"})  # unusual: the read decides
        assert await engine.standing({"m": StreamPosition("E", 0)}) == set()
    finally:
        await raw.aclose()
        await engine.close()
