"""Join and leave per user (``join_leave = "user"``) with a grace period, delivered on /ws,
/sse, /poll and STOMP, over real sockets on both engines (on Redis, across two nodes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from clarion.core.auth import mint_token
from clarion.settings import NamespaceOptions

from ..conftest import WS, RunningHub, timeout
from ..stomp.client import StompClient, stomp
from ..transports.streams import SseClient, sse
from .test_presence_users import until_stats

pytestmark = pytest.mark.timeout(120)

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "presence-api-key"
GRACE = 1.0


def settings(mode: str) -> dict[str, Any]:
    room = NamespaceOptions(join_leave=mode, presence_grace=GRACE)  # type: ignore[arg-type]
    return {"token_secret": SECRET, "api_key": KEY, "namespaces": {"room": room}}


def token(user: str) -> str:
    return mint_token(SECRET, user, ["room:*"])


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


class Watchers:
    """One subscriber per transport, each collecting the presence events about alice."""

    def __init__(self, ws: WS, stream: SseClient, stomp_client: StompClient) -> None:
        self.ws, self.sse, self.stomp = ws, stream, stomp_client

    async def next_each(self, wait: float = 10) -> list[tuple[str, dict[str, Any]]]:
        """The next event about alice on each transport: ``(kind, event)`` per transport."""
        out = []
        while True:
            msg = await self.ws.recv(wait)
            kind = next((k for k in ("join", "leave") if k in msg), None)
            if kind is not None and msg[kind].get("user") == "alice":
                out.append((kind, msg[kind]))
                break
        while True:
            event = await self.sse.next(wait)
            if event.event in ("join", "leave") and event.json().get("user") == "alice":
                out.append((event.event, event.json()))
                break
        while True:
            frame = await self.stomp.recv(wait)
            kind = frame.headers.get("x-event") if frame.command == "MESSAGE" else None
            if kind in ("join", "leave") and frame.json().get("user") == "alice":
                out.append((str(kind), frame.json()))
                break
        return out

    async def nothing_about_alice(self, wait: float) -> None:
        """No event about alice reaches the WebSocket watcher within ``wait`` seconds (the
        transports share one delivery: the others are checked by the next expected event)."""
        deadline = time.monotonic() + timeout(wait)
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(self.ws.conn.recv(), left)
            except TimeoutError:
                return
            assert "alice" not in str(msg), msg


async def long_poll(hub: RunningHub, channel: str) -> dict[str, Any]:
    async with hub.http(headers=bearer("poller")) as http:
        r = await http.get("/poll", params={"channel": channel, "timeout": "20"})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def subscribers(hub: RunningHub, channel: str) -> int:
    return hub.hub.channels().get(channel, 0)


async def test_alice_with_two_tabs_and_bob(nodes: Callable[..., Any]) -> None:
    a: RunningHub = await nodes(**settings("user"))
    b: RunningHub = await nodes(**settings("user"))
    async with (
        b.ws(additional_headers=bearer("bob")) as bob,
        sse(a, "room:1", headers=bearer("watcher")) as stream,
        stomp(b) as stomp_client,
    ):
        await bob.subscribe("room:1")
        await stream.opening()
        await stomp_client.connect(passcode=token("stomper"))
        await stomp_client.send("SUBSCRIBE", id="s", destination="/topic/room:1", receipt="r")
        await stomp_client.expect("RECEIPT")
        await until_stats(a, "room:1", clients=3, users=3)
        watchers = Watchers(bob, stream, stomp_client)

        # A poll waiting on node a answers with alice's join.
        before = await subscribers(a, "room:1")
        polling = asyncio.create_task(long_poll(a, "room:1"))
        deadline = time.monotonic() + timeout(10)
        while await subscribers(a, "room:1") <= before:
            assert time.monotonic() < deadline and not polling.done()
            await asyncio.sleep(0.02)

        async with a.ws(additional_headers=bearer("alice")) as tab1:
            await tab1.subscribe("room:1")
            assert [kind for kind, _ in await watchers.next_each()] == ["join"] * 3
            polled = await asyncio.wait_for(polling, timeout(10))
            joins = [e["join"] for e in polled.get("events", []) if "join" in e]
            assert {"channel": "room:1", "user": "alice"} in joins
            async with b.ws(additional_headers=bearer("alice")) as tab2:
                await tab2.subscribe("room:1")
                await until_stats(a, "room:1", clients=5, users=4)
                await tab1.conn.close()
                await until_stats(a, "room:1", clients=4, users=4)
                await watchers.nothing_about_alice(GRACE + 1)  # a tab left, alice did not

                # A reload: the last tab goes and comes back within the grace.
                await tab2.conn.close()
            async with a.ws(additional_headers=bearer("alice")) as tab3:
                await tab3.subscribe("room:1")
                await watchers.nothing_about_alice(GRACE + 1)
                await until_stats(a, "room:1", clients=4, users=4)
                closed = time.monotonic()
        events = await watchers.next_each()
        assert events == [("leave", {"channel": "room:1", "user": "alice"})] * 3
        assert time.monotonic() - closed >= GRACE  # not before the grace


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_reader_arriving_within_the_grace_sees_the_user_who_comes_back(
    nodes: Callable[..., Any], transport: str
) -> None:
    """Alice's only tab goes; carol subscribes and reads presence within the grace; alice is
    back within it (a reload). Carol's read lists alice, and she hears neither a join nor a
    leave of her. Before, alice's entry went with the tab and her return sent no join: a
    "here now" list built from the read and the events lacked her for good."""
    a: RunningHub = await nodes(**settings("user"))
    b: RunningHub = await nodes(**settings("user"))

    def tab(hub: RunningHub) -> Any:
        if transport == "ws":
            return hub.ws(additional_headers=bearer("alice"))
        return sse(hub, "room:1", headers=bearer("alice"))

    async def opened(client: Any) -> None:
        if transport == "ws":
            await client.subscribe("room:1")
        else:
            await client.opening()

    async with tab(b) as first:
        await opened(first)
        await until_stats(a, "room:1", clients=1, users=1)
    async with a.ws(additional_headers=bearer("carol")) as carol:
        await carol.subscribe("room:1")
        seen = (await carol.call("presence", channel="room:1"))["ok"]
        assert {u["user"] for u in seen["users"]} == {"alice", "carol"}, seen
        async with tab(b) as again:
            await opened(again)
            deadline = time.monotonic() + timeout(GRACE + 1)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await asyncio.wait_for(carol.conn.recv(), left)
                except TimeoutError:
                    break
                assert "alice" not in str(msg), msg
            await until_stats(a, "room:1", clients=2, users=2)  # the first tab's entry gone
            seen = (await carol.call("presence", channel="room:1"))["ok"]
            assert {u["user"] for u in seen["users"]} == {"alice", "carol"}, seen


async def test_a_clients_entry_stays_for_the_grace_of_its_latest_leave(
    nodes: Callable[..., Any],
) -> None:
    """Alice leaves, comes back on the same connection and leaves again 3.5 seconds later:
    her entry stays until the grace of that last leave has passed, not of the first (whose
    removal took it out early, and a reader arriving then missed her for good). The look comes
    a second after the first grace, 2.5 s before the last one ends: room for a busy machine."""
    grace = 5.0
    room = NamespaceOptions(join_leave="user", presence_grace=grace)
    hub: RunningHub = await nodes(token_secret=SECRET, api_key=KEY, namespaces={"room": room})
    async with hub.ws(additional_headers=bearer("alice")) as alice:
        assert "ok" in await alice.subscribe("room:1")
        await until_stats(hub, "room:1", clients=1, users=1)
        assert "ok" in await alice.call("unsubscribe", channel="room:1")
        first = time.monotonic()
        await asyncio.sleep(3.5)
        assert "ok" in await alice.subscribe("room:1")
        assert "ok" in await alice.call("unsubscribe", channel="room:1")
        last = time.monotonic()
        await asyncio.sleep(max(0.0, first + grace + 1.0 - time.monotonic()))
        async with hub.http(headers={"Authorization": f"apikey {KEY}"}) as http:
            listed = (await http.get("/api/presence", params={"channel": "room:1"})).json()
        assert time.monotonic() < last + grace, "too slow to look within the last grace"
        assert [c["user"] for c in listed["clients"]] == ["alice"], listed
        await until_stats(hub, "room:1", clients=0, users=0)  # and gone after it


async def test_an_entry_goes_when_a_subscribe_within_the_grace_fails(
    hub_factory: Callable[..., Any], redis_server: Any
) -> None:
    """Alice leaves, and subscribes again on the same connection while Redis stalls (its own
    server here, paused): that subscribe is still reading history when her grace ends, then
    fails, and she closes. Her entry goes, and bob hears her leave; the node used to renew it
    for as long as it ran. (Taken out at the grace's end, with Redis paused: the removal
    fails, and the entry ends with its lease, presence_ttl.)"""
    url = f"{redis_server.url}?socket_timeout=0.5&presence_ttl=3"
    hub: RunningHub = await hub_factory(engine=url, **settings("user"))
    raw = aioredis.Redis(port=redis_server.port)
    try:
        await alice_resubscribes_while_redis_pauses(hub, raw)
    finally:
        await raw.aclose()


async def alice_resubscribes_while_redis_pauses(hub: RunningHub, raw: aioredis.Redis) -> None:
    async with hub.ws(additional_headers=bearer("bob")) as bob:
        assert "ok" in await bob.subscribe("room:1")
        async with hub.ws(additional_headers=bearer("alice")) as alice:
            assert "ok" in await alice.subscribe("room:1")
            while (await bob.recv()).get("join", {}).get("user") != "alice":
                pass
            assert "ok" in await alice.call("unsubscribe", channel="room:1")
            await asyncio.sleep(GRACE - 0.2)
            await raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            refused = await alice.call("subscribe", channel="room:1")
            assert refused["error"]["code"] == "engine_unavailable", refused
        while True:
            msg = await bob.recv(timeout(20))
            if "leave" in msg:
                break
    assert msg["leave"] == {"channel": "room:1", "user": "alice"}
    await until_stats(hub, "room:1", clients=1, users=1)


async def test_client_mode_keeps_per_client_events(nodes: Callable[..., Any]) -> None:
    hub: RunningHub = await nodes(**settings("client"))
    async with hub.ws(additional_headers=bearer("bob")) as bob:
        await bob.subscribe("room:2")
        async with hub.ws(additional_headers=bearer("alice")) as tab:
            await tab.subscribe("room:2")
            while "join" not in (msg := await bob.recv()) or msg["join"]["user"] != "alice":
                pass
            assert "client" in msg["join"]
        while "leave" not in (msg := await bob.recv()):
            pass
        assert msg["leave"]["user"] == "alice" and "client" in msg["leave"]


async def test_a_burst_of_joins_in_many_rooms_is_heard_once_each(
    nodes: Callable[..., Any],
) -> None:
    """Clients joining many rooms at once: each join reaches the other node's reader once, and
    each leave after it (on Redis they go out together, sharing pipelines)."""
    watching = await nodes(**settings("client"))
    joining = await nodes(**settings("client"))
    rooms = [f"room:burst{i}" for i in range(8)]
    users = [f"user{i}" for i in range(12)]
    async with watching.ws(additional_headers=bearer("bob")) as bob:
        for room in rooms:
            await bob.subscribe(room)

        async def heard(kind: str) -> list[tuple[str, str]]:
            got: list[tuple[str, str]] = []
            while len(got) < len(rooms) * len(users):
                msg = await bob.recv(timeout(10))
                if kind in msg and msg[kind]["user"] != "bob":  # his own join comes too
                    got.append((msg[kind]["channel"], msg[kind]["user"]))
            return sorted(got)

        async def join_all(conn: WS) -> None:
            for room in rooms:
                await conn.subscribe(room)

        expected = sorted((room, user) for room in rooms for user in users)
        # Each tab hears every other's joins too, unread: a bounded queue would hold back its
        # reads, and with them its close.
        async with contextlib.AsyncExitStack() as tabs:
            conns = await asyncio.gather(
                *(
                    tabs.enter_async_context(
                        joining.ws(additional_headers=bearer(u), max_queue=None)
                    )
                    for u in users
                )
            )
            await asyncio.gather(*map(join_all, conns))
            assert await heard("join") == expected
        assert await heard("leave") == expected


async def test_a_node_shutting_down_sends_its_clients_leaves(
    hub_factory: Callable[..., Any], redis_server: Any
) -> None:
    # Per-client leaves wait for their 50 ms window: a node that closes sends them first.
    going = await hub_factory(engine=redis_server.url, **settings("client"))
    staying = await hub_factory(engine=redis_server.url, **settings("client"))
    async with staying.ws(additional_headers=bearer("bob")) as bob:
        await bob.subscribe("room:3")
        async with going.ws(additional_headers=bearer("alice")) as alice:
            await alice.subscribe("room:3")
            while "join" not in (msg := await bob.recv()) or msg["join"]["user"] != "alice":
                pass
            await going.hub.close()
            while "leave" not in (msg := await bob.recv(timeout(5))):
                pass
            assert msg["leave"]["user"] == "alice"
