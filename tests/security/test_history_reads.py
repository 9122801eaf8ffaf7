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

from collections.abc import Callable
from typing import Any

import pytest

from clarion.core.auth import mint_token

from ..conftest import RunningHub
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


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(
        token_secret=SECRET,
        api_key=KEY,
        # No refill to speak of within a test: what a reader is sent comes off the burst.
        limits={"client_history_rate": 1, "client_history_burst": BURST},
    )
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
