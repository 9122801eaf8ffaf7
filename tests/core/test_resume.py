"""Resume against a plain model: no gap, no duplicate, a reset exactly when history can't cover.

These tests drive the real hub and the real memory engine through the core's adapter interface
(a recording transport stands in for a socket); the same scenarios run over WebSocket in
``tests/asgi``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clarion import Hub, Publication, Settings, StreamPosition
from clarion.core.fanout import WireFormat
from clarion.engines.memory import MemoryEngine
from clarion.protocol.cursor import Cursor, encode_single

RAW = WireFormat("raw", "test", lambda pub: pub)


class Recorder:
    """A transport that keeps what the hub sends, in order."""

    kind = "test"

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.closed: int | None = None

    @property
    def last_activity(self) -> float:
        return time.monotonic()

    def ping(self) -> None:
        pass

    def push(self, pub: Publication) -> None:
        self.items.append(pub)

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        self.items.append(("reset", reason, cursor))

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        pass

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        self.items.append(("unsubscribe", channel, reason))

    def close(self, code: int, reason: str) -> None:
        self.closed = code

    def offsets(self) -> list[int]:
        return [p.offset for p in self.items if isinstance(p, Publication)]

    def resets(self) -> list[str]:
        return [i[1] for i in self.items if isinstance(i, tuple)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_hub(size: int, ttl: float, clock: Clock, engine: MemoryEngine | None = None) -> Hub:
    settings = Settings(namespaces={"default": {"history_size": size, "history_ttl": ttl}})
    return Hub(settings, engine=engine or MemoryEngine(clock=clock))


async def subscribe(hub: Hub, since: str | None) -> tuple[Recorder, Any]:
    rec = Recorder()
    session = hub.open_session(rec, hub.auth.anonymous())
    result = await session.subscribe("c", RAW, rec.push, since=since)
    return rec, (session, result)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 6)),
        st.tuples(st.just("drop"), st.just(0)),
        st.tuples(st.just("resume"), st.just(0)),
        st.tuples(st.just("wait"), st.integers(1, 30)),
        st.tuples(st.just("forget"), st.just(0)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(0, 8), st.sampled_from([10.0, 45.0, 1e6]))
def test_resume_matches_model(operations: list[tuple[str, int]], size: int, ttl: float) -> None:
    asyncio.run(_run_model(operations, size, ttl))


async def _run_model(operations: list[tuple[str, int]], size: int, ttl: float) -> None:
    clock = Clock()
    engine = MemoryEngine(clock=clock)
    hub = make_hub(size, ttl, clock, engine)
    await hub.start()
    try:
        # Model: what was published (offset -> publish time) in the current epoch.
        published: dict[int, float] = {}
        epoch_changes = 0
        seen: list[int] = []  # offsets the client received, across connections
        rec, (session, result) = await subscribe(hub, None)
        cursor: str = result.cursor
        connected = True
        for op, arg in operations:
            if op == "publish":
                for _ in range(arg):
                    pub = await hub.publish("c", {"n": len(published)})
                    published[pub.offset] = clock.now
            elif op == "wait":
                clock.now += arg
            elif op == "forget" and not connected:
                # History and meta both expire: the channel's next incarnation is a new epoch.
                clock.now += 10**7
                engine.sweep()
                published.clear()
                epoch_changes += 1
            elif op == "drop" and connected:
                seen.extend(rec.offsets())
                cursor = _last_cursor(rec, cursor)
                session.close(1000)
                connected = False
            elif op == "resume" and not connected:
                last = _position(cursor)
                current = (await engine.history("c", hub.options("c"), limit=0)).position
                missed = range(last.offset + 1, current.offset + 1)
                alive = (
                    {o for o, t in published.items() if t + ttl > clock.now}
                    if last.epoch == current.epoch
                    else set()
                )
                recent = set(sorted(alive)[-size:]) if size else set()
                expect_reset = last.epoch != current.epoch or any(o not in recent for o in missed)
                rec, (session, result) = await subscribe(hub, cursor)
                connected = True
                if expect_reset:
                    assert rec.resets(), (last, current, missed, recent)
                    assert not result.recovered
                    assert rec.offsets() == []
                    cursor = result.cursor
                    seen.clear()  # a reset starts a new unbroken run
                else:
                    assert not rec.resets()
                    assert rec.offsets() == list(missed)
        if connected:
            seen.extend(rec.offsets())
        assert seen == sorted(set(seen)), "duplicate or out of order"
        if seen:
            assert seen == list(range(seen[0], seen[-1] + 1)), "gap"
    finally:
        await hub.close()


def _position(cursor: str) -> StreamPosition:
    from clarion.protocol.cursor import Cursor

    position = Cursor.decode(cursor).get("c")
    assert position is not None
    return position


def _last_cursor(rec: Recorder, cursor: str) -> str:
    pubs = [p for p in rec.items if isinstance(p, Publication)]
    if pubs:
        return encode_single("c", pubs[-1].epoch, pubs[-1].offset)
    return cursor


class SlowHistory(MemoryEngine):
    """A memory engine whose history reads yield to the loop, like a networked engine."""

    async def history(self, *args: Any, **kw: Any) -> Any:
        for _ in range(3):
            await asyncio.sleep(0)
        result = self.history_now(*args, **kw)
        for _ in range(3):
            await asyncio.sleep(0)
        return result


async def test_publications_during_history_read_are_neither_lost_nor_doubled() -> None:
    hub = Hub(Settings(), engine=SlowHistory())
    await hub.start()
    try:
        first = await hub.publish("c", 0)
        since = encode_single("c", first.epoch, first.offset)
        for n in range(1, 4):
            await hub.publish("c", n)

        async def publisher() -> None:
            for n in range(4, 30):
                await hub.publish("c", n)
                await asyncio.sleep(0)

        recorders = []

        async def subscriber() -> None:
            rec, _ = await subscribe(hub, since)
            recorders.append(rec)

        await asyncio.gather(publisher(), *(subscriber() for _ in range(5)))
        for rec in recorders:
            assert rec.offsets() == list(range(2, 31))
    finally:
        await hub.close()


async def test_subscribe_without_cursor_starts_from_now() -> None:
    hub = Hub(Settings())
    await hub.start()
    try:
        await hub.publish("c", "old")
        rec, (_, result) = await subscribe(hub, None)
        assert result.position.offset == 1 and result.recovered
        await hub.publish("c", "new")
        assert rec.offsets() == [2]
    finally:
        await hub.close()


async def test_cursor_from_the_future_resets() -> None:
    hub = Hub(Settings())
    await hub.start()
    try:
        pub = await hub.publish("c", 1)
        rec, (_, result) = await subscribe(hub, encode_single("c", pub.epoch, 99))
        assert rec.resets() == ["position"] and result.reset == "position"
    finally:
        await hub.close()


async def test_idempotency_key() -> None:
    hub = Hub(Settings())
    await hub.start()
    try:
        rec, _ = await subscribe(hub, None)
        heard: list[int] = []
        hub.publish_listeners.append(lambda pub: heard.append(pub.offset))
        a = await hub.publish("c", 1, idempotency_key="k")
        b = await hub.publish("c", 2, idempotency_key="k")
        c = await hub.publish("c", 3, idempotency_key="other")
        assert a.offset == b.offset == 1 and b.data == 1 and c.offset == 2
        assert b.repeated and not a.repeated
        assert rec.offsets() == [1, 2]
        assert heard == [1, 2]  # listeners (webhooks) hear a repeat once, not twice
    finally:
        await hub.close()


async def test_slow_engine_unsubscribe_during_history_read_leaves_nothing() -> None:
    hub = Hub(Settings(), engine=SlowHistory())
    await hub.start()
    try:
        rec = Recorder()
        session = hub.open_session(rec, hub.auth.anonymous())
        task = asyncio.create_task(session.subscribe("c", RAW, rec.push))
        await asyncio.sleep(0)
        session.close(1000)
        assert await task is None
        await asyncio.sleep(0.01)
        assert hub.local == {} and hub.sessions == {}
    finally:
        await hub.close()


async def test_a_closed_session_subscribes_to_nothing() -> None:
    """A subscription asked of a session the hub has closed (the next channel of a request
    whose session a shutdown or a revocation closed meanwhile) holds nothing: no channel, no
    count."""
    hub = Hub(Settings())
    await hub.start()
    try:
        rec = Recorder()
        session = hub.open_session(rec, hub.auth.anonymous())
        assert await session.subscribe("a", RAW, rec.push) is not None
        session.close(1000)
        assert await session.subscribe("b", RAW, rec.push) is None
        assert session.subscriptions == {} and hub.local == {}
        assert sum(hub.registry.subscriptions.values()) == 0
        assert sum(hub.registry.transports.values()) == 0
    finally:
        await hub.close()


class FailingHistory(MemoryEngine):
    """History reads fail, as when a networked engine is down while a gap is recovered."""

    fail = False

    async def history(self, *args: Any, **kw: Any) -> Any:
        if self.fail:
            raise OSError("engine down")
        return self.history_now(*args, **kw)


async def test_unrecoverable_gap_resets_once_then_goes_on_live() -> None:
    engine = FailingHistory()
    hub = Hub(Settings(), engine=engine)
    await hub.start()
    try:
        rec, _ = await subscribe(hub, None)
        first = await hub.publish("c", 1)
        assert rec.offsets() == [1]
        engine.fail = True
        # Offsets 2 and 3 never reach this node; 4, 5 and 6 do, while history cannot be read.
        for offset in (4, 5, 6):
            hub.on_publication(Publication("c", offset, first.epoch, offset, 0))
        deadline = time.monotonic() + 10  # the read back is tried a few times first
        while not rec.resets() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for _ in range(20):
            await asyncio.sleep(0)
        assert rec.resets() == ["lost"]  # told once, not once per later publication
        assert rec.offsets() == [1, 4, 5, 6]  # then live again, in order
        # The reset's cursor is where the subscriber goes on from: past the gap, before 4.
        cursor = next(item[2] for item in rec.items if isinstance(item, tuple))
        assert Cursor.decode(cursor).get("c") == StreamPosition(first.epoch, 3)
    finally:
        await hub.close()


class LaggingDelivery(MemoryEngine):
    """Publications reach the hub a few loop iterations after they are in history, as over a
    networked engine's pub/sub: a history read may return what this node has not delivered."""

    LAG = 8  # loop iterations

    async def start(self, sink: Any) -> None:
        self.hub = sink
        await super().start(self)

    async def history(self, *args: Any, **kw: Any) -> Any:
        await asyncio.sleep(0)
        return self.history_now(*args, **kw)

    def on_publication(self, pub: Publication, hops: int = LAG) -> None:
        if hops == 0:
            self.hub.on_publication(pub)
        else:  # call_soon is FIFO: publications keep their order
            asyncio.get_running_loop().call_soon(self.on_publication, pub, hops - 1)

    def on_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        self.hub.on_event(channel, kind, event)

    def on_control(self, command: str, payload: dict[str, Any]) -> None:
        self.hub.on_control(command, payload)


async def test_a_subscriber_reading_ahead_of_live_delivery_takes_nothing_from_the_others() -> None:
    settings = Settings(namespaces={"default": {"history_size": 1000}})
    hub = Hub(settings, engine=LaggingDelivery())
    await hub.start()
    try:
        live, _ = await subscribe(hub, None)
        first = await hub.publish("c", 0)
        since = encode_single("c", first.epoch, first.offset)
        resumed: list[Recorder] = []
        fresh: list[Recorder] = []

        async def publisher() -> None:
            for n in range(1, 200):
                await hub.publish("c", n)
                await asyncio.sleep(0)

        async def subscriber(delay: int, resume: bool) -> None:
            for _ in range(delay):
                await asyncio.sleep(0)
            rec, _ = await subscribe(hub, since if resume else None)
            (resumed if resume else fresh).append(rec)

        # Subscribers join while publications are in history but not yet delivered here.
        await asyncio.gather(publisher(), *(subscriber(d, d % 2 == 0) for d in range(3, 180, 7)))
        for _ in range(LaggingDelivery.LAG + 2):
            await asyncio.sleep(0)
        assert live.offsets() == list(range(1, 201))
        for rec in resumed:
            assert rec.offsets() == list(range(2, 201)) and rec.resets() == []
        for rec in fresh:
            offsets = rec.offsets()
            assert offsets and offsets == list(range(offsets[0], 201)) and rec.resets() == []
    finally:
        await hub.close()
