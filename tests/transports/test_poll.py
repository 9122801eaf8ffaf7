"""GET /poll over real HTTP: plain and long polling, batching, reset, several channels, scale."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from clarion import Settings
from clarion.protocol.codes import CloseCode
from clarion.protocol.cursor import Cursor
from clarion.protocol.publication import StreamPosition

from ..conftest import RunningHub, heavy, timeout, until
from .streams import Baseline, poll, raw_get


def waiting(hub: RunningHub, channel: str) -> int:
    """Long polls currently waiting on ``channel`` on this node."""
    local = hub.hub.local.get(channel)
    return 0 if local is None else local.live_count


async def test_without_cursor_starts_from_now(hub: RunningHub) -> None:
    await hub.publish("chat:lobby", "old")
    last = await hub.publish("chat:lobby", "older")
    async with hub.http() as client:
        reply = await poll(client, "chat:lobby", timeout=0)
    assert reply == {"publications": [], "cursor": last["cursor"]}


async def test_returns_at_once_when_newer_publications_exist(hub: RunningHub) -> None:
    first = await hub.publish("chat:lobby", "a")
    await hub.publish("chat:lobby", "b")
    third = await hub.publish("chat:lobby", "c")
    async with hub.http() as client:
        started = time.monotonic()
        reply = await poll(client, "chat:lobby", cursor=first["cursor"], timeout=30)
        assert time.monotonic() - started < timeout(1)
    assert [p["data"] for p in reply["publications"]] == ["b", "c"]
    assert reply["cursor"] == reply["publications"][-1]["cursor"] == third["cursor"]
    assert "reset" not in reply


async def test_long_poll_wakes_on_publish(hub: RunningHub) -> None:
    async with hub.http() as client:
        cursor = (await poll(client, "chat:lobby", timeout=0))["cursor"]
        request = asyncio.create_task(
            poll(client, "chat:lobby", cursor=cursor, timeout=30), name="long-poll"
        )
        await until(lambda: waiting(hub, "chat:lobby") == 1)
        published_at = time.monotonic()
        await hub.hub.publish("chat:lobby", "wake up")
        reply = await asyncio.wait_for(request, timeout(5))
        latency = time.monotonic() - published_at
    print(f"long poll answered {latency * 1000:.1f} ms after the publish")
    assert [p["data"] for p in reply["publications"]] == ["wake up"]
    assert latency < timeout(0.5)


async def test_timeout_answers_with_an_unchanged_cursor(hub: RunningHub) -> None:
    async with hub.http() as client:
        cursor = (await poll(client, "chat:lobby", timeout=0))["cursor"]
        started = time.monotonic()
        reply = await poll(client, "chat:lobby", cursor=cursor, timeout="0.3")
        elapsed = time.monotonic() - started
    assert reply == {"publications": [], "cursor": cursor}
    assert 0.3 <= elapsed < timeout(2)


async def test_no_publication_falls_between_the_read_and_the_wait(hub: RunningHub) -> None:
    """Publish at the moment each poll starts: every poll must see its publication."""
    async with hub.http() as client:
        cursor = (await poll(client, "chat:race", timeout=0))["cursor"]
        for n in range(40):
            request = asyncio.create_task(poll(client, "chat:race", cursor=cursor, timeout=5))
            for _ in range(n % 4):
                await asyncio.sleep(0)
            await hub.hub.publish("chat:race", n)
            reply = await asyncio.wait_for(request, timeout(5))
            assert [p["data"] for p in reply["publications"]] == [n]
            cursor = reply["cursor"]


async def test_batches_are_bounded_and_continue_from_their_cursor(hub_factory: Any) -> None:
    hub = await hub_factory(limits={"max_history_batch": 5})
    start = (await hub.publish("chat:lobby", "start"))["cursor"]
    for n in range(12):
        await hub.publish("chat:lobby", n)
    async with hub.http() as client:
        seen: list[int] = []
        cursor = start
        for expected in (5, 5, 2):
            reply = await poll(client, "chat:lobby", cursor=cursor, timeout=0)
            assert len(reply["publications"]) == expected
            seen += [p["data"] for p in reply["publications"]]
            cursor = reply["cursor"]
    assert seen == list(range(12))


async def test_batches_are_bounded_in_bytes(hub_factory: Any) -> None:
    hub = await hub_factory(limits={"send_queue_bytes": 4096})
    start = (await hub.publish("chat:lobby", "start"))["cursor"]
    for n in range(10):
        await hub.publish("chat:lobby", {"n": n, "pad": "x" * 1000})
    async with hub.http() as client:
        first = await poll(client, "chat:lobby", cursor=start, timeout=0)
        second = await poll(client, "chat:lobby", cursor=first["cursor"], timeout=0)
    assert 1 <= len(first["publications"]) <= 4
    assert second["publications"][0]["data"]["n"] == len(first["publications"])


async def test_reset_after_trimming_then_live(hub_factory: Any) -> None:
    hub = await hub_factory(Settings(namespaces={"default": {"history_size": 3}}))
    cursor = (await hub.publish("news", 0))["cursor"]
    for n in range(4):  # one more than history holds
        await hub.publish("news", n + 1)
    async with hub.http() as client:
        reply = await poll(client, "news", cursor=cursor, timeout=10)
        assert reply["reset"] == {
            "channel": "news",
            "reason": "trimmed",
            "cursor": reply["cursor"],  # one channel: its own cursor is the reply's
        }
        assert reply["publications"] == []
        position = Cursor.decode(reply["cursor"]).get("news")
        assert position is not None and position.offset == 5  # the current position
        request = asyncio.create_task(poll(client, "news", cursor=reply["cursor"], timeout=10))
        await until(lambda: waiting(hub, "news") == 1)
        await hub.publish("news", "live")
        live = await asyncio.wait_for(request, timeout(5))
    assert [p["data"] for p in live["publications"]] == ["live"] and "reset" not in live


async def test_foreign_epoch_cursor_gives_a_reset(hub: RunningHub) -> None:
    last = await hub.publish("chat:lobby", "x")
    foreign = Cursor.single("chat:lobby", StreamPosition("0123456789ab", 1)).encode()
    async with hub.http() as client:
        reply = await poll(client, "chat:lobby", cursor=foreign, timeout=0)
    assert reply["reset"] == {"channel": "chat:lobby", "reason": "epoch", "cursor": last["cursor"]}
    assert reply["cursor"] == last["cursor"]


async def test_several_channels_share_one_cursor(hub: RunningHub) -> None:
    async with hub.http() as client:
        cursor = (await poll(client, "chat:a", "chat:b", timeout=0))["cursor"]
        assert len(Cursor.decode(cursor)) == 2
        await hub.publish("chat:a", "a1")
        await hub.publish("chat:b", "b1")
        reply = await poll(client, "chat:a", "chat:b", cursor=cursor, timeout=5)
        assert sorted(p["data"] for p in reply["publications"]) == ["a1", "b1"]
        request = asyncio.create_task(
            poll(client, "chat:a", "chat:b", cursor=reply["cursor"], timeout=30)
        )
        await until(lambda: waiting(hub, "chat:b") == 1)
        await hub.publish("chat:b", "b2")
        woken = await asyncio.wait_for(request, timeout(5))
        assert [p["data"] for p in woken["publications"]] == ["b2"]
        await hub.publish("chat:a", "a2")
        last = await poll(client, "chat:a", "chat:b", cursor=woken["cursor"], timeout=0)
    assert [p["data"] for p in last["publications"]] == ["a2"]


async def test_several_cursors_merge_and_the_later_one_wins(hub: RunningHub) -> None:
    async with hub.http() as client:
        both = (await poll(client, "chat:a", "chat:b", timeout=0))["cursor"]
        a1 = (await hub.publish("chat:a", "a1"))["cursor"]
        await hub.publish("chat:a", "a2")
        await hub.publish("chat:b", "b1")
        c1 = (await hub.publish("chat:c", "c1"))["cursor"]
        await hub.publish("chat:c", "c2")
        # chat:a from its own cursor (after a1), chat:b from the stream's, chat:c from its own.
        reply = await poll(client, "chat:a", "chat:b", "chat:c", cursor=[both, a1, c1], timeout=0)
        assert sorted(p["data"] for p in reply["publications"]) == ["a2", "b1", "c2"]
        # Every cursor given must hold a channel of the request.
        refused = await poll(client, "chat:a", cursor=[both, c1], timeout=0, expect=400)
        assert refused["error"]["code"] == "bad_cursor"
        assert refused["error"]["cursor"] == c1  # which one, for a client that sent several
        # As many cursors as channels, and the stream's, are not too many parameters.
        channels = ["chat:a", *(f"chat:n{n}" for n in range(127))]
        cursors = [(await hub.publish(c, 0))["cursor"] for c in channels]
        reply = await poll(client, *channels, cursor=[both, *cursors], timeout=0)
        assert reply["publications"] == []


async def test_latest_may_name_the_channels_that_want_it(hub: RunningHub) -> None:
    for channel in ("chat:a", "chat:b"):
        await hub.publish(channel, channel + " stored")
    async with hub.http() as client:
        named = await poll(client, "chat:a", "chat:b", latest="chat:b", timeout=0)
        every = await poll(client, "chat:a", "chat:b", latest="1", timeout=0)
    assert [p["data"] for p in named["publications"]] == ["chat:b stored"]
    assert sorted(p["data"] for p in every["publications"]) == ["chat:a stored", "chat:b stored"]


async def test_one_reset_per_reply_the_other_comes_next(hub_factory: Any) -> None:
    hub = await hub_factory(namespaces={"default": {"history_size": 1}})
    start = {"a": (await hub.publish("a", 0))["cursor"], "b": (await hub.publish("b", 0))["cursor"]}
    cursor = Cursor.decode(start["a"])
    cursor = cursor.with_position("b", Cursor.decode(start["b"]).get("b"))  # type: ignore[arg-type]
    for channel in ("a", "b"):
        for n in range(3):
            await hub.publish(channel, n + 1)
    async with hub.http() as client:
        first = await poll(client, "a", "b", cursor=cursor.encode(), timeout=0)
        second = await poll(client, "a", "b", cursor=first["cursor"], timeout=0)
        third = await poll(client, "a", "b", cursor=second["cursor"], timeout=0)
    assert first["reset"]["channel"] == "a" and second["reset"]["channel"] == "b"
    # Each reset's cursor is its channel's own, where the combined one moved that channel.
    for reply in (first, second):
        channel = reply["reset"]["channel"]
        own = Cursor.decode(reply["reset"]["cursor"])
        assert len(own) == 1 and own.get(channel) == Cursor.decode(reply["cursor"]).get(channel)
    assert first["publications"] == second["publications"] == []
    assert third == {"publications": [], "cursor": second["cursor"]}
    positions = Cursor.decode(third["cursor"])
    assert [positions.get(c).offset for c in ("a", "b")] == [4, 4]  # type: ignore[union-attr]


async def test_etag_and_if_none_match(hub: RunningHub) -> None:
    async with hub.http() as client:
        first = await client.get("/poll", params={"channel": "chat:lobby", "timeout": 0})
        cursor = first.json()["cursor"]
        assert first.headers["etag"] == f'"{cursor}"'
        params = {"channel": "chat:lobby", "cursor": cursor, "timeout": 0}
        unchanged = await client.get(
            "/poll", params=params, headers={"If-None-Match": first.headers["etag"]}
        )
        assert unchanged.status_code == 304 and unchanged.content == b""
        await hub.publish("chat:lobby", "new")
        changed = await client.get(
            "/poll", params=params, headers={"If-None-Match": first.headers["etag"]}
        )
    assert changed.status_code == 200 and changed.json()["publications"][0]["data"] == "new"
    assert changed.headers["etag"] == f'"{changed.json()["cursor"]}"'


async def test_a_session_closed_by_the_hub_answers_with_its_disconnect(hub: RunningHub) -> None:
    async with hub.http() as client:
        cursor = (await poll(client, "chat:lobby", timeout=0))["cursor"]
        request = asyncio.create_task(poll(client, "chat:lobby", cursor=cursor, timeout=30))
        await until(lambda: waiting(hub, "chat:lobby") == 1)
        for session in list(hub.hub.sessions.values()):
            session.close(CloseCode.SHUTDOWN)
        reply = await asyncio.wait_for(request, timeout(5))
    assert reply == {
        "publications": [],
        "cursor": cursor,
        "disconnect": {"code": 4000, "reason": "shutdown", "reconnect": True},
    }


async def test_polls_are_sessions_and_without_client_in_no_presence(hub: RunningHub) -> None:
    async with hub.http() as client:
        cursor = (await poll(client, "chat:lobby", timeout=0))["cursor"]
        request = asyncio.create_task(poll(client, "chat:lobby", cursor=cursor, timeout=30))
        await until(lambda: waiting(hub, "chat:lobby") == 1)
        metrics = (await client.get("/metrics")).text
        presence = (await client.get("/api/presence", params={"channel": "chat:lobby"})).json()
        await hub.publish("chat:lobby", "x")
        await asyncio.wait_for(request, timeout(5))
    assert 'clarion_connections{transport="poll"} 1.0' in metrics
    assert presence == {"clients": [], "users": [], "anonymous": 0}


@heavy
async def test_a_thousand_concurrent_long_polls_answered_by_one_publish(hub: RunningHub) -> None:
    count = 1000
    async with hub.http() as client:
        cursor = (await poll(client, "chat:crowd", timeout=0))["cursor"]
    target = f"/poll?channel=chat:crowd&cursor={cursor}&timeout=60"
    started = time.monotonic()
    requests = [asyncio.create_task(raw_get(hub.port, target)) for _ in range(count)]
    await until(lambda: waiting(hub, "chat:crowd") == count, wait=30)
    waited = time.monotonic() - started
    published_at = time.monotonic()
    await hub.hub.publish("chat:crowd", "everyone")
    replies = await asyncio.wait_for(asyncio.gather(*requests), timeout(30))
    answered = time.monotonic() - published_at
    print(f"{count} long polls waiting after {waited:.2f} s, all answered in {answered:.2f} s")
    assert {status for status, _ in replies} == {200}
    bodies = [json.loads(body) for _, body in replies]
    assert all([p["data"] for p in b["publications"]] == ["everyone"] for b in bodies)
    assert len({b["cursor"] for b in bodies}) == 1
    assert answered < timeout(5)
    assert not hub.hub.sessions


async def test_clients_that_go_away_while_waiting_leave_nothing_behind(hub: RunningHub) -> None:
    baseline = Baseline(hub)
    async with hub.http() as client:
        cursor = (await poll(client, "chat:a", "chat:b", timeout=0))["cursor"]
    clients = [hub.http() for _ in range(20)]
    requests = [
        asyncio.create_task(poll(c, "chat:a", "chat:b", cursor=cursor, timeout=60)) for c in clients
    ]
    await until(lambda: waiting(hub, "chat:b") == 20)
    for request in requests:
        request.cancel()
    await asyncio.gather(*requests, return_exceptions=True)
    for c in clients:
        await c.aclose()
    await baseline.restored()
