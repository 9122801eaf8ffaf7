"""The engine contract: every engine passes these, with the memory engine as the reference."""

from __future__ import annotations

import asyncio

import pytest

from clarion.engines.base import History, PresenceEntry, PresenceStats
from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import NamespaceOptions

from .helpers import Subject, eventually

pytestmark = pytest.mark.timeout(30)

OPTS = NamespaceOptions()


async def publish_n(subject: Subject, channel: str, n: int, opts: NamespaceOptions = OPTS) -> None:
    for i in range(n):
        await subject.engine.publish(channel, {"n": i}, opts)


# ---- publish ------------------------------------------------------------------------------


async def test_publish_assigns_consecutive_offsets_in_one_epoch(engine: Subject) -> None:
    pubs = [await engine.engine.publish("c", {"n": i}, OPTS) for i in range(5)]
    assert [p.offset for p in pubs] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in pubs}) == 1
    assert [p.data for p in pubs] == [{"n": i} for i in range(5)]
    assert all(p.channel == "c" and p.time > 0 for p in pubs)
    other = await engine.engine.publish("d", "x", OPTS)
    assert other.offset == 1  # offsets are per channel


async def test_publication_keeps_info_and_id(engine: Subject) -> None:
    pub = await engine.engine.publish(
        "c", [1, "two", None], OPTS, idempotency_key="k1", info={"user": "u"}
    )
    history = await engine.engine.history("c", OPTS)
    assert history.publications == [pub]
    stored = history.publications[0]
    assert (stored.data, stored.info, stored.id) == ([1, "two", None], {"user": "u"}, "k1")
    assert stored.time == pub.time


async def test_publication_keeps_its_attributes(engine: Subject) -> None:
    # Delivered to subscribed nodes and stored in history alike, fields of the publication.
    await engine.engine.subscribe("c")
    attrs = {"headers": {"x-trace": "a:b\nc", "é": ""}, "encoding": "base64",
             "content_type": "application/octet-stream"}  # fmt: skip
    pub = await engine.engine.publish("c", "AAE=", OPTS, attrs=attrs)
    plain = await engine.engine.publish("c", {"n": 1}, OPTS)
    history = await engine.engine.history("c", OPTS)
    assert history.publications == [pub, plain]
    assert history.publications[0].attrs == attrs and history.publications[1].attrs is None
    assert pub.to_dict()["headers"] == attrs["headers"] and "headers" not in plain.to_dict()
    await eventually(lambda: len(engine.sink.offsets("c")) == 2)
    assert [p.attrs for p in engine.sink.publications] == [attrs, None]


# ---- history ------------------------------------------------------------------------------


async def test_history_since_and_limit(engine: Subject) -> None:
    await publish_n(engine, "c", 5)
    everything = await engine.engine.history("c", OPTS)
    epoch = everything.position.epoch
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    assert everything.position == StreamPosition(epoch, 5)
    assert everything.earliest == 1

    since2 = await engine.engine.history("c", OPTS, since=StreamPosition(epoch, 2))
    assert [p.offset for p in since2.publications] == [3, 4, 5]
    limited = await engine.engine.history("c", OPTS, since=StreamPosition(epoch, 1), limit=2)
    assert [p.offset for p in limited.publications] == [2, 3]
    assert limited.position == StreamPosition(epoch, 5)
    first_two = await engine.engine.history("c", OPTS, limit=2)
    assert [p.offset for p in first_two.publications] == [1, 2]
    none = await engine.engine.history("c", OPTS, limit=0)
    assert none.publications == [] and none.position == StreamPosition(epoch, 5)
    at_top = await engine.engine.history("c", OPTS, since=StreamPosition(epoch, 5))
    assert at_top.publications == []
    beyond = await engine.engine.history("c", OPTS, since=StreamPosition(epoch, 9))
    assert beyond.publications == []
    foreign = await engine.engine.history("c", OPTS, since=StreamPosition("not-" + epoch, 2))
    assert foreign.publications == []  # nothing of another epoch is trusted


async def test_history_reverse_pages_back(engine: Subject) -> None:
    await publish_n(engine, "c", 5)
    newest = await engine.engine.history("c", OPTS, reverse=True)
    epoch = newest.position.epoch
    assert [p.offset for p in newest.publications] == [5, 4, 3, 2, 1]
    assert newest.position == StreamPosition(epoch, 5) and newest.earliest == 1
    page = await engine.engine.history("c", OPTS, reverse=True, limit=2)
    assert [p.offset for p in page.publications] == [5, 4]
    older = await engine.engine.history(
        "c", OPTS, reverse=True, limit=2, since=StreamPosition(epoch, 4)
    )
    assert [p.offset for p in older.publications] == [3, 2]  # strictly before the cursor
    last = await engine.engine.history("c", OPTS, reverse=True, since=StreamPosition(epoch, 2))
    assert [p.offset for p in last.publications] == [1]
    done = await engine.engine.history("c", OPTS, reverse=True, since=StreamPosition(epoch, 1))
    assert done.publications == []
    beyond = await engine.engine.history("c", OPTS, reverse=True, since=StreamPosition(epoch, 9))
    assert [p.offset for p in beyond.publications] == [5, 4, 3, 2, 1]
    foreign = await engine.engine.history(
        "c", OPTS, reverse=True, since=StreamPosition("not-" + epoch, 3)
    )
    assert foreign.publications == []
    none = await engine.engine.history("c", OPTS, reverse=True, limit=0)
    assert none.publications == [] and none.position.offset == 5
    empty = await engine.engine.history("fresh-reverse", OPTS, reverse=True, limit=1)
    assert empty.publications == [] and empty.position.offset == 0


async def test_history_reverse_stops_at_what_is_held(engine: Subject) -> None:
    opts = NamespaceOptions(history_size=3)
    await publish_n(engine, "c", 6, opts)
    newest = await engine.engine.history("c", opts, reverse=True, limit=10)
    assert [p.offset for p in newest.publications] == [6, 5, 4]
    assert newest.earliest == 4
    epoch = newest.position.epoch
    older = await engine.engine.history("c", opts, reverse=True, since=StreamPosition(epoch, 4))
    assert older.publications == []


async def test_history_of_a_new_channel(engine: Subject) -> None:
    first = await engine.engine.history("fresh", OPTS)
    assert first.publications == []
    assert first.position.offset == 0 and first.earliest == 1
    again = await engine.engine.history("fresh", OPTS)
    assert again.position == first.position  # the epoch is stable before any publication
    pub = await engine.engine.publish("fresh", 1, OPTS)
    assert pub.position == StreamPosition(first.position.epoch, 1)


async def test_history_trimmed_by_size(engine: Subject) -> None:
    opts = NamespaceOptions(history_size=3)
    await publish_n(engine, "c", 5, opts)
    history = await engine.engine.history("c", opts)
    assert [p.offset for p in history.publications] == [3, 4, 5]
    assert history.earliest == 3 and history.position.offset == 5
    epoch = history.position.epoch
    assert history.covers(StreamPosition(epoch, 2))  # the next one, 3, is held
    assert not history.covers(StreamPosition(epoch, 1))  # 2 is gone
    assert history.covers(StreamPosition(epoch, 5))
    assert not history.covers(StreamPosition(epoch, 6))  # never reached
    assert not history.covers(StreamPosition("other", 4))
    since1 = await engine.engine.history("c", opts, since=StreamPosition(epoch, 1))
    assert [p.offset for p in since1.publications] == [3, 4, 5]
    assert not since1.covers(StreamPosition(epoch, 1))


async def test_history_trimmed_by_ttl(engine: Subject) -> None:
    opts = NamespaceOptions(history_ttl=0.4)
    await publish_n(engine, "c", 3, opts)
    await asyncio.sleep(0.6)
    expired = await engine.engine.history("c", opts)
    assert expired.publications == []
    assert expired.position.offset == 3 and expired.earliest == 4
    assert expired.covers(StreamPosition(expired.position.epoch, 3))
    assert not expired.covers(StreamPosition(expired.position.epoch, 2))
    await publish_n(engine, "c", 2, opts)
    history = await engine.engine.history("c", opts)
    assert [p.offset for p in history.publications] == [4, 5]
    assert history.position == StreamPosition(expired.position.epoch, 5)
    assert history.earliest == 4


async def test_history_ttl_drops_only_old_entries(engine: Subject) -> None:
    opts = NamespaceOptions(history_ttl=0.8)
    await publish_n(engine, "c", 4, opts)
    await asyncio.sleep(0.5)
    await publish_n(engine, "c", 3, opts)
    await asyncio.sleep(0.5)  # the first four are past the TTL, the last three are not
    history = await engine.engine.history("c", opts)
    assert [p.offset for p in history.publications] == [5, 6, 7]
    assert history.earliest == 5


async def test_history_size_zero_keeps_positions_only(engine: Subject) -> None:
    opts = NamespaceOptions(history_size=0)
    await publish_n(engine, "c", 3, opts)
    history = await engine.engine.history("c", opts)
    assert history.publications == []
    assert history.position.offset == 3 and history.earliest == 4


async def test_standing_tells_the_positions_with_nothing_to_read(engine: Subject) -> None:
    """What a forward read from each position would say: nothing, and no reset."""
    e = engine.engine
    await publish_n(engine, "c", 2)
    top = (await e.history("c", OPTS, limit=0)).position
    unwritten = (await e.history("quiet", OPTS, limit=0)).position  # a read gave it one
    behind = StreamPosition(top.epoch, top.offset - 1)
    ahead = StreamPosition(top.epoch, top.offset + 1)
    other = StreamPosition("another", top.offset)
    assert await e.standing({}) == set()
    assert await e.standing({"c": top, "quiet": unwritten}) == {"c", "quiet"}
    for since in (behind, ahead, other):
        assert await e.standing({"c": since}) == set()
        history = await e.history("c", OPTS, since=since, limit=1)
        assert history.publications or not history.covers(since)
    assert await e.standing({"never": StreamPosition(top.epoch, 0)}) == set()
    await e.publish("c", {"n": 2}, OPTS)
    assert await e.standing({"c": top, "quiet": unwritten}) == {"quiet"}


def test_covers_is_exact() -> None:
    h = History([], StreamPosition("e", 10), 6)
    assert [n for n in range(0, 13) if h.covers(StreamPosition("e", n))] == [5, 6, 7, 8, 9, 10]
    assert not h.covers(StreamPosition("f", 7))
    empty = History([], StreamPosition("e", 0), 1)
    assert empty.covers(StreamPosition("e", 0)) and not empty.covers(StreamPosition("e", 1))


# ---- idempotency --------------------------------------------------------------------------


async def test_idempotency_within_the_window(engine: Subject) -> None:
    first = await engine.engine.publish("c", "one", OPTS, idempotency_key="k")
    again = await engine.engine.publish("c", "two", OPTS, idempotency_key="k")
    assert again == first  # the earlier publication, data and time included
    assert again.data == "one"
    assert again.repeated and not first.repeated  # and the engine says nothing new was made
    other_key = await engine.engine.publish("c", "three", OPTS, idempotency_key="k2")
    assert other_key.offset == first.offset + 1
    other_channel = await engine.engine.publish("d", "one", OPTS, idempotency_key="k")
    assert other_channel.channel == "d" and other_channel.offset == 1
    history = await engine.engine.history("c", OPTS)
    assert [p.data for p in history.publications] == ["one", "three"]


async def test_idempotency_keys_live_in_separate_scopes(engine: Subject) -> None:
    scopes = [None, "user:a", "user:b", "user:a:b", "user:a:b:c"]
    firsts = [
        await engine.engine.publish("c", n, OPTS, idempotency_key="k", idempotency_scope=scope)
        for n, scope in enumerate(scopes)
    ]
    assert [p.offset for p in firsts] == [1, 2, 3, 4, 5]
    # "user:a" + "b:k" and "user:a:b" + "k" must not meet, however the engine spells keys.
    tricky = await engine.engine.publish(
        "c", "x", OPTS, idempotency_key="b:k", idempotency_scope="user:a"
    )
    assert tricky.offset == 6 and not tricky.repeated
    for scope, first in zip(scopes, firsts, strict=True):
        again = await engine.engine.publish(
            "c", "again", OPTS, idempotency_key="k", idempotency_scope=scope
        )
        assert again.repeated and again.offset == first.offset and again.data == first.data


async def test_idempotency_after_the_window(engine: Subject) -> None:
    opts = NamespaceOptions(idempotency_window=0.3)
    first = await engine.engine.publish("c", "one", opts, idempotency_key="k")
    await asyncio.sleep(0.5)
    later = await engine.engine.publish("c", "two", opts, idempotency_key="k")
    assert later.offset == first.offset + 1 and later.data == "two" and not later.repeated


async def test_idempotency_window_zero_never_deduplicates(engine: Subject) -> None:
    opts = NamespaceOptions(idempotency_window=0)
    a = await engine.engine.publish("c", 1, opts, idempotency_key="k")
    b = await engine.engine.publish("c", 2, opts, idempotency_key="k")
    assert (a.offset, b.offset) == (1, 2)


# ---- presence -----------------------------------------------------------------------------


async def test_presence_add_remove_list(engine: Subject) -> None:
    e = engine.engine
    assert await e.presence("c") == []
    alice = PresenceEntry("c1", "alice", {"name": "Alice"}, "ws")
    bob = PresenceEntry("c2", "bob", None, "sse", "2001:db8::7")  # the address is kept
    anon = PresenceEntry("c3", None)
    for entry in (alice, bob, anon):
        await e.presence_add("c", entry)
    await e.presence_add("other", PresenceEntry("c9", "zed"))
    listed = await e.presence("c")
    assert sorted(listed, key=lambda p: p.client) == [alice, bob, anon]
    await e.presence_add("c", PresenceEntry("c1", "alice", {"name": "A."}, "ws"))  # update
    await e.presence_remove("c", "c2")
    await e.presence_remove("c", "nobody")
    listed = await e.presence("c")
    assert sorted(p.client for p in listed) == ["c1", "c3"]
    assert next(p for p in listed if p.client == "c1").info == {"name": "A."}
    await e.presence_remove("c", "c1")
    await e.presence_remove("c", "c3")
    assert await e.presence("c") == []
    assert [p.client for p in await e.presence("other")] == ["c9"]


async def test_presence_read_to_a_limit(engine: Subject) -> None:
    e = engine.engine
    for n in range(7):
        await e.presence_add("c", PresenceEntry(f"c{n}", f"u{n}"))
    everyone = await e.presence("c")
    assert len(everyone) == 7
    some = await e.presence("c", 3)
    assert len(some) == 3 and set(some) <= set(everyone)
    assert await e.presence("c", 7) == everyone == await e.presence("c", 50)
    assert await e.presence("c", 0) == []
    assert await e.presence("empty", 3) == []


async def test_presence_stats_count_clients_and_distinct_users(engine: Subject) -> None:
    e = engine.engine
    assert await e.presence_stats("c") == PresenceStats(0, 0)
    entries = [
        PresenceEntry("a1", "alice"),
        PresenceEntry("a2", "alice", {"tab": 2}),
        PresenceEntry("b1", "bob"),
        PresenceEntry("x1", None),
    ]
    for entry in entries:
        await e.presence_add("c", entry)
    await e.presence_add("other", PresenceEntry("z1", "zed"))
    assert await e.presence_stats("c") == PresenceStats(4, 2)
    await e.presence_add("c", PresenceEntry("a1", "alice", {"tab": 1}))  # a refresh counts once
    assert await e.presence_stats("c") == PresenceStats(4, 2)
    await e.presence_remove("c", "a1")
    assert await e.presence_stats("c") == PresenceStats(3, 2)  # alice keeps a client
    await e.presence_remove("c", "a2")
    assert await e.presence_stats("c") == PresenceStats(2, 1)
    await e.presence_remove("c", "x1")
    await e.presence_remove("c", "x1")  # twice: nothing more
    assert await e.presence_stats("c") == PresenceStats(1, 1)
    await e.presence_remove("c", "b1")
    assert await e.presence_stats("c") == PresenceStats(0, 0)
    assert await e.presence_stats("other") == PresenceStats(1, 1)


# ---- delivery -----------------------------------------------------------------------------


async def test_delivery_to_the_sink_after_subscribe(engine: Subject) -> None:
    await engine.engine.subscribe("c")
    pubs = [await engine.engine.publish("c", i, OPTS) for i in range(3)]
    await eventually(lambda: len(engine.sink.offsets("c")) == 3)
    assert engine.sink.publications == pubs
    await engine.engine.subscribe("d")
    await engine.engine.publish("d", "x", OPTS)
    await eventually(lambda: engine.sink.offsets("d") == [1])


async def test_no_delivery_after_unsubscribe(engine: Subject) -> None:
    await engine.engine.subscribe("c")
    await engine.engine.publish("c", 1, OPTS)
    await eventually(lambda: engine.sink.offsets("c") == [1])
    await engine.engine.unsubscribe("c")
    await engine.engine.subscribe("marker")
    await engine.engine.publish("c", 2, OPTS)
    await engine.engine.publish("marker", 0, OPTS)
    await eventually(lambda: engine.sink.offsets("marker") == [1])
    if engine.kind == "memory":
        # One process: the memory engine hands over everything and the hub, which knows its
        # local subscribers, drops channels without any.
        assert engine.sink.offsets("c") == [1, 2]
    else:
        assert engine.sink.offsets("c") == [1]


async def test_ephemeral_publications_reach_the_sink_and_are_never_stored(
    engine: Subject,
) -> None:
    await engine.engine.subscribe("c")
    first = await engine.engine.publish("c", "stored", OPTS)
    signals = [
        Publication.signal("c", {"x": i}, 1000 + i, {"user": "u"}, None, f"k{i % 2}")
        for i in range(3)
    ]
    for signal in signals:
        await engine.engine.publish_ephemeral(signal)
    last = await engine.engine.publish("c", "stored again", OPTS)
    await eventually(lambda: len(engine.sink.signals) == 3 and len(engine.sink.publications) == 2)
    assert [(p.data, p.key, p.info, p.time) for p in engine.sink.signals] == [
        ({"x": i}, f"k{i % 2}", {"user": "u"}, 1000 + i) for i in range(3)
    ]
    assert all(p.ephemeral and p.channel == "c" and p.offset == 0 for p in engine.sink.signals)
    # No offset taken, nothing in history, none among the stored publications delivered.
    assert (first.offset, last.offset) == (1, 2)
    history = await engine.engine.history("c", OPTS)
    assert [p.data for p in history.publications] == ["stored", "stored again"]
    assert history.position.offset == 2
    assert not any(p.ephemeral for p in engine.sink.publications)
    # A channel this node is not subscribed to: not delivered on Redis (pub/sub only).
    await engine.engine.publish_ephemeral(Publication.signal("elsewhere", 1, 0))
    await engine.engine.subscribe("marker")
    await engine.engine.publish_ephemeral(Publication.signal("marker", 1, 0))
    await eventually(lambda: any(p.channel == "marker" for p in engine.sink.signals))
    held = await engine.engine.history("elsewhere", OPTS)
    assert held.publications == [] and held.position.offset == 0


async def test_events_and_control_reach_the_sink(engine: Subject) -> None:
    await engine.engine.subscribe("c")
    await engine.engine.broadcast_event("c", "join", {"channel": "c", "client": "x"})
    await engine.engine.broadcast_control("disconnect", {"user": "u"})
    await eventually(lambda: bool(engine.sink.events and engine.sink.controls))
    assert engine.sink.events == [("c", "join", {"channel": "c", "client": "x"})]
    assert engine.sink.controls == [("disconnect", {"user": "u"})]


# ---- losing the meta ----------------------------------------------------------------------


async def test_epoch_changes_after_the_meta_is_lost(engine: Subject) -> None:
    opts = OPTS
    await publish_n(engine, "c", 3, opts)
    before = (await engine.engine.history("c", opts)).position
    await engine.lose_meta("c")
    after = await engine.engine.history("c", opts, since=before)
    assert after.position.epoch != before.epoch
    assert after.publications == []
    assert not after.covers(before)  # a resuming reader gets a reset, not a silent gap
    pub = await engine.engine.publish("c", "new", opts)
    assert pub.position == StreamPosition(after.position.epoch, 1)


# ---- revocations ----------------------------------------------------------------------------


async def test_revocations_keep_the_later_until_and_drop_lapsed_ones(engine: Subject) -> None:
    import time

    now = time.time()
    await engine.engine.revoke("user", "alice", now + 60)
    await engine.engine.revoke("user", "alice", now + 30)  # earlier: the later one holds
    await engine.engine.revoke("jti", "t-1", now + 1)
    await engine.engine.revoke("user", "gone", now - 1)  # already lapsed: never listed
    _, entries = await engine.engine.revocations()
    listed = {(kind, key): until for kind, key, until in entries}
    assert listed == {("user", "alice"): now + 60, ("jti", "t-1"): now + 1}
    await asyncio.sleep(1.1)
    assert [key for _, key, _ in (await engine.engine.revocations())[1]] == ["alice"]


async def test_a_read_from_the_last_mark_returns_what_changed_since(engine: Subject) -> None:
    # A node reads the revocations every few seconds; there may be one per logout of a day.
    import time

    now = time.time()
    revocations = engine.engine.revocations
    mark, entries = await revocations()
    assert entries == [] and (await revocations(mark))[1] == []
    await engine.engine.revoke("user", "alice", now + 60)
    await engine.engine.revoke("jti", "t-1", now + 60)
    mark, entries = await revocations(mark)
    assert sorted(entries) == [("jti", "t-1", now + 60), ("user", "alice", now + 60)]
    mark, entries = await revocations(mark)
    assert entries == []  # nothing new: nothing read
    await engine.engine.revoke("user", "alice", now + 30)  # earlier: no change to take in
    await engine.engine.revoke("user", "alice", now + 120)  # extended
    await engine.engine.revoke("user", "bob", now + 60)
    short = time.time() + 1  # from now, however long the lines above took
    await engine.engine.revoke("jti", "t-2", short)
    mark, entries = await revocations(mark)
    assert sorted(entries) == [
        ("jti", "t-2", short),
        ("user", "alice", now + 120),
        ("user", "bob", now + 60),
    ]
    # No mark, or one of another set of revocations (another process; a Redis that lost them
    # and started a new set): every one in force.
    for other in (None, "elsewhere:1", "junk"):
        assert len((await revocations(other))[1]) == 4
    await asyncio.sleep(short - time.time() + 0.1)  # t-2 lapses: gone from every read
    assert sorted(key for _, key, _ in (await revocations())[1]) == ["alice", "bob", "t-1"]
    assert (await revocations(mark))[1] == []
