"""Reads of stored publications, counted per reader across connections and requests.

Each page is bounded by the send budget, but not how often a client asks for one: four
connections polling with an old cursor and ``timeout=0`` were sent 73 MB/s of history, and
128-channel polls a megabyte each, 44 times a second, which held a bystander's p50 latency at
113 ms; a stream reopened with a cursor, a reconnect that resumes and a history read are the same
small request for a page. Every such page now takes what its reader (a user, or an address
without one: ``Session.rate_key``) has left of ``limits.client_history_rate`` and
``client_history_burst``, and always one publication, so the reader still gets further.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from clarion.core.auth import mint_token
from clarion.core.pages import FIRST_PIECE

from ..conftest import RunningHub
from ..redis_fixture import RedisServer, redis_server  # noqa: F401  (a fixture)
from ..stomp.client import stomp
from ..transports.streams import poll, sse

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "backend-key"
CHANNEL = "feed:big"
STORED = 60
BURST = 20_000  # bytes: some 18 of the publications below
TEXT = "x" * 1000


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, user, ['feed:*'])}"}


def settings(**kw: Any) -> dict[str, Any]:
    return {
        "token_secret": SECRET,
        "api_key": KEY,
        # No refill to speak of within a test: what a reader is sent comes off the burst.
        "limits": {"client_history_rate": 1, "client_history_burst": BURST},
        **kw,
    }


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(**settings())
    return running


async def stored(hub: RunningHub) -> str:
    """``STORED`` publications of about 1 KB on ``CHANNEL``; a cursor before all of them."""
    pubs = [await hub.publish(CHANNEL, {"n": n, "text": TEXT}) for n in range(STORED)]
    start: str = pubs[0]["cursor"]
    return start


def numbers(pubs: list[dict[str, Any]]) -> list[int]:
    return [p["data"]["n"] for p in pubs]


async def test_polls_from_an_old_cursor_get_one_publication_each_past_the_allowance(
    hub: RunningHub,
) -> None:
    """The allowance's worth, then one publication per poll, each going on where the last
    one stopped: nothing skipped, nothing twice. Another user's polls are their own."""
    first = await stored(hub)  # the cursor of publication 0: polls read from 1 on
    async with hub.http(headers=bearer("mallory")) as http:
        body = await poll(http, CHANNEL, cursor=first, timeout=0)
        got = numbers(body["publications"])
        assert 10 <= len(got) <= 20, len(got)  # about BURST bytes' worth
        cursor = body["cursor"]
        for _ in range(5):
            body = await poll(http, CHANNEL, cursor=cursor, timeout=0)
            assert len(body["publications"]) == 1
            got += numbers(body["publications"])
            cursor = body["cursor"]
        assert got == list(range(1, len(got) + 1))
    async with hub.http(headers=bearer("alice")) as http:
        body = await poll(http, CHANNEL, cursor=first, timeout=0)
        assert len(body["publications"]) == len(got) - 5


async def test_every_read_of_stored_publications_draws_on_one_allowance(
    hub: RunningHub,
) -> None:
    """One user across transports and connections: a history read spends the allowance,
    then a WebSocket resume, an event stream's, a STOMP subscription's and a history page
    each carry one publication (the resumes then close as slow, 4001, to go on from there)."""
    first = await stored(hub)
    headers = bearer("mallory")
    async with hub.ws(additional_headers=headers) as ws:
        page = (await ws.call("history", channel=CHANNEL, since=first))["ok"]
        assert 10 <= len(page["publications"]) <= 20 and page["more"] is True
        page = (await ws.call("history", channel=CHANNEL, since=first))["ok"]
        assert numbers(page["publications"]) == [1] and page["more"] is True
    async with hub.ws(additional_headers=headers) as ws:
        assert (await ws.subscribe(CHANNEL, since=first))["ok"]["recovered"] is True
        assert (await ws.recv())["data"]["n"] == 1
        await ws.conn.wait_closed()
        assert ws.conn.close_code == 4001
    async with sse(hub, CHANNEL, headers=headers, cursor=first) as stream:
        events = await stream.rest()
        assert [e.json()["data"]["n"] for e in events if e.event == "message"] == [1]
        assert events[-1].event == "disconnect" and events[-1].json()["code"] == 4001
    async with stomp(hub) as client:
        await client.connect(passcode=headers["Authorization"].removeprefix("Bearer "))
        await client.send("SUBSCRIBE", id="1", destination="/topic/feed\\cbig", x_since=first)
        message = await client.expect("MESSAGE")
        assert message.json()["n"] == 1, message
        assert (await client.expect("ERROR")).headers["x-close-code"] == "4001"
    async with hub.http(headers=headers) as http:
        r = await http.get("/client/history", params={"channel": CHANNEL, "since": first})
        assert numbers(r.json()["publications"]) == [1] and r.json()["more"] is True


async def test_the_backends_reads_draw_on_no_allowance(hub: RunningHub) -> None:
    first = await stored(hub)
    async with hub.ws(additional_headers=bearer("mallory")) as ws:
        for _ in range(3):
            await ws.call("history", channel=CHANNEL, since=first)
    async with hub.http(headers={"Authorization": f"apikey {KEY}"}) as http:
        r = await http.get("/api/history", params={"channel": CHANNEL, "since": first})
    assert len(r.json()["publications"]) == STORED - 1


async def test_reads_at_once_share_one_allowance_on_a_remote_engine(
    hub_factory: Callable[..., Any],
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """On Redis a read waits for its engine: twenty at once each found the whole allowance
    left (twenty pages sent against one page's allowance). The page's bytes are taken
    before the wait, and what was not sent given back."""
    hub: RunningHub = await hub_factory(**settings(engine=redis_server.url))
    first = await stored(hub)

    async def at_once(user: str, read: Callable[[Any], Any]) -> list[int]:
        async with hub.http(headers=bearer(user)) as http:
            return list(await asyncio.gather(*(read(http) for _ in range(20))))

    async def history(http: Any) -> int:
        r = await http.get("/client/history", params={"channel": CHANNEL, "since": first})
        return len(r.json()["publications"])

    async def polled(http: Any) -> int:
        return len((await poll(http, CHANNEL, cursor=first, timeout=0))["publications"])

    for user, read in (("mallory", history), ("trudy", polled)):
        got = await at_once(user, read)
        # About the allowance's worth in all (18 publications), and one for each of the rest.
        assert sum(got) <= 20 + len(got), got


async def test_a_newest_publication_asked_for_comes_in_a_full_reply(hub: RunningHub) -> None:
    """A channel polled with ``latest`` and no cursor starts just before its newest
    publication: a reply already full must carry it all the same, or no poll ever would."""
    first = await stored(hub)
    for n in range(3):
        await hub.publish("feed:other", {"n": 100 + n})
    async with hub.http(headers=bearer("mallory")) as http:
        cursor = (await poll(http, CHANNEL, cursor=first, timeout=0))["cursor"]  # the allowance
        body = await poll(
            http, CHANNEL, "feed:other", cursor=cursor, latest="feed:other", timeout=0
        )
    got = [(p["channel"], p["data"]["n"]) for p in body["publications"]]
    assert ("feed:other", 102) in got and len(got) == 2, got


@pytest.mark.parametrize("engine", ["memory", "redis"])
async def test_a_resume_past_the_allowance_reads_a_page_not_the_history(
    hub_factory: Callable[..., Any],
    redis_server: RedisServer,  # noqa: F811
    engine: str,
) -> None:
    """A resume used to read everything after its cursor, up to the channel's
    ``history_size``, to send one publication: a reader over its allowance made the hub (and
    Redis) read thousands of publications per reconnect. It now reads a page of what it may
    be sent, on every transport that resumes."""
    many = 3000
    hub: RunningHub = await hub_factory(
        **settings(
            engine=redis_server.url if engine == "redis" else "memory",
            namespaces={"feed": {"history_size": 10_000}},
        )
    )
    first = hub.hub.cursor_of(await hub.hub.publish(CHANNEL, {"n": 0}))
    for n in range(1, many):
        await hub.hub.publish(CHANNEL, {"n": n, "text": TEXT})
    reads: list[int] = []
    read = hub.hub.engine.history

    async def counted(*args: Any, **kw: Any) -> Any:
        history = await read(*args, **kw)
        reads.append(len(history.publications))
        return history

    headers = bearer("mallory")
    async with hub.http(headers=headers) as http:  # the allowance, spent
        await http.get("/client/history", params={"channel": CHANNEL, "since": first})
    hub.hub.engine.history = counted  # type: ignore[method-assign]
    try:
        async with hub.ws(additional_headers=headers) as ws:
            assert (await ws.subscribe(CHANNEL, since=first))["ok"]["recovered"] is True
            assert (await ws.recv())["data"]["n"] == 1
            await ws.conn.wait_closed()
        async with sse(hub, CHANNEL, headers=headers, cursor=first) as stream:
            events = await stream.rest()
            assert [e.json()["data"]["n"] for e in events if e.event == "message"] == [1]
        async with stomp(hub) as client:
            await client.connect(passcode=headers["Authorization"].removeprefix("Bearer "))
            # A resume of its own, and one beside a live subscription (a shared destination).
            await client.send("SUBSCRIBE", id="1", destination="/topic/feed\\cbig", x_since=first)
            assert (await client.expect("MESSAGE")).json()["n"] == 1
            await client.expect("ERROR")
        async with stomp(hub) as client:
            await client.connect(passcode=headers["Authorization"].removeprefix("Bearer "))
            await client.send("SUBSCRIBE", id="1", destination="/topic/feed\\cbig", receipt="r")
            await client.expect("RECEIPT")
            await client.send("SUBSCRIBE", id="2", destination="/topic/feed\\cbig", x_since=first)
            assert (await client.expect("MESSAGE")).json()["n"] == 1
            await client.expect("ERROR")
    finally:
        hub.hub.engine.history = read  # type: ignore[method-assign]
    assert reads and max(reads) <= FIRST_PIECE, reads  # not the 2,999 after the cursor


async def test_a_reader_past_its_allowance_resumes_page_by_page_without_a_gap(
    hub: RunningHub,
) -> None:
    """Each resume is sent what it may be and closed as slow where more is stored (4001);
    the one that reaches the top goes live: every publication once, in order."""
    first = await stored(hub)
    headers = bearer("mallory")
    async with hub.http(headers=headers) as http:  # the allowance, spent
        await http.get("/client/history", params={"channel": CHANNEL, "since": first})
    await hub.publish(CHANNEL, {"n": STORED})
    newest, _ = await hub.hub.history(CHANNEL, limit=4, reverse=True)
    cursor, got = hub.hub.cursor_of(newest.publications[-1]), []  # three before the top
    for _ in range(10):
        async with hub.ws(additional_headers=headers) as ws:
            assert (await ws.subscribe(CHANNEL, since=cursor))["ok"]["recovered"] is True
            pub = await ws.recv()
            got.append(pub["data"]["n"])
            cursor = pub["cursor"]
            if pub["data"]["n"] < STORED:
                await ws.conn.wait_closed()
                assert ws.conn.close_code == 4001
                continue
            await hub.publish(CHANNEL, {"n": STORED + 1})  # live, on the stream that is
            got.append((await ws.recv())["data"]["n"])
            break
    assert got == [STORED - 2, STORED - 1, STORED, STORED + 1], got


async def test_over_the_allowance_a_busy_first_channel_holds_back_no_other(
    hub: RunningHub,
) -> None:
    """Over the allowance each poll carries one publication: the oldest any of its channels
    has for the client, whatever order the request names them in. (It was the first
    channel's that had one: a busy channel named first held every other back until it had
    nothing left.) Nothing is skipped or sent twice, and each channel keeps its order."""
    busy, quiet = "feed:busy", "feed:quiet"
    first = await stored(hub)
    async with hub.http(headers=bearer("mallory")) as http:
        await poll(http, CHANNEL, cursor=first, timeout=0)  # the allowance, spent
        cursor = (await poll(http, busy, quiet, timeout=0))["cursor"]
        for n in range(5):
            await hub.publish(busy, {"n": n, "text": TEXT})
        # Apart in time (the publications' clock counts milliseconds), so which is older is
        # not a tie.
        await asyncio.sleep(0.01)
        await hub.publish(quiet, {"n": 1000, "text": TEXT})
        await asyncio.sleep(0.01)
        for n in range(5, 10):
            await hub.publish(busy, {"n": n, "text": TEXT})
        got: list[tuple[str, int]] = []
        for _ in range(20):
            body = await poll(http, busy, quiet, cursor=cursor, timeout=0)
            assert len(body["publications"]) <= 1
            got += [(p["channel"], p["data"]["n"]) for p in body["publications"]]
            cursor = body["cursor"]
            if not body["publications"]:
                break
    assert [n for channel, n in got if channel == busy] == list(range(10))
    assert [n for channel, n in got if channel == quiet] == [1000]
    assert got.index((quiet, 1000)) == 5, got
