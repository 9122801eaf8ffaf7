"""Long-poll clients in presence: one entry per client (not per poll), renewed by each of its
polls on any node, with one join and one leave; over real HTTP on both engines (on Redis, two
nodes sharing one ``redis-server``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import uvicorn

from clarion import Hub
from clarion.core.auth import mint_token
from clarion.core.presence import POLL_ENTRY_BURST
from clarion.settings import NamespaceOptions, PollOptions, Settings

from ..conftest import WS, RunningHub, timeout
from ..transports.streams import error_code

pytestmark = pytest.mark.timeout(120)

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "presence-api-key"
API = {"Authorization": f"apikey {KEY}"}
# poll.presence_timeout: a lease's slack past its poll's wait, long enough for a loaded
# machine's pauses between two polls of the test.
LINGER = 3.0


async def poll(http: httpx.AsyncClient, channel: str, **params: Any) -> dict[str, Any]:
    """``GET /poll`` with ``params`` (``client`` among them), answered 200."""
    r = await http.get("/poll", params={"channel": channel, **params})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def settings(mode: str = "client") -> dict[str, Any]:
    room = NamespaceOptions(join_leave=mode, presence_grace=0.5, anonymous=True)  # type: ignore[arg-type]
    return {
        "token_secret": SECRET,
        "api_key": KEY,
        "namespaces": {"room": room},
        "poll": PollOptions(presence_timeout=LINGER),
    }


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, user, ['room:*'])}"}


@pytest.fixture(params=["memory", "redis"])
async def two(
    request: pytest.FixtureRequest, hub_factory: Callable[..., Any]
) -> Callable[..., Any]:
    """Two nodes of one engine: the same hub twice on memory, two hubs on one Redis."""

    async def make(**kw: Any) -> tuple[RunningHub, RunningHub]:
        if request.param == "memory":
            hub: RunningHub = await hub_factory(**kw)
            return hub, hub
        server = request.getfixturevalue("redis_server")
        # Ended leases are looked for every third of presence_ttl.
        url = f"{server.url}?presence_ttl=1.5"
        return await hub_factory(engine=url, **kw), await hub_factory(engine=url, **kw)

    return make


async def listing(hub: RunningHub, channel: str) -> list[dict[str, Any]]:
    async with hub.http(headers=API) as http:
        r = await http.get("/api/presence", params={"channel": channel})
    assert r.status_code == 200, r.text
    clients: list[dict[str, Any]] = r.json()["clients"]
    return clients


async def about(ws: WS, user: str, wait: float = 10) -> tuple[str, dict[str, Any]]:
    """The next join or leave about ``user``."""
    while True:
        msg = await ws.recv(wait)
        for kind in ("join", "leave"):
            if kind in msg and msg[kind].get("user") == user:
                return kind, msg[kind]


async def nothing_about(ws: WS, user: str, wait: float) -> None:
    deadline = time.monotonic() + timeout(wait)
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(ws.conn.recv(), left)
        except TimeoutError:
            return
        assert user not in str(msg), msg


async def test_a_poll_client_joins_once_stays_while_it_polls_and_leaves_after(
    two: Callable[..., Any],
) -> None:
    a, b = await two(**settings())
    lifecycle: list[tuple[str, str]] = []
    for node in {id(a): a, id(b): b}.values():
        node.hub.lifecycle_listeners.append(lambda kind, e: lifecycle.append((kind, e["client"])))
    async with (
        a.ws(additional_headers=bearer("bob")) as watcher,
        b.http(headers=bearer("alice")) as on_b,
        a.http(headers=bearer("alice")) as on_a,
    ):
        assert "ok" in await watcher.subscribe("room:1")
        first = await poll(on_b, "room:1", timeout=0, client="")
        client = first["client"]
        assert re.fullmatch(r"p[A-Za-z0-9_-]{22}", client)
        kind, event = await about(watcher, "alice")
        assert (kind, event["client"], event["transport"]) == ("join", client, "poll")
        assert [
            (c["client"], c["user"]) for c in await listing(a, "room:1") if c["transport"] == "poll"
        ] == [(client, "alice")]

        # Its later polls, on either node, renew the one entry: no other join, no leave, over
        # longer than one lease.
        cursor = first["cursor"]
        for http in (on_a, on_b) * 4:
            await asyncio.sleep(0.2)
            reply = await poll(http, "room:1", timeout=0.2, cursor=cursor, client=client)
            assert reply["client"] == client
            cursor = reply["cursor"]
        await nothing_about(watcher, "alice", 0.3)
        assert len(await listing(b, "room:1")) == 2  # bob's connection and alice's client

        started = time.monotonic()
        kind, event = await about(watcher, "alice")
        assert (kind, event["client"]) == ("leave", client)
        print(f"left {time.monotonic() - started:.2f} s after its last poll's lease began")
        assert [c["user"] for c in await listing(a, "room:1")] == ["bob"]
    assert lifecycle.count(("join", client)) == 1
    assert lifecycle.count(("leave", client)) == 1


async def test_a_user_with_a_tab_and_a_poll_client_leaves_once_both_are_gone(
    two: Callable[..., Any],
) -> None:
    a, b = await two(**settings("user"))
    async with a.ws(additional_headers=bearer("bob")) as watcher:
        assert "ok" in await watcher.subscribe("room:1")
        async with b.http(headers=bearer("alice")) as http:
            await poll(http, "room:1", timeout=0, client="")
        assert await about(watcher, "alice") == ("join", {"channel": "room:1", "user": "alice"})
        async with a.ws(additional_headers=bearer("alice")) as tab:
            assert "ok" in await tab.subscribe("room:1")
            # The poll client's lease ends meanwhile: alice is still here, in her tab.
            await nothing_about(watcher, "alice", LINGER + 2.5)
        assert await about(watcher, "alice") == ("leave", {"channel": "room:1", "user": "alice"})


async def test_a_poll_id_is_never_taken_over_by_another_user(two: Callable[..., Any]) -> None:
    a, b = await two(**settings())
    async with b.http(headers=bearer("alice")) as alice, a.http(headers=bearer("eve")) as eve:
        mine = (await poll(alice, "room:1", timeout=0, client=""))["client"]
        theirs = (await poll(eve, "room:1", timeout=0, client=mine))["client"]
        assert theirs != mine
        clients = {c["client"]: c["user"] for c in await listing(a, "room:1")}
    assert clients == {mine: "alice", theirs: "eve"}


async def test_a_client_that_never_sends_its_id_back_adds_a_bounded_number(
    hub_factory: Callable[..., Any],
) -> None:
    hub: RunningHub = await hub_factory(**settings())
    given = []
    started = time.monotonic()
    async with hub.http() as http:  # anonymous: counted per address
        for _ in range(40):
            given.append((await poll(http, "room:1", timeout=0, client="")).get("client"))
    elapsed = time.monotonic() - started
    issued = [g for g in given if g is not None]
    assert len(issued) == len(set(issued))
    # A burst, then about one a second; the others are answered without presence.
    assert POLL_ENTRY_BURST <= len(issued) <= POLL_ENTRY_BURST + elapsed + 1
    assert len(await listing(hub, "room:1")) == len(issued)


async def test_channels_named_without_an_entry_are_not_watched(
    hub_factory: Callable[..., Any],
) -> None:
    """Past its rate a poll adds no entry: the channels it names then are not looked at for
    ended leases either, so what the node watches grows with the entries, not the names."""
    hub: RunningHub = await hub_factory(**settings())
    async with hub.http() as http:
        client = (await poll(http, "room:0", timeout=0, client=""))["client"]
        for _ in range(POLL_ENTRY_BURST + 20):  # the address's rate, spent
            if "client" not in await poll(http, "room:0", timeout=0, client=""):
                break
        else:
            pytest.fail("new clients were still added")
        started = time.monotonic()
        for n in range(1, 41):
            reply = await poll(http, f"room:{n}", timeout=0, client=client)
            assert reply["client"] == client
        elapsed = time.monotonic() - started
    watched = hub.hub.roster._polled
    # room:0, and a channel per token that came back meanwhile (one a second)
    assert "room:0" in watched and len(watched) <= 1 + elapsed + 1, sorted(watched)


# The last: a connection's id (18 hex digits) is no poll client's either.
@pytest.mark.parametrize(
    "client", ["x", "p" + "a" * 21, "p" + "a" * 23, "p" + "!" * 22, "0123456789abcdef01"]
)
async def test_a_client_id_not_of_the_hub_s_making_is_refused(hub: RunningHub, client: str) -> None:
    async with hub.http() as http:
        r = await http.get("/poll", params={"channel": "chat:1", "timeout": 0, "client": client})
    assert r.status_code == 400, r.text
    assert error_code(r) == "bad_request"
    assert "client" in r.json()["error"]["message"]


async def test_without_client_a_poll_is_in_no_presence(hub_factory: Callable[..., Any]) -> None:
    hub: RunningHub = await hub_factory(**settings())
    async with hub.http(headers=bearer("alice")) as http:
        reply = await poll(http, "room:1", timeout=0)
    assert "client" not in reply
    assert await listing(hub, "room:1") == []


async def test_an_id_the_hub_forgot_is_added_again(hub_factory: Callable[..., Any]) -> None:
    """A poll client whose lease ended (a laptop asleep) comes back under its id: a new entry,
    a new join, as after any absence."""
    hub: RunningHub = await hub_factory(**settings())
    async with hub.http(headers=bearer("alice")) as http:
        client = (await poll(http, "room:1", timeout=0, client=""))["client"]
        deadline = time.monotonic() + timeout(10)
        while await listing(hub, "room:1"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        again = await poll(http, "room:1", timeout=0, client=client)
    assert again["client"] == client
    assert [c["client"] for c in await listing(hub, "room:1")] == [client]


async def test_a_poll_naming_no_presence_channel_gets_no_id(
    hub_factory: Callable[..., Any],
) -> None:
    kw = settings()
    kw["namespaces"]["quiet"] = NamespaceOptions(presence=False, anonymous=True)
    hub: RunningHub = await hub_factory(**kw)
    async with hub.http() as http:
        reply = await poll(http, "quiet:1", timeout=0, client="")
    assert "client" not in reply


async def leave(http: httpx.AsyncClient, channels: list[str], client: str) -> None:
    """``DELETE /poll``: the client leaves ``channels``, answered 204."""
    r = await http.delete("/poll", params={"channel": channels, "client": client})
    assert r.status_code == 204, r.text
    assert r.content == b""


async def long_lease(http: httpx.AsyncClient, hub: RunningHub, channel: str) -> str:
    """A poll client in ``channel``'s presence under a long poll's lease (its ``timeout``, 20 s,
    and ``presence_timeout``), answered at once: something waits for it."""
    first = await poll(http, channel, timeout=0, client="")
    await hub.publish(channel, {"n": 1})
    reply = await poll(http, channel, timeout=20, cursor=first["cursor"], client=first["client"])
    assert reply["publications"], reply
    client: str = first["client"]
    return client


async def test_a_poll_client_that_says_it_leaves_leaves_at_once(two: Callable[..., Any]) -> None:
    """Its entries go and its leaves come now, on whichever node it asks, well before its
    lease would end (23 s here); once, though the ended lease is looked for later."""
    a, b = await two(**settings())
    lifecycle: list[tuple[str, str, str]] = []
    for node in {id(a): a, id(b): b}.values():
        node.hub.lifecycle_listeners.append(
            lambda kind, e: lifecycle.append((kind, e.get("channel", ""), e["client"]))
        )
    async with (
        a.ws(additional_headers=bearer("bob")) as watcher,
        b.http(headers=bearer("alice")) as on_b,
        a.http(headers=bearer("alice")) as on_a,
    ):
        assert "ok" in await watcher.subscribe("room:1")
        assert "ok" in await watcher.subscribe("room:2")
        client = await long_lease(on_b, b, "room:1")
        assert (await poll(on_b, "room:2", timeout=0, client=client))["client"] == client
        joined = {(await about(watcher, "alice"))[1]["channel"] for _ in range(2)}
        assert joined == {"room:1", "room:2"}

        started = time.monotonic()
        await leave(on_a, ["room:1"], client)
        kind, event = await about(watcher, "alice")
        assert (kind, event["channel"], event["client"]) == ("leave", "room:1", client)
        print(f"left {time.monotonic() - started:.2f} s after it said so")
        assert [c["user"] for c in await listing(a, "room:1")] == ["bob"]
        # The other channel it did not leave keeps it.
        assert "alice" in [c["user"] for c in await listing(b, "room:2")]

        await leave(on_a, ["room:1"], client)  # said again: nothing changes
        # Both nodes look for ended leases meanwhile (every 0.5 s on Redis, 1 s on memory).
        await nothing_about(watcher, "alice", 2.5)
    assert lifecycle.count(("leave", "room:1", client)) == 1


async def test_a_poll_user_who_leaves_is_gone_after_the_grace(two: Callable[..., Any]) -> None:
    a, b = await two(**settings("user"))
    async with (
        a.ws(additional_headers=bearer("bob")) as watcher,
        b.http(headers=bearer("alice")) as http,
    ):
        assert "ok" in await watcher.subscribe("room:1")
        client = await long_lease(http, b, "room:1")
        assert await about(watcher, "alice") == ("join", {"channel": "room:1", "user": "alice"})
        await leave(http, ["room:1"], client)
        assert await about(watcher, "alice") == ("leave", {"channel": "room:1", "user": "alice"})
        assert [c["user"] for c in await listing(a, "room:1")] == ["bob"]


async def test_a_poll_user_back_within_the_grace_neither_leaves_nor_joins(
    hub_factory: Callable[..., Any],
) -> None:
    """A page reloaded over long polling: the old client leaves, the new one comes at once."""
    hub: RunningHub = await hub_factory(**settings("user"))
    async with (
        hub.ws(additional_headers=bearer("bob")) as watcher,
        hub.http(headers=bearer("alice")) as http,
    ):
        assert "ok" in await watcher.subscribe("room:1")
        old = await long_lease(http, hub, "room:1")
        assert await about(watcher, "alice") == ("join", {"channel": "room:1", "user": "alice"})
        await leave(http, ["room:1"], old)
        new = (await poll(http, "room:1", timeout=0, client=""))["client"]
        assert new != old
        await nothing_about(watcher, "alice", 1.5)  # the grace is 0.5 s
        assert [c["client"] for c in await listing(hub, "room:1") if c["user"] == "alice"] == [new]


async def test_a_reader_arriving_within_the_grace_sees_the_poll_user_who_comes_back(
    two: Callable[..., Any],
) -> None:
    """A page reloaded over long polling, with carol arriving between the leave and the new
    page's first poll: her presence read lists alice, whose old client stays listed for the
    grace, and she hears neither a join nor a leave of her; then only the new client is left."""
    a, b = await two(**settings("user"))
    async with b.http(headers=bearer("alice")) as http:
        old = await long_lease(http, b, "room:1")
        await leave(http, ["room:1"], old)
        async with a.ws(additional_headers=bearer("carol")) as carol:
            assert "ok" in await carol.subscribe("room:1")
            seen = (await carol.call("presence", channel="room:1"))["ok"]
            assert {u["user"] for u in seen["users"]} == {"alice", "carol"}, seen
            new = (await poll(http, "room:1", timeout=0, client=""))["client"]
            await nothing_about(carol, "alice", 2.0)  # the grace is 0.5 s
            deadline = time.monotonic() + timeout(10)
            while (
                alices := [c["client"] for c in await listing(a, "room:1") if c["user"] == "alice"]
            ) != [new]:
                assert time.monotonic() < deadline, alices
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("engine", ["memory", "redis"])
async def test_an_anonymous_client_without_an_address_keeps_its_id(
    request: pytest.FixtureRequest, engine: str, tmp_path: Any
) -> None:
    """Served on a unix socket (the ASGI scope has no client address), an anonymous poll
    client keeps the id its first poll was given, is one entry, and its leave takes it out:
    on Redis its stored entry, without an address, did not match the empty one its polls
    bring."""
    url = "memory" if engine == "memory" else request.getfixturevalue("redis_server").url
    hub = Hub(
        Settings(
            engine=url,
            api_key=KEY,
            token_secret=SECRET,
            namespaces={"room": NamespaceOptions(join_leave="client", anonymous=True)},
            poll=PollOptions(presence_timeout=LINGER),
            data_dir=str(tmp_path / "data"),
        )
    )
    await hub.start()
    path = str(tmp_path / "hub.sock")
    server = uvicorn.Server(
        uvicorn.Config(hub.asgi_app(), uds=path, log_level="warning", lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        transport = httpx.AsyncHTTPTransport(uds=path)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as http:
            ids = [(await poll(http, "room:1", timeout=0, client=""))["client"]]
            for _ in range(3):
                ids.append((await poll(http, "room:1", timeout=0, client=ids[-1]))["client"])
            r = await http.get("/api/presence", params={"channel": "room:1"}, headers=API)
            await leave(http, ["room:1"], ids[0])  # and it may say it leaves
            after = await http.get("/api/presence", params={"channel": "room:1"}, headers=API)
        assert ids == ids[:1] * 4, ids
        assert [c["client"] for c in r.json()["clients"]] == ids[:1]
        assert after.json()["clients"] == []
    finally:
        server.should_exit = True
        await serving
        await hub.close()


async def test_a_leave_takes_out_only_its_own_users_client(two: Callable[..., Any]) -> None:
    """An id is a secret, but one that leaked does not let another user, nor someone without
    a token, take the client out; nor does an id make a connection leave."""
    a, b = await two(**settings())
    async with (
        b.http(headers=bearer("alice")) as alice,
        a.http(headers=bearer("eve")) as eve,
        a.http() as nobody,
        a.ws(additional_headers=bearer("carol")) as carol,
    ):
        assert "ok" in await carol.subscribe("room:1")
        mine = await long_lease(alice, b, "room:1")
        await leave(eve, ["room:1"], mine)
        await leave(nobody, ["room:1"], mine)
        clients = {c["user"]: c["client"] for c in await listing(a, "room:1")}
        assert clients == {"alice": mine, "carol": clients["carol"]}
        # A connection's id is no poll client's: refused before anything is read.
        r = await eve.delete("/poll", params={"channel": "room:1", "client": clients["carol"]})
        assert (r.status_code, error_code(r)) == (400, "bad_request")
        assert len(await listing(b, "room:1")) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"channel": "room:1"},  # no client
        {"channel": "room:1", "client": ""},  # a new client's: it has nothing to leave
        {"channel": "room:1", "client": "p" + "!" * 22},
        {"client": "p" + "a" * 22},  # no channel
        {"channel": "room:1", "client": ["p" + "a" * 22, "p" + "b" * 22]},
    ],
)
async def test_a_leave_that_names_no_client_or_channel_is_refused(
    hub_factory: Callable[..., Any], params: dict[str, Any]
) -> None:
    hub: RunningHub = await hub_factory(**settings())
    async with hub.http() as http:
        r = await http.delete("/poll", params=params)
    assert (r.status_code, error_code(r)) == (400, "bad_request"), r.text


async def test_an_anonymous_clients_leave_comes_from_its_own_address(
    two: Callable[..., Any],
) -> None:
    """An anonymous client's id is shown to every presence reader: without a user to tell
    whose it is, only its own address (here through a trusted proxy) takes it out."""
    a, b = await two(**settings(), trusted_proxies=["127.0.0.1"])
    mine, theirs = {"X-Forwarded-For": "192.0.2.10"}, {"X-Forwarded-For": "192.0.2.66"}
    async with b.http(headers=mine) as owner, a.http(headers=theirs) as stranger:
        client = await long_lease(owner, b, "room:1")
        await leave(stranger, ["room:1"], client)
        assert [c["client"] for c in await listing(a, "room:1")] == [client]
        async with a.http(headers=mine) as owner_elsewhere:
            await leave(owner_elsewhere, ["room:1"], client)
        assert await listing(b, "room:1") == []


async def test_an_anonymous_clients_id_polled_from_another_address_is_not_taken_over(
    two: Callable[..., Any],
) -> None:
    """Its id, read from presence and polled from another address, gets the stranger an id of
    its own: the owner's entry is not renewed by the stranger's polls (a ghost kept in the room)
    and stays the owner's, whose own polls, from any node, go on holding it."""
    a, b = await two(**settings(), trusted_proxies=["127.0.0.1"])
    mine, theirs = {"X-Forwarded-For": "192.0.2.10"}, {"X-Forwarded-For": "192.0.2.66"}
    async with b.http(headers=mine) as owner, a.http(headers=theirs) as stranger:
        client = (await poll(owner, "room:1", timeout=0, client=""))["client"]
        other = (await poll(stranger, "room:1", timeout=0, client=client))["client"]
        assert other != client
        assert sorted(c["client"] for c in await listing(a, "room:1")) == sorted([client, other])
        async with a.http(headers=mine) as owner_elsewhere:
            assert (await poll(owner_elsewhere, "room:1", timeout=0, client=client))[
                "client"
            ] == client
