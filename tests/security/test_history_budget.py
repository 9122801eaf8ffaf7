"""Stored history is bounded in bytes: what a publication holds, and what all of them hold.

A client may publish compact JSON of many tiny containers (``[[],[],…]``): as Python objects it
takes twenty times its length, and history keeps it for ``history_ttl``. A stored publication
holds its JSON, not those objects; and the memory engine's history, across every channel a
publisher may name, holds at most ``limits.max_history_bytes``. Past it the oldest publications
go, and a reader resuming from before one is told (``trimmed``), on every transport, as after a
trim by ``history_size``. Over real sockets; the RSS of a real ``clarion serve`` process under
the attack's shape; the engine's own count and Python's allocations in process.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import clarion
from clarion.engines.memory import MemoryEngine
from clarion.protocol.cursor import Cursor, encode_single
from clarion.protocol.publication import StreamPosition

from ..conftest import RunningHub, clarion_server, timeout
from ..transports.streams import poll, sse

MiB = 1024 * 1024
# The attack's payload: compact JSON of 21,600 empty lists, some 64 KB.
LISTS = [[] for _ in range(21_600)]
LISTS_BYTES = len(json.dumps(LISTS, separators=(",", ":")))
QUIET = {"history_size": 1000, "history_ttl": 3600}


async def publish_all(running: RunningHub, items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Over the publish API, one after another: what each reply said."""
    return [await running.publish(channel, data) for channel, data in items]


def engine_of(running: RunningHub) -> MemoryEngine:
    engine = running.hub.engine
    assert isinstance(engine, MemoryEngine)
    return engine


# ---- what one stored publication holds -------------------------------------------------------

VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,  # the largest integer JSON carries here (orjson: 64 bits)
    1.5,
    -0.0,
    1e300,
    0.1 + 0.2,
    "",
    "héllo ☃ 𝄞 \u2028 \x00",
    [],
    {},
    [[], [[]], {"a": [1, {"b": None}]}],
    {"é": {"ключ": ["値", 2.25, False]}, "": 0},
    LISTS[:100],
]


async def test_stored_publications_read_back_what_was_published(
    hub_factory: Callable[..., Any],
) -> None:
    """Published over ``/ws`` and the API, read back from the engine, ``/api/history`` and a
    resume: equal, types included; and what history keeps of each is its JSON."""
    running: RunningHub = await hub_factory(namespaces={"quiet": QUIET})
    channel = "quiet:values"
    async with running.ws() as ws:
        for n, value in enumerate(VALUES):
            reply = await ws.call("publish", channel=channel, data=value)
            assert "ok" in reply, reply
            assert reply["ok"]["offset"] == n + 1
    for value in VALUES:
        await running.publish(channel, value)
    expected = VALUES + VALUES

    history, _ = await running.hub.history(channel, limit=1000)
    stored = history.publications
    assert all(pub.packed for pub in stored)  # bytes, not the objects they decode to
    got = [pub.data for pub in stored]
    assert got == expected
    assert [repr(v) for v in got] == [repr(v) for v in expected]  # -0.0, 2**64-1, 1e300 …
    async with running.http() as http:
        r = await http.get("/api/history", params={"channel": channel, "limit": "1000"})
    assert [p["data"] for p in r.json()["publications"]] == expected
    async with running.ws() as ws:
        since = encode_single(channel, history.position.epoch, 0)
        await ws.send({"id": 1, "op": "subscribe", "channel": channel, "since": since})
        replayed = []
        while len(replayed) < len(expected):
            msg = await ws.recv()
            if "offset" in msg:
                replayed.append(msg["data"])
    assert replayed == expected


async def test_a_stored_publication_of_tiny_containers_holds_its_bytes(
    hub_factory: Callable[..., Any],
) -> None:
    """Python's own count of what 40 publications of the attack's shape leave behind, with
    the default budget: once some 23 times their JSON, now its JSON and its frame."""
    running: RunningHub = await hub_factory(namespaces={"quiet": QUIET})
    await running.publish("quiet:warm", [[]])  # the first request's one-time allocations
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await publish_all(running, [(f"quiet:amp{n % 5}", LISTS) for n in range(40)])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    sent = 40 * LISTS_BYTES
    assert grown < 3 * sent, f"{grown / sent:.1f} times the JSON published"


# ---- what all of them hold -------------------------------------------------------------------


async def test_history_across_channels_stays_within_the_budget(
    hub_factory: Callable[..., Any],
) -> None:
    """A publisher spreading the attack's payload over 40 channel names: the engine holds at
    most the budget, the newest publications are the ones kept, and each channel's history
    says where it starts now."""
    running: RunningHub = await hub_factory(
        limits={"max_history_bytes": 2 * MiB}, namespaces={"quiet": QUIET}
    )
    from clarion.engines.memory import HELD_OVERHEAD

    engine = engine_of(running)
    replies = await publish_all(running, [(f"quiet:amp{n}", LISTS) for n in range(40)])
    assert engine.held_bytes <= 2 * MiB
    cost = LISTS_BYTES + HELD_OVERHEAD
    assert engine.held_bytes >= 2 * MiB - 2 * cost  # full, not emptied
    async with running.http() as http:
        kept = []
        for n, reply in enumerate(replies):
            r = await http.get("/api/history", params={"channel": f"quiet:amp{n}"})
            body = r.json()
            assert r.status_code == 200 and not body["more"]
            # The position stays where the channel is, with or without its publication.
            assert body["cursor"] == reply["cursor"]
            kept.append(len(body["publications"]))
    assert 0 < sum(kept) < 40
    assert kept == sorted(kept)  # the oldest went first: none kept before one gone


async def resumer_cursor(running: RunningHub) -> tuple[str, str]:
    """A channel a reader has seen the first publication of, then two more it has not; then
    enough elsewhere to push all three out of a 1 MiB budget. The reader's cursor, and the
    channel's latest one."""
    first = await running.publish("quiet:resumed", "one")
    await running.publish("quiet:resumed", "two")
    latest = await running.publish("quiet:resumed", "three")
    await publish_all(running, [(f"quiet:other{n}", LISTS) for n in range(24)])
    history, _ = await running.hub.history("quiet:resumed")
    assert history.publications == []  # gone, with the position kept
    assert history.position.offset == 3
    return first["cursor"], latest["cursor"]


async def budget_hub(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(
        limits={"max_history_bytes": MiB}, namespaces={"quiet": QUIET}
    )
    return running


def offset_of(cursor: str) -> int:
    position = Cursor.decode(cursor).get("quiet:resumed")
    assert position is not None
    return position.offset


async def test_a_resume_past_an_evicted_publication_is_reset_on_ws(
    hub_factory: Callable[..., Any],
) -> None:
    running = await budget_hub(hub_factory)
    since, latest = await resumer_cursor(running)
    async with running.ws() as ws:
        await ws.send({"id": 1, "op": "subscribe", "channel": "quiet:resumed", "since": since})
        reset = None
        while reset is None:
            msg = await ws.recv()
            assert "offset" not in msg, msg  # nothing after a silent gap
            if "id" in msg:
                assert "ok" in msg and msg["ok"]["recovered"] is False, msg
            reset = msg.get("reset")
    assert reset["channel"] == "quiet:resumed" and reset["reason"] == "trimmed"
    assert reset["cursor"] == latest


async def test_a_resume_past_an_evicted_publication_is_reset_on_sse(
    hub_factory: Callable[..., Any],
) -> None:
    running = await budget_hub(hub_factory)
    since, latest = await resumer_cursor(running)
    async with sse(running, "quiet:resumed", headers={"Last-Event-ID": since}) as stream:
        reset = await stream.next()
        assert reset.event == "reset", reset
        body = reset.json()
        assert body["channel"] == "quiet:resumed" and body["reason"] == "trimmed"
        assert offset_of(reset.id) == offset_of(latest) == 3
        await running.publish("quiet:resumed", "live")
        ((_, live),) = await stream.messages(1)
    assert live["data"] == "live" and live["offset"] == 4


async def test_a_resume_past_an_evicted_publication_is_reset_on_poll(
    hub_factory: Callable[..., Any],
) -> None:
    running = await budget_hub(hub_factory)
    since, latest = await resumer_cursor(running)
    async with running.http() as http:
        reply = await poll(http, "quiet:resumed", cursor=since, timeout=0)
    assert reply["reset"] == {
        "channel": "quiet:resumed",
        "reason": "trimmed",
        "cursor": reply["cursor"],
    }
    assert reply["publications"] == []
    assert offset_of(reply["cursor"]) == offset_of(latest)


async def test_history_pages_after_eviction_are_consistent(
    hub_factory: Callable[..., Any],
) -> None:
    """One channel over the budget: ``GET /api/history`` from the start answers what is left,
    in order, without a hole, and paging from an evicted position says it is gone."""
    running = await budget_hub(hub_factory)
    replies = await publish_all(
        running, [("quiet:deep", {"n": n, "pad": LISTS[:3000]}) for n in range(200)]
    )
    engine = engine_of(running)
    assert engine.held_bytes <= MiB
    async with running.http() as http:
        r = await http.get("/api/history", params={"channel": "quiet:deep", "limit": "1000"})
        body = r.json()
        ns = [p["data"]["n"] for p in body["publications"]]
        assert 0 < len(ns) < 200
        assert ns == list(range(200 - len(ns), 200))  # the newest, contiguous to the top
        assert body["cursor"] == replies[-1]["cursor"] and not body["more"]
        # From a cursor before what is left: a reset, not a page that silently skips the hole.
        r = await http.get(
            "/api/history",
            params={"channel": "quiet:deep", "since": replies[0]["cursor"], "limit": "1000"},
        )
    assert r.status_code == 200, r.text
    gone = r.json()
    assert gone["reset"] == {"channel": "quiet:deep", "reason": "trimmed"}
    assert [p["data"]["n"] for p in gone["publications"]] == ns  # what is left, said to be so


# ---- a real process under the attack's shape --------------------------------------------------


@clarion_server("the RSS of a real clarion serve process")
async def test_the_attack_shape_keeps_a_real_process_within_the_budget(
    hub_process: Callable[..., Any],
) -> None:
    """300 publications of 64 KB of ``[[],[],…]`` over 20 channel names (19 MB of JSON): they
    took some 420 MB as objects; with a 16 MiB budget the process grows by a few budgets."""
    proc = await hub_process(
        env={
            "CLARION_LIMITS__MAX_HISTORY_BYTES": str(16 * MiB),
            "CLARION_NAMESPACES__QUIET__HISTORY_SIZE": "1000",
            "CLARION_NAMESPACES__QUIET__HISTORY_TTL": "3600",
        }
    )
    body = json.dumps(LISTS, separators=(",", ":"))
    async with httpx.AsyncClient(base_url=proc.http_url, timeout=timeout(10)) as http:
        await http.post("/api/publish", json={"channel": "quiet:warm", "data": [[]]})
        before = proc.rss_bytes()
        for n in range(300):
            r = await http.post(
                "/api/publish",
                content=f'{{"channel":"quiet:amp{n % 20}","data":{body}}}',
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 200, r.text
        await asyncio.sleep(0.2)
        grown = proc.rss_bytes() - before
        r = await http.get("/api/history", params={"channel": "quiet:amp19", "limit": "1000"})
        kept = len(r.json()["publications"])
    assert grown < 64 * MiB, f"RSS grew {grown // MiB} MB"
    assert 0 < kept < 15  # the budget, not history_size, decided what stays


async def test_a_repeat_answered_after_eviction_keeps_its_position_and_its_data(
    hub_factory: Callable[..., Any],
) -> None:
    """An idempotency key outlives its publication's place in the budget: a repeat gets the
    first publication's offset, and the data of the publish it answers, not none."""
    running = await budget_hub(hub_factory)
    first = await running.hub.publish("quiet:keyed", {"n": 1}, idempotency_key="k-1")
    await publish_all(running, [(f"quiet:other{n}", LISTS) for n in range(24)])
    history, _ = await running.hub.history("quiet:keyed")
    assert history.publications == []  # evicted
    again = await running.hub.publish("quiet:keyed", {"n": 1}, idempotency_key="k-1")
    assert again.repeated and (again.offset, again.epoch) == (first.offset, first.epoch)
    assert again.data == {"n": 1}


async def test_a_format_first_made_for_a_resume_is_encoded_once_and_counted(
    hub_factory: Callable[..., Any],
) -> None:
    """Publications delivered over WebSocket, then read back by two SSE resumes: the first
    resume makes each one's SSE event and the publication keeps it (counted in the budget),
    the second finds it made; so a reconnect storm in another format encodes each publication
    once, not once per reader."""
    running = await budget_hub(hub_factory)
    engine = engine_of(running)
    async with running.ws() as ws:
        assert "ok" in await ws.subscribe("quiet:formats")
        replies = await publish_all(running, [("quiet:formats", {"n": n}) for n in range(5)])
        for _ in range(5):
            await ws.recv()
    since = Cursor.single("quiet:formats", StreamPosition(replies[0]["epoch"], 0)).encode()
    before = engine.held_bytes
    sizes = []
    for _ in range(2):
        async with sse(running, "quiet:formats", headers={"Last-Event-ID": since}) as stream:
            got = await stream.messages(5)
        assert [body["data"] for _, body in got] == [{"n": n} for n in range(5)]
        sizes.append(engine.held_bytes)
    assert sizes[0] > before  # the events kept, and counted
    assert sizes[1] == sizes[0]  # made once: the second resume found them


# ---- what channels and idempotency keys hold ------------------------------------------------

T = TypeVar("T")
# Namespaces with a history and without one: a channel published to once keeps its position
# either way (its offset, its epoch), for history_meta_ttl, a day by default.
LIVE = {"history_size": 0}


async def publish_batches(
    http: httpx.AsyncClient, items: list[dict[str, Any]], size: int = 500
) -> list[dict[str, Any]]:
    """Over ``POST /api/publish_batch``, ``size`` to a request (within the 128 KiB a body
    may take): each item's answer."""
    results: list[dict[str, Any]] = []
    for start in range(0, len(items), size):
        r = await http.post(
            "/api/publish_batch", json={"publications": items[start : start + size]}
        )
        assert r.status_code == 200, r.text
        results += r.json()["results"]
    assert all("offset" in result for result in results), results[:3]
    return results


async def hub_growth(work: Awaitable[T]) -> tuple[T, int]:
    """What ``work`` returns, and what it left allocated by the hub's own code (this
    process's client and its answers left out)."""
    only_hub = [tracemalloc.Filter(True, str(Path(clarion.__file__).parent / "*"))]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(only_hub)
        result = await work
        after = tracemalloc.take_snapshot().filter_traces(only_hub)
    finally:
        tracemalloc.stop()
    return result, sum(stat.size_diff for stat in after.compare_to(before, "filename"))


@pytest.mark.parametrize("namespace", ["quiet", "live"])
async def test_channels_published_to_once_stay_within_the_budget(
    hub_factory: Callable[..., Any], namespace: str
) -> None:
    """A publisher naming a new channel at every publication: each channel's position is
    counted, those of channels holding nothing else take at most half the budget, and the
    oldest goes first: a reader of it is told (an ``epoch`` reset), a recent one keeps its
    place. Python's own count of what 20,000 such channels leave behind stays within a few
    budgets (40 MB before they were counted)."""
    running: RunningHub = await hub_factory(
        limits={"max_history_bytes": MiB}, namespaces={"quiet": QUIET, "live": LIVE}
    )
    engine = engine_of(running)
    names = [f"{namespace}:once-{n:05d}" for n in range(20_000)]
    async with running.http() as http:
        await publish_batches(http, [{"channel": "quiet:warm", "data": 0}])
        items = [{"channel": name, "data": {"n": n}} for n, name in enumerate(names)]
        results, grown = await hub_growth(publish_batches(http, items))
        assert engine.held_bytes <= MiB and engine.bare_bytes <= MiB // 2
        # The budget, and the cursor encoder's prefixes of recent channels (at most 4,096).
        assert grown < 8 * MiB, f"{grown // 1024} KiB for 20,000 channels"
        # The newest channel keeps its position, the oldest has none left to keep.
        r = await http.get("/api/history", params={"channel": names[-1]})
        assert r.json()["cursor"] == results[-1]["cursor"]
    async with running.ws() as ws:
        await ws.send(
            {"id": 1, "op": "subscribe", "channel": names[0], "since": results[0]["cursor"]}
        )
        reset = None
        while reset is None:
            msg = await ws.recv()
            assert "offset" not in msg, msg
            reset = msg.get("reset")
    assert reset["channel"] == names[0] and reset["reason"] == "epoch"
    # Published to again, it starts anew, in the epoch its reader was just given.
    again = await running.publish(names[0], "again")
    assert again["offset"] == 1 and Cursor.decode(reset["cursor"]).get(names[0]) == (
        StreamPosition(again["epoch"], 0)
    )


async def test_idempotency_keys_outliving_their_publications_stay_within_the_budget(
    hub_factory: Callable[..., Any],
) -> None:
    """Every publication with a key of its own, 128 characters: once the budget lets a
    publication go, its key's stub is counted too, and goes in its turn. A recent key still
    answers a repeat with its offset; the oldest is forgotten, and its repeat is published
    anew (the budget, not the idempotency window, decided)."""
    running = await budget_hub(hub_factory)
    engine = engine_of(running)
    items = [
        {"channel": f"quiet:keyed{n % 30}", "data": {"n": n}, "id": f"{n:0128d}"}
        for n in range(20_000)
    ]
    async with running.http() as http:
        await publish_batches(http, [{"channel": "quiet:warm", "data": 0}])
        results, grown = await hub_growth(publish_batches(http, items))
        assert engine.held_bytes <= MiB
        assert grown < 4 * MiB, f"{grown // 1024} KiB for 20,000 keys"
        recent, oldest = await publish_batches(http, [items[-1], items[0]])
    assert (recent["offset"], recent["epoch"]) == (results[-1]["offset"], results[-1]["epoch"])
    assert oldest["offset"] > results[0]["offset"]  # published again: the key was let go


@clarion_server("the RSS of a real clarion serve process")
async def test_channels_named_once_keep_a_real_process_within_the_budget(
    hub_process: Callable[..., Any],
) -> None:
    """100,000 channels published to once each, through the API, with an 8 MiB budget: they
    took some 2 KB each kept for a day (200 MB); now the process grows by a few budgets."""
    proc = await hub_process(env={"CLARION_LIMITS__MAX_HISTORY_BYTES": str(8 * MiB)})
    async with httpx.AsyncClient(base_url=proc.http_url, timeout=timeout(30)) as http:
        await publish_batches(http, [{"channel": "warm", "data": 0}])
        before = proc.rss_bytes()
        for start in range(0, 100_000, 10_000):
            await publish_batches(
                http, [{"channel": f"named-{n}", "data": n} for n in range(start, start + 10_000)]
            )
        grown = proc.rss_bytes() - before
    assert grown < 48 * MiB, f"RSS grew {grown // MiB} MB"
