"""Redis engine behaviour beyond the contract: several nodes, lost messages, outages, limits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from clarion.engines.base import History, PresenceEntry, PresenceStats
from clarion.engines.redis import RedisEngine
from clarion.engines.redis.connect import parse_url
from clarion.engines.redis.keys import Keys
from clarion.engines.redis.pubsub import PubSubLink
from clarion.errors import ConfigError, EngineUnavailable
from clarion.protocol.publication import StreamPosition
from clarion.settings import NamespaceOptions, Settings
from clarion.tasks import stop

from ..conftest import timeout as scaled
from ..conftest import until
from ..redis_fixture import REDIS_SERVER, RedisServer, free_port
from ..support.cancels import losing_one_cancel
from .helpers import RecordingSink, eventually

pytestmark = pytest.mark.timeout(30)

OPTS = NamespaceOptions()
Node = tuple[RedisEngine, RecordingSink]


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """Start engines ("nodes") on the test's Redis; all are closed at the end."""
    started: list[RedisEngine] = []

    async def start(query: str = "check_interval=0.3&presence_ttl=1") -> Node:
        engine = RedisEngine(f"{redis_server.url}?{query}", Settings())
        sink = RecordingSink()
        await engine.start(sink)
        started.append(engine)
        return engine, sink

    yield start
    for engine in started:
        await engine.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=redis_server.port)
    yield client
    await client.aclose()


async def test_publications_cross_nodes(nodes: Callable[..., Any]) -> None:
    a, a_sink = await nodes()
    b, b_sink = await nodes()
    await a.subscribe("c")
    await b.subscribe("c")
    pubs = [await b.publish("c", i, OPTS) for i in range(20)]
    await eventually(lambda: len(a_sink.offsets("c")) == 20 and len(b_sink.offsets("c")) == 20)
    assert a_sink.publications == pubs == b_sink.publications
    # Only subscribed nodes receive: a third node never sees "c".
    c, c_sink = await nodes()
    await c.subscribe("marker")
    await a.publish("c", "x", OPTS)
    await a.publish("marker", "m", OPTS)
    await eventually(lambda: c_sink.offsets("marker") == [1])
    assert c_sink.offsets("c") == []


async def test_a_moments_subscriptions_go_out_together_and_end_as_the_last_call_said(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """A stream of many channels (or a burst of sessions) subscribes its node to them at once:
    one SUBSCRIBE of them all, not one command each. Calls for one channel made in the same
    moment still take effect in call order."""
    a, sink = await nodes("check_interval=30")
    before = await command_calls(raw, "subscribe")
    await asyncio.gather(*(a.subscribe(f"wide{i}") for i in range(100)))
    assert await command_calls(raw, "subscribe") - before == 1
    numsub = dict(await raw.pubsub_numsub(*(a.keys.pubsub(f"wide{i}") for i in range(100))))
    assert set(numsub.values()) == {1}

    # Let go and taken again, let go, taken and let go: each ends as its last call said,
    # and a subscribe let go of in the same moment is still answered.
    await asyncio.gather(
        a.unsubscribe("wide0"),
        a.subscribe("wide0"),
        a.unsubscribe("wide1"),
        a.subscribe("fresh"),
        a.unsubscribe("fresh"),
    )
    names = [a.keys.pubsub(c) for c in ("wide0", "wide1", "fresh")]
    assert [n for _, n in await raw.pubsub_numsub(*names)] == [1, 0, 0]
    for channel in ("wide1", "fresh", "wide0"):
        await a.publish(channel, channel, OPTS)
    await eventually(lambda: sink.offsets("wide0") == [1])
    assert sink.offsets("wide1") == sink.offsets("fresh") == []


async def test_idempotency_is_cluster_wide(nodes: Callable[..., Any]) -> None:
    a, _ = await nodes()
    b, _ = await nodes()
    first = await a.publish("c", "one", OPTS, idempotency_key="order-7")
    again = await b.publish("c", "two", OPTS, idempotency_key="order-7")
    assert again == first


async def test_events_reach_subscribed_nodes_and_control_reaches_all(
    nodes: Callable[..., Any],
) -> None:
    a, a_sink = await nodes()
    b, b_sink = await nodes()
    await b.subscribe("c")
    await a.broadcast_event("c", "leave", {"channel": "c", "client": "x"})
    await a.broadcast_control("disconnect", {"user": "u", "code": 4000})
    await eventually(lambda: bool(b_sink.events and b_sink.controls and a_sink.controls))
    assert b_sink.events == [("c", "leave", {"channel": "c", "client": "x"})]
    assert a_sink.events == []  # a has no subscriber on "c"
    assert a_sink.controls == b_sink.controls == [("disconnect", {"user": "u", "code": 4000})]
    await asyncio.sleep(0.1)
    assert len(a_sink.controls) == 1  # applied once on the sending node, not echoed


async def test_lost_last_publication_is_recovered_by_the_position_check(
    nodes: Callable[..., Any],
) -> None:
    a, sink = await nodes()
    await a.subscribe("c")
    await a.publish("c", 1, OPTS)
    await eventually(lambda: sink.offsets("c") == [1])
    # Stored, but its pub/sub message goes nowhere: as if Redis dropped it.
    lost = await a._store("c", "lost", OPTS, None, None, "nowhere")
    started = time.monotonic()
    await eventually(lambda: sink.offsets("c") == [1, 2], timeout=3)
    assert time.monotonic() - started < 1.5  # within a few check intervals (0.3 s)
    assert sink.publications[-1] == lost
    assert a.recovered == 1


async def test_killed_pubsub_connection_reconnects_and_resyncs(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    a, sink = await nodes()
    b, _ = await nodes()
    await a.subscribe("c")
    await b.publish("c", 1, OPTS)
    await eventually(lambda: sink.offsets("c") == [1])
    # Kill a's pub/sub connection, then publish while it is reconnecting.
    killed = await raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 2  # a's and b's
    for i in range(2, 12):
        await b.publish("c", i, OPTS)
    await eventually(lambda: sink.offsets("c")[-1:] == [11], timeout=5)
    # The engine's catch-up reads after the last position it saw. What pub/sub lost while
    # later publications already arrived over the new link shows the hub a gap, which the
    # hub reads back from history (end to end: tests/multinode, dropped pub/sub messages).
    # The engine's part: the link comes back, and the last publication arrives, so any gap
    # before it is seen.
    got = sink.offsets("c")
    assert got[0] == 1 and got[-1] == 11 and set(got) <= set(range(1, 12))
    assert await a.healthy()
    # The subscription is live again: new publications arrive by pub/sub.
    recovered = a.recovered
    await b.publish("c", 12, OPTS)
    await eventually(lambda: sink.offsets("c")[-1] == 12)
    assert a.recovered == recovered


async def test_subscribe_and_unsubscribe_apply_in_call_order(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    a, _ = await nodes()
    for _ in range(3):
        # Interleaved calls for one channel: the last one wins.
        await asyncio.gather(a.subscribe("c"), a.unsubscribe("c"), a.subscribe("c"))
        channels = await raw.execute_command("PUBSUB", "CHANNELS", a.keys.pubsub("c"))
        assert channels == [a.keys.pubsub("c").encode()]
        await asyncio.gather(a.subscribe("c"), a.unsubscribe("c"))
        assert await raw.execute_command("PUBSUB", "CHANNELS", a.keys.pubsub("c")) == []


async def renewed(raw: aioredis.Redis, zset: str, *members: str) -> None:
    """Wait until every member's expiry in ``zset`` moved past where it stood: its node's
    periodic refresh ran (however late a loaded machine runs it)."""
    first = [await raw.zscore(zset, m) for m in members]

    async def moved() -> bool:
        now = [await raw.zscore(zset, m) for m in members]
        return all(
            f is not None and n is not None and n > f for f, n in zip(first, now, strict=True)
        )

    await until(moved, wait=10, interval=0.05)


async def crash(node: RedisEngine) -> float:
    """Stop ``node`` as a crash would: its refreshes stop and nothing is cleaned up. Its last
    refresh runs first, so its leases outlive it by the whole TTL from the time returned.

    Stopped as the engine stops them, not cancelled and awaited: a refresh whose write ends as
    the cancel comes loses it inside redis-py (see clarion.tasks) and would refresh on."""
    await stop(node._tasks)
    refreshed = time.monotonic()
    await node._refresh()
    if node._presence is not None:
        node._presence.held.clear()
    return refreshed


async def gone_after(refreshed: float, condition: Callable[[], Any]) -> float:
    """Seconds from ``refreshed`` until ``condition`` holds; TTL 1.5 s plus some slack."""
    await until(condition, wait=3.0, interval=0.05)
    return time.monotonic() - refreshed


async def test_presence_of_a_crashed_node_expires(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    a, _ = await nodes("presence_ttl=1.5")
    b, _ = await nodes("presence_ttl=1.5")
    await a.presence_add("c", PresenceEntry("a1", "alice"))
    await b.presence_add("c", PresenceEntry("b1", "bob"))
    await renewed(raw, a.keys.presence_expiry("c"), "a1", "b1")
    assert sorted(p.client for p in await b.presence("c")) == ["a1", "b1"]
    refreshed = await crash(a)

    async def only_b() -> bool:
        return [p.client for p in await b.presence("c")] == ["b1"]

    # The lease ends a TTL after a's last refresh (Redis's clock), not before.
    assert await gone_after(refreshed, only_b) > 1.4


async def test_presence_stats_of_a_crashed_node_expire(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    a, _ = await nodes("presence_ttl=1.5")
    b, _ = await nodes("presence_ttl=1.5")
    await a.presence_add("c", PresenceEntry("a1", "alice"))
    await a.presence_add("c", PresenceEntry("a2", "carol"))
    await b.presence_add("c", PresenceEntry("b1", "alice"))
    await b.presence_add("c", PresenceEntry("b2", "bob"))
    await renewed(raw, a.keys.presence_expiry("c"), "a1", "a2", "b1", "b2")
    assert await b.presence_stats("c") == PresenceStats(4, 3)
    refreshed = await crash(a)

    async def only_b() -> bool:
        # alice stays (b holds one of her clients); carol goes with a's leases.
        return await b.presence_stats("c") == PresenceStats(2, 2)

    assert await gone_after(refreshed, only_b) > 1.4
    await b.presence_remove("c", "b1")
    assert await b.presence_stats("c") == PresenceStats(1, 1)


async def test_meta_lost_with_stream_left_over_starts_a_clean_epoch(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    a, _ = await nodes()
    for i in range(5):
        await a.publish("c", i, OPTS)
    before = (await a.history("c", OPTS)).position
    await raw.delete(a.keys.meta("c"))  # evicted meta, stream still there
    pub = await a.publish("c", "new", OPTS)
    assert pub.offset == 1 and pub.epoch != before.epoch
    history = await a.history("c", OPTS)
    assert [p.data for p in history.publications] == ["new"]


async def test_writes_lost_in_a_failover_start_a_new_epoch(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    a, sink = await nodes()
    await a.subscribe("c")
    for i in range(5):
        await a.publish("c", i, OPTS)
    await eventually(lambda: sink.offsets("c") == [1, 2, 3, 4, 5])
    epoch = sink.publications[0].epoch
    # What a replica promoted before it received the last two writes holds.
    await raw.hset(a.keys.meta("c"), "s", 3)
    await raw.xdel(a.keys.stream("c"), "4-0", "5-0")
    # The node that saw offset 5 reads past the top it finds (its position check): a new epoch.
    history = await a.history("c", OPTS, since=StreamPosition(epoch, 5), trusted=True)
    assert history.position.epoch != epoch and history.publications == []
    # Offsets 4 and 5 are never handed out again in the epoch subscribers saw.
    pub = await a.publish("c", "after", OPTS)
    assert pub.epoch == history.position.epoch and pub.offset == 1
    await eventually(lambda: sink.publications[-1].epoch == pub.epoch)


async def test_a_client_s_cursor_ahead_of_the_top_changes_nothing(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Cursors are not signed: anyone who may read a channel can write one ahead of its top.
    Taken as evidence of lost writes, it once wiped the channel's history and reset every
    subscriber on every node with a new epoch. It is answered with the top (the hub makes that
    a `position` reset for that reader alone)."""
    a, sink = await nodes()
    await a.subscribe("c")
    for i in range(5):
        await a.publish("c", i, OPTS)
    epoch = (await a.history("c", OPTS, limit=0)).position.epoch
    for since in (StreamPosition(epoch, 6), StreamPosition(epoch, 2**62)):
        for kwargs in ({}, {"limit": 0}, {"limit": 10}, {"limit": 10, "reverse": True}):
            history = await a.history("c", OPTS, since=since, **kwargs)  # type: ignore[arg-type]
            assert history.position == StreamPosition(epoch, 5), kwargs
    assert (await raw.hget(a.keys.meta("c"), "e")) == epoch.encode()
    assert [p.offset for p in (await a.history("c", OPTS)).publications] == [1, 2, 3, 4, 5]
    assert (await a.publish("c", "next", OPTS)).position == StreamPosition(epoch, 6)
    await eventually(lambda: sink.offsets("c") == [1, 2, 3, 4, 5, 6])


async def test_the_position_check_notices_lost_writes(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    a, sink = await nodes()
    await a.subscribe("c")
    for i in range(5):
        await a.publish("c", i, OPTS)
    await eventually(lambda: sink.offsets("c") == [1, 2, 3, 4, 5])
    epoch = sink.publications[0].epoch
    await raw.hset(a.keys.meta("c"), "s", 3)
    await raw.xdel(a.keys.stream("c"), "4-0", "5-0")
    # With nobody publishing, the node's own position check starts the new epoch.
    deadline = time.monotonic() + 10
    while (await raw.hget(a.keys.meta("c"), "e")) == epoch.encode():
        assert time.monotonic() < deadline, "the check did not notice the lost writes"
        await asyncio.sleep(0.05)
    pub = await a.publish("c", "after", OPTS)
    assert pub.epoch != epoch and pub.offset == 1


async def test_unreachable_at_start() -> None:
    engine = RedisEngine(f"redis://127.0.0.1:{free_port()}/0", Settings())
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        await engine.start(RecordingSink())
    assert time.monotonic() - started < 5
    assert not await engine.healthy()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_database_the_server_does_not_have_is_named_with_how_many_it_has() -> None:
    server = RedisServer(databases=4)
    server.start()
    try:
        for db in (99, 4):
            engine = RedisEngine(f"redis://127.0.0.1:{server.port}/{db}", Settings())
            with pytest.raises(ConfigError) as caught:
                await engine.start(RecordingSink())
            assert caught.value.message == (
                f"Redis at redis://127.0.0.1:{server.port}/{db} has no database {db} "
                "(it has 4, 0 to 3): change the engine URL's /db"
            )
            assert not await engine.healthy()
        # Counted with SELECT alone: nothing was written anywhere.
        for db in range(4):
            client = aioredis.Redis(port=server.port, db=db)
            try:
                assert await client.dbsize() == 0
            finally:
                await client.aclose()
    finally:
        server.cleanup()


async def test_redis_down_then_back(nodes: Callable[..., Any], redis_server: RedisServer) -> None:
    a, sink = await nodes()
    b, _ = await nodes()
    await a.subscribe("c")
    await b.publish("c", 1, OPTS)
    await eventually(lambda: sink.offsets("c") == [1])
    epoch = sink.publications[0].epoch

    redis_server.stop()
    await eventually(lambda: not a._link.up, timeout=3)  # type: ignore[union-attr]
    assert not await a.healthy()
    with pytest.raises(EngineUnavailable):
        await b.publish("c", 2, OPTS)
    with pytest.raises(EngineUnavailable):
        await a.history("c", OPTS)
    with pytest.raises(EngineUnavailable):
        await a.presence("c")
    with pytest.raises(EngineUnavailable):
        await a.subscribe("d")

    redis_server.start()  # empty: no persistence
    await eventually(lambda: a._link.up, timeout=5)  # type: ignore[union-attr]
    assert await a.healthy()
    pub = await b.publish("c", "after", OPTS)
    assert pub.offset == 1 and pub.epoch != epoch  # the history was lost: a new epoch
    await eventually(lambda: sink.publications[-1].data == "after")
    await a.subscribe("d")  # subscriptions work again


def _quiet_link(client: Any, name: str) -> PubSubLink:
    """A pub/sub link of ``client``'s that ignores what it receives."""
    return PubSubLink(
        Keys("clarion"),
        client.connection_pool.make_connection,
        lambda channel, payload: None,
        lambda channels: None,
        client_name=name,
    )


async def test_a_subscribe_during_a_resubscribe_waits_for_its_own_confirmation(
    redis_server: RedisServer,
) -> None:
    """A channel let go and taken again while the link resubscribes after a reconnect (its
    writes waiting on a busy socket) is confirmed by its own SUBSCRIBE, after the batch's and
    the UNSUBSCRIBE queued behind it: answered by the batch's, the subscriber would read its
    baseline while the node was about to let go of the channel, and lose what came then."""
    client = parse_url(redis_server.url).client()
    raw = aioredis.Redis(port=redis_server.port)
    keys = Keys("clarion")
    heard: list[str] = []  # what Redis said of channel A, in order
    held, gate = asyncio.Event(), asyncio.Event()
    made: list[Any] = []

    def connection() -> Any:
        conn = client.connection_pool.make_connection()
        send, read = conn.send_command, conn.read_response
        made.append(conn)

        async def send_command(*args: Any, **kwargs: Any) -> None:
            if len(made) > 1 and args[0] == "SUBSCRIBE" and keys.pubsub("A") in args:
                held.set()  # the reconnect's batch, inside the link's lock: a full socket
                await gate.wait()
            await send(*args, **kwargs)

        async def read_response(*args: Any, **kwargs: Any) -> Any:
            msg = await read(*args, **kwargs)
            if isinstance(msg, list) and keys.channel_of(msg[1]) == "A":
                heard.append(msg[0].decode())
            return msg

        conn.send_command, conn.read_response = send_command, read_response
        return conn

    link = PubSubLink(keys, connection, lambda c, p: None, lambda cs: None, client_name="re")
    try:
        await link.start(5.0)
        await link.subscribe("A", 5.0)
        heard.clear()
        await raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await asyncio.wait_for(held.wait(), scaled(5))
        await link.unsubscribe("A")
        again = asyncio.create_task(link.subscribe("A", 5.0))
        await asyncio.sleep(0)  # asked: its future is channel A's last
        mine = link._pending["A"][-1][0]
        answered_at: list[int] = []  # how much Redis had said of A when it was answered
        confirmed = link._confirmed

        def confirming(channel: bytes) -> None:
            confirmed(channel)
            if mine.done() and not answered_at:
                answered_at.append(len(heard))

        link._confirmed = confirming  # type: ignore[method-assign]
        gate.set()
        await asyncio.wait_for(again, scaled(5))
        assert heard[:3] == ["subscribe", "unsubscribe", "subscribe"]
        assert answered_at == [3], "answered by another SUBSCRIBE than its own"
    finally:
        gate.set()
        await link.close()
        await raw.aclose()
        await client.aclose()


async def test_a_close_during_the_pubsub_setup_ends_the_link(redis_server: RedisServer) -> None:
    """A close at any point of the pub/sub connection's setup ends the link at once.

    A cancel that comes as one of the setup's writes completes is lost on Python 3.11 (redis-py
    waits for each write with asyncio.wait_for): the link came up anyway and read on, and the
    close waited for that read, with no timer left to end it."""
    client = parse_url(redis_server.url).client()
    try:
        for step in range(1000):
            link = _quiet_link(client, "setup")
            starting = asyncio.create_task(link.start(5.0))
            for _ in range(step):  # one loop iteration each: each point of the setup in turn
                await asyncio.sleep(0)
            setup_over = link.up
            # A task of its own: the close must end by itself, not by the test cancelling it.
            closing = asyncio.create_task(link.close())
            done, _ = await asyncio.wait({closing}, timeout=scaled(2))
            assert done, f"the close at step {step} of the setup did not end"
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, EngineUnavailable):
                await starting
            if setup_over:
                break
        else:
            pytest.fail("the pub/sub link never came up")
    finally:
        await client.aclose()


async def test_close_ends_a_task_that_lost_its_cancel(
    nodes: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background task that lost its cancel (as in the test above) is cancelled again."""
    a, _ = await nodes()
    await a.subscribe("c")
    checking = asyncio.Event()
    lost: list[asyncio.CancelledError] = []
    monkeypatch.setattr(a._positions, "resync", losing_one_cancel(checking, lost))
    await asyncio.wait_for(checking.wait(), scaled(5))
    closing = asyncio.create_task(a.close())
    done, _ = await asyncio.wait({closing}, timeout=scaled(5))
    assert done and lost


async def test_a_cancelled_start_leaves_no_link_running(redis_server: RedisServer) -> None:
    """A start cancelled at any point of the setup stops the link's task before it ends.

    Whoever cancels start() drops the link: a task left running would connect, subscribe and
    read on for good, with nobody to close it."""
    client = parse_url(redis_server.url).client()
    links: list[PubSubLink] = []
    try:
        async with asyncio.timeout(scaled(20)):
            for step in range(1000):
                link = _quiet_link(client, "cancelled-start")
                links.append(link)
                starting = asyncio.create_task(link.start(5.0))
                for _ in range(step):  # one loop iteration each: each point of the setup in turn
                    await asyncio.sleep(0)
                run = link._task
                started = starting.done()
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                if started:
                    break
                # Cancelled before it was done: it says so, rather than return as if started.
                assert starting.cancelled(), f"start returned though cancelled at step {step}"
                assert run is None or run.done(), f"the link runs on after a cancel at step {step}"
            else:
                pytest.fail("the pub/sub link never came up")
    finally:
        for link in links:  # what a failure left running
            await link.close()
        await client.aclose()


async def test_a_close_wakes_a_start_that_waits_for_the_link() -> None:
    """A link that cannot come up (nothing listens) and is closed meanwhile: its start() says so
    at once, instead of waiting out its timeout."""
    client = parse_url(f"redis://127.0.0.1:{free_port()}/0").client()
    try:
        link = _quiet_link(client, "never-up")
        starting = asyncio.create_task(link.start(60.0))
        await asyncio.sleep(0.3)  # a few failed connects
        await link.close()
        done, _ = await asyncio.wait({starting}, timeout=scaled(5))
        assert done, "start() still waits after close()"
        with pytest.raises(EngineUnavailable, match="closed before it came up"):
            starting.result()
        assert not link.up
    finally:
        await client.aclose()


def running(name: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def test_close_stops_a_resync_started_by_a_reconnect_while_it_closes(
    nodes: Callable[..., Any], raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link reconnects while close() waits for a position check to stop: the resync that
    reconnect would start must not outlive close()."""
    a, _ = await nodes()
    await a.subscribe("c")
    link = a._link
    assert isinstance(link, PubSubLink)
    loop = asyncio.get_running_loop()
    resyncs: list[asyncio.Task[Any]] = []
    closing = asyncio.Event()

    async def reconnect() -> None:
        await closing.wait()
        generation = link._generation
        await raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: link._generation > generation and link.up)

    async def resync(channels: list[str]) -> None:
        task = asyncio.current_task()
        assert task is not None
        resyncs.append(task)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if task is resyncs[0]:  # the position check's, stopped by close()
                closing.set()
                # A slow stop, whatever cancels come: the link reconnects meanwhile.
                deadline = loop.time() + scaled(5)
                while not reconnecting.done() and loop.time() < deadline:
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({reconnecting}, timeout=scaled(5))
            raise

    reconnecting = asyncio.create_task(reconnect())
    monkeypatch.setattr(a._positions, "resync", resync)
    try:
        async with asyncio.timeout(scaled(15)):
            await until(lambda: resyncs)  # the position check runs, and waits
            await a.close()
            assert reconnecting.done()
            reconnecting.result()  # the link did come back while close() ran
            assert running("clarion-redis-resync") == []
            assert [t for t in resyncs if not t.done()] == []
    finally:
        for task in [reconnecting, *resyncs]:
            task.cancel()


async def test_close_stops_the_pipelines_still_waiting_for_redis(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Redis stops answering with a pipeline waiting for the pool's one connection: close()
    waits for it a while, then stops it, and its callers get EngineUnavailable.

    Left to run, it got the connection back once the client closed, opened a new one to
    Redis after the engine had closed, and waited there for the reply."""
    a, _ = await nodes("check_interval=5&presence_ttl=5&pool_size=1")
    await raw.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    async with asyncio.timeout(scaled(10)):
        # Not batched: it holds the pool's connection until the client closes.
        event = asyncio.create_task(a.broadcast_event("c", "leave", {}))
        await until(lambda: not a._client.connection_pool.can_get_connection())
        reading = asyncio.create_task(a.history("c", OPTS))
        await until(lambda: a._batch._sending)
        sending = set(a._batch._sending)
        await a.close()
        assert all(task.done() for task in sending)
        for call in (event, reading):
            with pytest.raises(EngineUnavailable):
                await call
        # Once Redis answers again: no connection of the closed engine is left.
        assert [c["cmd"] for c in await raw.client_list() if c["cmd"] != "client|list"] == []


async def test_close_stops_a_health_check_under_way(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """A health check waiting on a stuck Redis is stopped by close(), and answers False."""
    a, _ = await nodes("check_interval=5&presence_ttl=5")
    health = a._health
    assert health is not None
    await raw.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    checking = asyncio.create_task(a.healthy())
    async with asyncio.timeout(scaled(10)):
        await until(lambda: health._pinging is not None)
        pinging = health._pinging
        assert pinging is not None
        await a.close()
        assert pinging.done()
        assert await checking is False


async def test_cluster_wide_connection_limits_and_rates(nodes: Callable[..., Any]) -> None:
    a, _ = await nodes()
    b, _ = await nodes()
    assert a.limits is not None and b.limits is not None
    assert await a.limits.acquire_connection("user", "u1", "s1", 2)
    assert await b.limits.acquire_connection("user", "u1", "s2", 2)
    assert not await b.limits.acquire_connection("user", "u1", "s3", 2)
    assert await a.limits.acquire_connection("user", "u1", "s1", 2)  # already counted
    assert await a.limits.connection_count("user", "u1") == 2
    await a.limits.release_connection("user", "u1", "s1")
    assert await b.limits.acquire_connection("user", "u1", "s3", 2)
    assert await a.limits.connection_count("ip", "10.0.0.1") == 0

    taken = [await a.limits.take_token("pub:u1", rate=1, burst=3) for _ in range(3)]
    taken += [await b.limits.take_token("pub:u1", rate=1, burst=3)]
    assert taken == [True, True, True, False]


async def test_connection_counts_of_a_crashed_node_expire(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    a, _ = await nodes("presence_ttl=1.5")
    b, _ = await nodes("presence_ttl=1.5")
    assert a.limits is not None and b.limits is not None
    assert await a.limits.acquire_connection("ip", "10.0.0.1", "a1", 5)
    assert await b.limits.acquire_connection("ip", "10.0.0.1", "b1", 5)
    await renewed(raw, a.keys.connections("ip", "10.0.0.1"), f"{a.node_id}:a1", f"{b.node_id}:b1")
    assert await b.limits.connection_count("ip", "10.0.0.1") == 2
    refreshed = await crash(a)

    async def only_b() -> bool:
        return await b.limits.connection_count("ip", "10.0.0.1") == 1

    assert await gone_after(refreshed, only_b) > 1.4


async def test_history_reads_honour_a_foreign_since(nodes: Callable[..., Any]) -> None:
    a, _ = await nodes()
    await a.publish("c", 1, OPTS)
    history = await a.history("c", OPTS, since=StreamPosition("gone", 0))
    assert history.publications == [] and not history.covers(StreamPosition("gone", 0))


def test_url_options() -> None:
    target = parse_url("redis://:secret@example.com:6380/2?prefix=app1&check_interval=0.5")
    assert target.prefix == "app1" and target.check_interval == 0.5
    assert "secret" not in target.description
    assert target.description == "redis://example.com:6380/2"
    assert "prefix" not in target.url and "check_interval" not in target.url
    sentinel = parse_url("redis+sentinel://s1:26379,s2:26380/mymaster/3")
    assert sentinel.sentinels == (("s1", 26379), ("s2", 26380))
    assert sentinel.service == "mymaster"
    pooled = parse_url("redis://h/0?pool_size=4&pool_timeout=1.5&socket_timeout=2")
    assert (pooled.pool_size, pooled.pool_timeout) == (4, 1.5)
    assert "pool_" not in pooled.url and "socket_timeout=2" in pooled.url
    for bad in (
        "redis://h/0?prefix={x}",
        "redis://h/0?check_interval=0",
        "redis://h/0?pool_size=0",
        "redis://h/0?pool_size=many",
        "redis://h/0?pool_timeout=-1",
        "redis://h/0?max_connections=10",  # one name for the pool size: pool_size
        "redis://h/0?timeout=3",
        "redis+sentinel://s1/mymaster",
        "redis+sentinel://s1:1/",
        "memcached://h",
    ):
        with pytest.raises(ConfigError):
            parse_url(bad)


def test_a_misspelt_url_parameter_is_refused_by_name() -> None:
    # Left to redis-py, it failed at the first connection as an unexpected keyword argument.
    for url, hint in (
        ("redis://h/0?prefx=app1", "(did you mean prefix?)"),
        ("rediss://h/0?ssl_ca_cert=/ca.pem", "(did you mean ssl_ca_certs?)"),
        ("redis+sentinel://s1:26379/main?sockettimeout=1", "(did you mean socket_timeout?)"),
    ):
        with pytest.raises(ConfigError, match="unknown parameter") as refused:
            parse_url(url)
        assert hint in str(refused.value)
    # What redis-py's connections take still goes through, TLS and Unix sockets included.
    for url in (
        "rediss://h/0?ssl_ca_certs=/ca.pem&ssl_check_hostname=false",
        "unix:///run/redis.sock?db=1&client_name=hub",
        "redis://h/0?health_check_interval=5&socket_keepalive=true",
        # the cluster client's own options, on a cluster
        "redis+cluster://h1:7000,h2:7001?read_from_replicas=true&require_full_coverage=false",
    ):
        parse_url(url)
    # ... and only there: a single node's connection would fail on them.
    with pytest.raises(ConfigError, match="unknown parameter 'read_from_replicas'"):
        parse_url("redis://h/0?read_from_replicas=true")


async def test_sentinel_finds_the_master(redis_server: RedisServer, tmp_path: Path) -> None:
    """Master discovery through a real Sentinel (failover itself is not exercised)."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor main 127.0.0.1 {redis_server.port} 1\n"
    )
    assert REDIS_SERVER is not None
    sentinel = subprocess.Popen(
        [REDIS_SERVER, str(conf), "--sentinel", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = RedisEngine(f"redis+sentinel://127.0.0.1:{port}/main/0", Settings())
    try:
        sink = RecordingSink()
        deadline = time.monotonic() + 10
        while True:
            try:
                await engine.start(sink)
                break
            except EngineUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await engine.subscribe("c")
        pub = await engine.publish("c", "via sentinel", OPTS)
        await eventually(lambda: sink.publications == [pub])
        assert await engine.healthy()
    finally:
        await engine.close()
        os.kill(sentinel.pid, signal.SIGKILL)
        sentinel.wait(timeout=10)


async def test_silent_pubsub_connection_is_replaced(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """A link that stops answering (here: Redis paused) is dropped by the heartbeat."""
    a, sink = await nodes()
    await a.subscribe("c")
    link = a._link
    assert link is not None
    generation = link._generation
    await raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    await eventually(lambda: link._generation > generation and link.up, timeout=10)
    pub = await a.publish("c", "after", OPTS)
    await eventually(lambda: sink.publications[-1:] == [pub])


async def test_a_burst_of_calls_queues_for_the_pool(nodes: Callable[..., Any]) -> None:
    """Far more concurrent calls than pooled connections: every one waits its turn, none fails."""
    a, sink = await nodes("check_interval=0.3&presence_ttl=5&pool_size=2")
    assert a.limits is not None
    await a.subscribe("c")
    n = 200
    results = await asyncio.gather(
        *(a.limits.acquire_connection("ip", "10.0.0.1", f"s{i}", n) for i in range(n)),
        *(a.presence_add("c", PresenceEntry(f"s{i}", None)) for i in range(n)),
        *(a.history("c", OPTS, limit=0) for i in range(n)),
        *(a.publish("c", i, OPTS) for i in range(n)),
        *(a.limits.take_token("pub:u1", rate=1, burst=n) for _ in range(n)),
    )
    assert results[:n] == [True] * n
    assert sorted(pub.offset for pub in results[3 * n : 4 * n]) == list(range(1, n + 1))
    assert results[4 * n :] == [True] * n
    assert await a.limits.connection_count("ip", "10.0.0.1") == n
    assert len(await a.presence("c")) == n
    # Every publication arrives; on a busy machine the position check may read some back
    # before pub/sub brings them too (the hub drops such repeats).
    await eventually(lambda: sorted(set(sink.offsets("c"))) == list(range(1, n + 1)))
    await asyncio.gather(
        *(a.limits.release_connection("ip", "10.0.0.1", f"s{i}") for i in range(n))
    )
    assert await a.limits.connection_count("ip", "10.0.0.1") == 0


async def test_calls_queued_behind_a_stuck_redis_fail_alone(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Redis stops answering: calls queued behind the pipelines under way give up after
    pool_timeout, each with EngineUnavailable; the health check, on a connection of its own,
    reports it; all works again once Redis answers."""
    a, _ = await nodes("check_interval=5&presence_ttl=5&pool_size=2&pool_timeout=0.5")
    assert a.limits is not None
    assert await a.healthy()
    await raw.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    started = time.monotonic()

    async def timed(call: Any) -> Any:
        try:
            return await call
        except EngineUnavailable as exc:
            return exc, time.monotonic() - started

    calls = [a.history("c", OPTS) for _ in range(6)]
    calls += [a.limits.acquire_connection("ip", "10.0.0.1", f"s{i}", 10) for i in range(3)]
    calls += [a.limits.release_connection("ip", "10.0.0.1", "s0")]
    tasks = []
    for call in calls:
        # One loop iteration each: calls of one iteration would share one pipeline.
        tasks.append(asyncio.create_task(timed(call)))
        for _ in range(3):
            await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    failed = [r for r in results if isinstance(r, tuple)]
    # The two calls that got the pool's connections wait for Redis and succeed...
    assert [type(r) for r in results if not isinstance(r, tuple)] == [History, History]
    # ...the eight queued behind them give up on their own, well before Redis answers again.
    assert len(failed) == 8
    assert all("no free connection to Redis in time" in exc.message for exc, _ in failed), failed
    assert max(when for _, when in failed) < 2.5
    assert a._batch._open == {}  # the merged calls that failed unsent are not kept
    await raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    assert not await a.healthy()
    deadline = time.monotonic() + 5
    while not await a.healthy():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await a.history("c", OPTS)).publications == []
    assert await a.limits.acquire_connection("ip", "10.0.0.1", "s9", 10)


async def test_calls_of_one_iteration_share_a_pipeline_and_fail_alone(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """A command that fails in a batch fails its caller only; scripts Redis lost (SCRIPT FLUSH,
    as after a restart) are loaded again and the batch goes through."""
    a, _ = await nodes("check_interval=5&presence_ttl=5&pool_size=1")
    assert a.limits is not None
    await raw.set("clarion:{conn:ip:10.0.0.9}", "not a sorted set")
    await raw.script_flush()
    results = await asyncio.gather(
        *(a.limits.acquire_connection("ip", f"10.0.0.{i}", "s1", 5) for i in range(20)),
        *(a.history(f"c{i}", OPTS, limit=0) for i in range(20)),
        return_exceptions=True,
    )
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [9]
    assert isinstance(results[9], EngineUnavailable) and "WRONGTYPE" in str(results[9])
    assert all(isinstance(r, History) for r in results[20:])
    assert await a.limits.connection_count("ip", "10.0.0.1") == 1


async def test_history_reads_share_decoded_publications_of_one_epoch(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Reads of the same entries share objects (and so their encoded frames); an entry of a
    new epoch with the same offset is never taken for the old one."""
    a, sink = await nodes()
    await a.subscribe("c")
    await a.publish("c", "old", OPTS)
    await eventually(lambda: len(sink.publications) == 1)
    first, second = await a.history("c", OPTS), await a.history("c", OPTS)
    assert first.publications[0] is second.publications[0] is sink.publications[0]
    await raw.delete("clarion:{c}:meta", "clarion:{c}:stream")  # the channel's history is lost
    await a.publish("c", "new", OPTS)
    after = await a.history("c", OPTS)
    assert [p.data for p in after.publications] == ["new"]
    assert after.position.epoch != first.position.epoch


async def evalsha_calls(raw: aioredis.Redis) -> int:
    return int((await raw.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


async def test_resumes_of_one_channel_share_one_read_and_each_gets_its_part(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """A reconnect storm: readers of one channel from many cursors, queued together, cost one
    script call; each gets exactly the publications after its own cursor, and readers without
    a cursor the position alone."""
    a, _ = await nodes("check_interval=30&presence_ttl=60")
    for i in range(30):
        pub = await a.publish("c", i, OPTS)
    top = pub.position
    before = await evalsha_calls(raw)
    cursors = [StreamPosition(top.epoch, n) for n in (29, 3, 17, 30, 0, 12)]
    reads = await asyncio.gather(
        *(a.history("c", OPTS, since=since) for since in cursors),
        a.history("c", OPTS, limit=0),
    )
    assert await evalsha_calls(raw) - before == 2  # the resumes' read, the position's read
    for since, history in zip(cursors, reads, strict=False):
        assert [p.offset for p in history.publications] == list(range(since.offset + 1, 31))
        assert [p.data for p in history.publications] == list(range(since.offset, 30))
        assert history.position == top and history.earliest == 1
    assert reads[-1].publications == [] and reads[-1].position == top


async def test_a_shared_read_keeps_resets_exact(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """In a shared read, a cursor of another epoch gets no publications (a reset), and a cursor
    ahead of the top gets the top alone, as a read of its own does: no new epoch."""
    a, _ = await nodes("check_interval=30&presence_ttl=60")
    for i in range(5):
        pub = await a.publish("c", i, OPTS)
    epoch = pub.position.epoch
    behind, ahead, other = (
        a.history("c", OPTS, since=StreamPosition(epoch, 2)),
        a.history("c", OPTS, since=StreamPosition(epoch, 9)),
        a.history("c", OPTS, since=StreamPosition("gone", 1)),
    )
    got_behind, got_ahead, got_other = await asyncio.gather(behind, ahead, other)
    assert [p.offset for p in got_behind.publications] == [3, 4, 5]
    assert got_behind.position == pub.position
    assert got_ahead.publications == [] and got_ahead.position == pub.position
    assert got_other.publications == []
    assert (await a.publish("c", "next", OPTS)).position == StreamPosition(epoch, 6)


async def test_a_cancelled_reader_leaves_the_shared_read_to_the_others(
    nodes: Callable[..., Any],
) -> None:
    a, _ = await nodes("check_interval=30&presence_ttl=60")
    pub = await a.publish("c", "x", OPTS)
    since = StreamPosition(pub.epoch, 0)
    first = asyncio.ensure_future(a.history("c", OPTS, since=since))
    second = asyncio.ensure_future(a.history("c", OPTS, since=since))
    await asyncio.sleep(0)  # both queued on one call
    first.cancel()
    assert [p.data for p in (await second).publications] == ["x"]
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_closed_engine_refuses_calls_instead_of_reconnecting(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    engine = RedisEngine(f"{redis_server.url}?check_interval=5", Settings())
    await engine.start(RecordingSink())
    await engine.presence_add("c", PresenceEntry("s1", None))
    await engine.close()
    clients = len(await raw.client_list())
    with pytest.raises(EngineUnavailable, match="closed"):
        await engine.presence_remove("c", "s1")
    with pytest.raises(EngineUnavailable, match="closed"):
        await engine.history("c", OPTS)
    assert len(await raw.client_list()) == clients


async def test_a_burst_of_admissions_is_counted_exactly_and_in_call_order(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Acquires of one key queued together are a few script calls, handled in call order: the
    first ``limit`` sessions are admitted, each counted once, the later ones refused; the
    releases queued together are a few commands and leave nothing counted."""
    a, _ = await nodes("check_interval=30&presence_ttl=60")
    b, _ = await nodes("check_interval=30&presence_ttl=60")
    assert a.limits is not None and b.limits is not None
    assert await b.limits.acquire_connection("ip", "10.0.0.1", "b0", 250)
    before = await evalsha_calls(raw)
    admitted = await asyncio.gather(
        *(a.limits.acquire_connection("ip", "10.0.0.1", f"s{i}", 250) for i in range(300)),
        a.limits.acquire_connection("ip", "10.0.0.1", "s5", 250),  # already counted
    )
    assert admitted == [True] * 249 + [False] * 51 + [True]
    # Not one script call per session: the refusals share one look at the nodes counted.
    assert await evalsha_calls(raw) - before <= 6
    assert await a.limits.connection_count("ip", "10.0.0.1") == 250
    assert not await b.limits.acquire_connection("ip", "10.0.0.1", "b1", 250)
    zrem = await command_calls(raw, "zrem")
    await asyncio.gather(
        *(a.limits.release_connection("ip", "10.0.0.1", f"s{i}") for i in range(249))
    )
    assert await command_calls(raw, "zrem") - zrem <= 3
    assert await a.limits.connection_count("ip", "10.0.0.1") == 1
    assert await b.limits.acquire_connection("ip", "10.0.0.1", "b1", 250)


async def test_presence_is_exact_after_a_burst_of_joins_and_leaves(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Adds and removes of one channel queued together run in call order, whoever asked: a
    client that joins, leaves and joins again within one iteration stays; one that joins then
    leaves is gone; the users' counts follow."""
    a, _ = await nodes("check_interval=30&presence_ttl=60")
    b, _ = await nodes("check_interval=30&presence_ttl=60")

    def entry(i: int) -> PresenceEntry:
        return PresenceEntry(f"s{i}", f"u{i % 7}" if i % 3 else None)

    before = await evalsha_calls(raw)
    await asyncio.gather(*(a.presence_add("c", entry(i)) for i in range(200)))
    assert await evalsha_calls(raw) - before <= 2
    calls = []
    for i in range(200):
        if i % 4 == 0:  # leaves
            calls.append(a.presence_remove("c", f"s{i}"))
        elif i % 4 == 1:  # leaves, then is back
            calls += [a.presence_remove("c", f"s{i}"), a.presence_add("c", entry(i))]
    calls += [a.presence_add("c", entry(i)) for i in range(200, 260)]  # new ones
    calls += [a.presence_remove("c", f"s{i}") for i in range(250, 260)]  # gone again
    await asyncio.gather(*calls)
    present = [i for i in range(200) if i % 4 != 0] + list(range(200, 250))
    listed = sorted(int(p.client[1:]) for p in await b.presence("c"))
    assert listed == present
    users = {entry(i).user for i in present} - {None}
    assert await b.presence_stats("c") == PresenceStats(len(present), len(users))
    await asyncio.gather(*(a.presence_remove("c", f"s{i}") for i in present))
    assert await b.presence("c") == []
    assert await b.presence_stats("c") == PresenceStats(0, 0)


async def test_a_burst_of_a_crashed_node_expires(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Entries and counts added by a burst (merged calls) are leases like any: the node's
    refresh renews them all, and they end within the TTL once it has crashed."""
    a, _ = await nodes("presence_ttl=1.5")
    b, _ = await nodes("presence_ttl=1.5")
    assert a.limits is not None and b.limits is not None
    await asyncio.gather(
        *(a.presence_add("c", PresenceEntry(f"a{i}", f"u{i % 5}")) for i in range(100)),
        *(a.limits.acquire_connection("ip", "10.0.0.1", f"a{i}", 1000) for i in range(100)),
    )
    await b.presence_add("c", PresenceEntry("b1", "u0"))
    assert await b.limits.acquire_connection("ip", "10.0.0.1", "b1", 1000)
    members = [f"a{i}" for i in range(100)]
    await renewed(raw, a.keys.presence_expiry("c"), *members)
    counted = [f"{a.node_id}:{m}" for m in members]  # a connection's member names its node
    await renewed(raw, a.keys.connections("ip", "10.0.0.1"), *counted)
    assert await b.presence_stats("c") == PresenceStats(101, 5)
    refreshed = await crash(a)

    async def only_b() -> bool:
        return (
            await b.presence_stats("c") == PresenceStats(1, 1)
            and await b.limits.connection_count("ip", "10.0.0.1") == 1  # type: ignore[union-attr]
            and [p.client for p in await b.presence("c")] == ["b1"]
        )

    assert await gone_after(refreshed, only_b) > 1.4


async def command_calls(raw: aioredis.Redis, name: str) -> int:
    return int((await raw.info("commandstats")).get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_a_cancelled_item_is_left_out_of_its_merged_call(nodes: Callable[..., Any]) -> None:
    a, _ = await nodes("check_interval=30&presence_ttl=60")
    assert a.limits is not None
    first = asyncio.ensure_future(a.limits.acquire_connection("ip", "10.0.0.1", "s1", 10))
    second = asyncio.ensure_future(a.limits.acquire_connection("ip", "10.0.0.1", "s2", 10))
    await asyncio.sleep(0)  # both queued on one call, not sent yet
    first.cancel()
    assert await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await a.limits.connection_count("ip", "10.0.0.1") == 1


async def test_a_refresh_renews_leases_and_puts_back_what_redis_lost(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """The periodic refresh sends no entry, only the clients to renew; the entries Redis lost
    (here deleted, as a restart without persistence would) come back whole, users too."""
    a, sink = await nodes()
    assert a.limits is not None
    await a.presence_add("c", PresenceEntry("p1", None, {"x": 1}))
    await a.presence_add("c", PresenceEntry("p2", None))
    await a.presence_add("c", PresenceEntry("u1", "alice", {"y": 2}))
    await a.presence_add("c", PresenceEntry("u2", "bob"))
    for member in ("p1", "u1"):
        assert await a.limits.acquire_connection("ip", "10.0.0.1", member, 10)
    zset, conns = a.keys.presence_expiry("c"), a.keys.connections("ip", "10.0.0.1")
    await raw.zrem(zset, "p1", "u1")
    await raw.hdel(a.keys.presence_entries("c"), "p1", "u1")
    await raw.delete(a.keys.presence_user("c", "alice"), conns)
    await raw.zrem(a.keys.presence_users("c"), "alice")
    kept = {m: await raw.zscore(zset, m) for m in ("p2", "u2")}
    await a._refresh()
    for member, score in kept.items():
        assert (await raw.zscore(zset, member) or 0) > (score or 0)  # renewed
    listed = sorted((p.client, p.user, p.info) for p in await a.presence("c"))
    assert listed == [
        ("p1", None, {"x": 1}),
        ("p2", None, None),
        ("u1", "alice", {"y": 2}),
        ("u2", "bob", None),
    ]
    assert await a.presence_stats("c") == PresenceStats(4, 2)
    assert await a.limits.connection_count("ip", "10.0.0.1") == 2
    # The hub is told which came back: their leave may have gone out, their join goes again.
    assert sorted(sink.restored) == [("c", "p1"), ("c", "u1")]


async def test_a_refresh_leaves_alone_what_closed_while_it_ran(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Entries removed and connections released while a refresh is under way stay gone, and
    the refresh removes none of them again: a refresh that meets thousands of closing
    sessions (a reconnect storm) costs no more than one that meets none."""
    a, _ = await nodes("check_interval=30&presence_ttl=60")
    assert a.limits is not None
    clients = [f"s{i}" for i in range(200)]
    for client in clients:
        await a.presence_add("c", PresenceEntry(client, None))
        assert await a.limits.acquire_connection("ip", "10.0.0.1", client, 1000)
    await raw.config_resetstat()
    refresh = asyncio.ensure_future(a._refresh())
    await asyncio.sleep(0)  # the refresh has taken what this node holds and waits on Redis
    gone = clients[:150]
    await asyncio.gather(
        *(a.presence_remove("c", client) for client in gone),
        *(a.limits.release_connection("ip", "10.0.0.1", client) for client in gone),
    )
    await refresh
    assert sorted(p.client for p in await a.presence("c")) == sorted(clients[150:])
    assert await a.limits.connection_count("ip", "10.0.0.1") == 50
    stats = await raw.info("commandstats")
    # One HDEL and one ZREM per removed entry, and one ZREM for the 150 released connections
    # (released together, they are one call): nothing removed twice.
    assert stats["cmdstat_hdel"]["calls"] == 150
    assert stats["cmdstat_zrem"]["calls"] == 151


async def test_revocations_lost_by_redis_are_read_whole_from_the_new_set(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    # Redis lost the revocations (their keys gone as after a restart without persistence): the
    # next revocation starts a new set, and a node's mark of the old one reads the new one whole
    # (counting on from its old mark would skip the first of them).
    engine, _ = await nodes()
    now = time.time()
    await engine.revoke("user", "a", now + 60)
    mark, _ = await engine.revocations()
    assert await raw.delete(*engine.keys.revocations()) == 3
    await engine.revoke("user", "b", now + 60)
    await engine.revoke("user", "c", now + 60)
    _, entries = await engine.revocations(mark)
    assert sorted(key for _, key, _ in entries) == ["b", "c"]


async def test_revocations_keys_expire_with_the_last_one(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    engine, _ = await nodes()
    now = time.time()
    await engine.revoke("jti", "short", now + 30)
    await engine.revoke("jti", "long", now + 90)
    await engine.revoke("jti", "gone", now - 1)  # lapsed: stored nowhere
    for key in engine.keys.revocations():
        assert 60 < await raw.ttl(key) <= 91, key  # the later one's, not 30 s
    log = engine.keys.revocations()[1]
    assert sorted(await raw.zrange(log, 0, -1)) == [b"jti:long", b"jti:short"]


async def test_a_lapsed_revocation_alone_leaves_no_key(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    engine, _ = await nodes()
    await engine.revoke("user", "late", time.time() - 1)
    assert await raw.exists(*engine.keys.revocations()) == 0


async def test_revocations_are_read_whole_from_a_restarted_redis() -> None:
    # Redis restarted from its files (or a replica promoted) may lack writes a node's mark
    # counted, and count on from where it stood: the mark names the Redis process, so a node
    # reads the set whole from another one (counting on, it would skip "b").
    server = RedisServer(persistent=True)
    server.start()
    engine = RedisEngine(server.url, Settings())
    await engine.start(RecordingSink())
    try:
        await engine.revoke("user", "a", time.time() + 60)
        mark, _ = await engine.revocations()
        server.restart()
        for _ in range(100):  # the engine's connections find the new process
            try:
                await engine.revoke("user", "b", time.time() + 60)
                break
            except EngineUnavailable:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the restarted Redis never took the revocation")
        _, entries = await engine.revocations(mark)
        assert sorted(key for _, key, _ in entries) == ["a", "b"]
    finally:
        await engine.close()
        server.stop()


async def test_a_revocation_stored_by_an_earlier_version_is_read(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    # During an upgrade a node of an earlier version stores a revocation in the set alone:
    # the log no longer matches the set, so the newer nodes read the set whole, and the next
    # revocation they store logs it again.
    engine, _ = await nodes()
    await engine.revoke("user", "a", time.time() + 60)
    mark, _ = await engine.revocations()
    await raw.zadd(engine.keys.revocations()[0], {"user:old": time.time() + 60})
    mark, entries = await engine.revocations(mark)
    assert sorted(key for _, key, _ in entries) == ["a", "old"]
    await engine.revoke("user", "b", time.time() + 60)
    mark, entries = await engine.revocations(mark)
    assert sorted(key for _, key, _ in entries) == ["a", "b", "old"]  # logged again, once
    assert (await engine.revocations(mark))[1] == []


async def _engine_on(server: RedisServer, query: str) -> RedisEngine:
    engine = RedisEngine(f"{server.url}?{query}", Settings())
    await engine.start(RecordingSink())
    return engine


async def _counted(engine: RedisEngine, key: str) -> int:
    assert engine.limits is not None
    return await engine.limits.connection_count("ip", key)


async def test_a_connection_admitted_while_redis_was_away_counts_once_it_is_back() -> None:
    """The caller fails open while Redis is away (its own caps apply); the connections it
    admits then are counted cluster-wide once Redis answers again, not never."""
    server = RedisServer(persistent=True)
    server.start()
    engine = await _engine_on(server, "check_interval=0.2&presence_ttl=1.5")
    try:
        assert engine.limits is not None
        server.stop()
        with pytest.raises(EngineUnavailable):
            await engine.limits.acquire_connection("ip", "10.0.0.9", "away", 5)
        server.start()

        async def counted() -> bool:
            with contextlib.suppress(EngineUnavailable):
                return await _counted(engine, "10.0.0.9") == 1
            return False

        await until(counted, wait=10, interval=0.1)
        await engine.limits.release_connection("ip", "10.0.0.9", "away")
        assert await _counted(engine, "10.0.0.9") == 0
    finally:
        await engine.close()
        server.cleanup()


async def test_a_release_that_failed_is_made_again_once_redis_is_back() -> None:
    """A connection closed while Redis was away stops counting soon after Redis answers
    again, not when its lease ends (30 s here): until then it would refuse others (4503)."""
    server = RedisServer(persistent=True)
    server.start()
    engine = await _engine_on(server, "check_interval=0.2&presence_ttl=30")
    try:
        assert engine.limits is not None
        assert await engine.limits.acquire_connection("ip", "10.0.0.9", "gone", 1)
        server.stop()  # away; every write is on disk (appendfsync always)
        with pytest.raises(EngineUnavailable):
            await engine.limits.release_connection("ip", "10.0.0.9", "gone")
        server.start()  # a new process, from its append-only file: the member is there
        started = time.monotonic()

        async def released() -> bool:
            with contextlib.suppress(EngineUnavailable):
                return await _counted(engine, "10.0.0.9") == 0
            return False

        await until(released, wait=10, interval=0.1)
        assert time.monotonic() - started < 10  # far from the lease's 30 s
        assert await engine.limits.acquire_connection("ip", "10.0.0.9", "next", 1)
    finally:
        await engine.close()
        server.cleanup()


async def test_a_connection_gone_while_its_count_failed_leaves_no_count_behind() -> None:
    """A client that connects and leaves while Redis does not answer: its count, which the
    engine keeps to add once Redis is back, is released with it, not renewed for ever (the
    user or address one short of its cap on every node)."""
    import websockets

    from ..conftest import start_clarion_hub, stop_hub

    server = RedisServer()
    server.start()
    engine = f"{server.url}?check_interval=0.2&presence_ttl=1.5&socket_timeout=0.5"
    running = await start_clarion_hub(Settings(engine=engine))
    key = running.hub.engine.keys.connections("ip", "127.0.0.1")  # type: ignore[attr-defined]
    raw = aioredis.Redis(port=server.port)
    try:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            ws = await websockets.connect(running.ws_url)
            await asyncio.sleep(0.1)
            await ws.close()
            await asyncio.sleep(scaled(1.5))  # the count's call times out meanwhile
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        # Well past refreshes (every 0.5 s) that would add a count still held.
        await asyncio.sleep(scaled(2.5))
        assert await raw.zrange(key, 0, -1) == []
    finally:
        await raw.aclose()
        await stop_hub(running)
        await running.hub.close()
        server.cleanup()


async def test_the_first_health_check_after_a_restart_is_healthy(
    nodes: Callable[..., Any], redis_server: RedisServer
) -> None:
    """The health check keeps a connection of its own, which a restarted Redis has closed:
    a check that found that out only by failing said 503 once, on every node at once, to
    every load balancer that drops a node after one failed probe."""
    engine, _ = await nodes()
    assert await engine.healthy()  # its connection is open now
    redis_server.restart()
    link = engine._link
    assert link is not None
    await until(lambda: not link.up, wait=10)
    await until(lambda: link.up, wait=15)  # the pub/sub link is back: nothing checked since
    assert await engine.healthy()


async def test_a_crashed_nodes_entries_are_found_where_no_node_subscribes(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Its entries' channels are known (with when their last lease ends): another node takes
    out their ended entries, each once, though it subscribes to none of them; a channel where
    a lease lives on is kept, one with none left is forgotten."""
    a, _ = await nodes("presence_ttl=1.5")
    b, _ = await nodes("presence_ttl=1.5")
    c, _ = await nodes("presence_ttl=1.5")
    await a.presence_add("gone", PresenceEntry("a1", "alice"))
    await a.presence_add("mixed", PresenceEntry("a2", "alice"))
    await b.presence_add("mixed", PresenceEntry("b1", "bob"))
    assert await b.presence_orphaned() == []  # every lease lives
    await crash(a)
    found: dict[str, list[str]] = {}

    async def taken() -> bool:
        for node in (b, c):  # both look: each entry comes out once
            for channel, entries in await node.presence_orphaned():
                found.setdefault(channel, []).extend(e.client for e in entries)
        return "gone" in found

    await until(taken, wait=5, interval=0.1)
    assert found == {"gone": ["a1"]}  # "mixed": b renews a lease there (its own scan's)
    index = raw.zrange(a.keys.presence_channels(), 0, -1)
    assert [m.decode() for m in await index] == ["mixed"]


async def test_a_crashed_nodes_many_channels_each_leave_once_before_their_keys_expire(
    nodes: Callable[..., Any], raw: aioredis.Redis
) -> None:
    """Far more channels than one claim takes: the nodes share them, claim after claim, and
    every ended entry comes out once, within the time its keys outlive its lease."""
    a, _ = await nodes("presence_ttl=1.5")
    b, _ = await nodes("presence_ttl=1.5")
    c, _ = await nodes("presence_ttl=1.5")
    n = 1500
    await asyncio.gather(
        *(a.presence_add(f"many{i}", PresenceEntry(f"a{i}", "alice")) for i in range(n))
    )
    await crash(a)
    found: list[str] = []

    async def look(node: RedisEngine) -> None:
        for _, entries in await node.presence_orphaned():
            found.extend(e.client for e in entries)

    async def all_found() -> bool:
        await asyncio.gather(look(b), look(c))  # as each node's watcher would, at once
        return len(found) >= n

    # Looked at every third of the TTL, as the nodes do; the keys live a TTL past the lease.
    await until(all_found, wait=6, interval=0.5)
    assert sorted(found) == sorted(f"a{i}" for i in range(n))
    assert await raw.zcard(a.keys.presence_channels()) == 0
