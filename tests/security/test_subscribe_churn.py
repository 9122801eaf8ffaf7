"""Subscriptions started per user (per address without one), across connections and transports.

One user at the per-user connection cap, 100 ``/sse`` streams of 128 channels with join/leave
events, each closed and reopened every 3 s: every reopen was 128 leaves and 128 joins, each
pushed to the user's other streams on each channel, work growing as the square of the
connections times the channels, and a bystander's p95 latency was 2.6 s. The per-connection
command budget came back with each new connection. Now every subscription a client starts — a
``subscribe`` op, STOMP ``SUBSCRIBE``, each channel of an ``/sse`` stream, each channel a
long-poll client joins the presence of — takes one from its user's (its address's)
``limits.client_subscribe_rate`` and ``client_subscribe_burst`` on the node: over it,
``rate_limited`` (``/sse``: 429 with ``Retry-After``), while other users go on. Counted in
subscriptions and events, not seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from clarion.core.auth import mint_token
from clarion.settings import NamespaceOptions

from ..conftest import RunningHub, timeout
from ..stomp.client import stomp
from ..transports.streams import error_code

pytestmark = pytest.mark.timeout(120)

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "churn-api-key"
CHANNELS = 16  # per connection: limits.max_subscriptions_per_connection below
BURST = 4 * CHANNELS  # a user's four connections' worth


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def token(user: str) -> str:
    return mint_token(SECRET, user, ["chat:*", "news:*"])


def settings(**limits: Any) -> dict[str, Any]:
    chat = NamespaceOptions(anonymous=True, join_leave="client", presence_read="anyone")
    news = NamespaceOptions(anonymous=True)  # no presence: every subscription counts all the same
    return {
        "token_secret": SECRET,
        "api_key": KEY,
        "namespaces": {"chat": chat, "news": news},
        "limits": {
            "max_subscriptions_per_connection": CHANNELS,
            # No refill to speak of within a test: what is started comes off the burst.
            "client_subscribe_rate": 0.001,
            "client_subscribe_burst": BURST,
            **limits,
        },
    }


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(**settings())
    return running


def rooms(prefix: str = "chat") -> list[str]:
    return [f"{prefix}:{n}" for n in range(CHANNELS)]


async def open_sse(http: httpx.AsyncClient, channels: list[str]) -> httpx.Response:
    """Open a stream and close it as soon as its head is in (a churner's reopen)."""
    async with http.stream("GET", "/sse", params={"channel": channels}) as response:
        if response.status_code != 200:
            await response.aread()
        return response


async def test_reopened_streams_are_refused_past_the_user_s_budget_while_others_go_on(
    hub: RunningHub,
) -> None:
    """The churner's streams open until its burst is spent, then each reopen is 429
    ``rate_limited`` with a ``Retry-After``; a watcher sees no more joins than that; another
    user's streams and subscriptions go on, and so does delivery to them."""
    async with (
        hub.http(headers=bearer("watcher")) as watching,
        watching.stream("GET", "/sse", params={"channel": "chat:0"}) as watch,
        hub.http(headers=bearer("mallory")) as mallory,
        hub.http(headers=bearer("bob")) as bob,
    ):
        assert watch.status_code == 200
        statuses = [(await open_sse(mallory, rooms())).status_code for _ in range(12)]
        assert statuses == [200] * (BURST // CHANNELS) + [429] * (12 - BURST // CHANNELS)
        refused = await open_sse(mallory, rooms())
        assert refused.status_code == 429 and error_code(refused) == "rate_limited"
        wait = int(refused.headers["retry-after"])
        assert wait >= 1
        assert refused.json()["error"]["retry_after"] == wait
        # Another user has a budget of its own: its streams open and deliver.
        async with bob.stream("GET", "/sse", params={"channel": rooms()}) as stream:
            assert stream.status_code == 200
            await hub.publish("chat:3", {"n": 1})
            seen = b""
            async with asyncio.timeout(timeout(5)):
                async for chunk in stream.aiter_bytes():
                    seen += chunk
                    if b'"n":1' in seen:
                        break
        # The watcher saw the churner join chat:0 only as often as its streams opened.
        await hub.publish("chat:0", {"end": True})
        text = ""
        async with asyncio.timeout(timeout(5)):
            async for chunk in watch.aiter_text():
                text += chunk
                if '"end":true' in text:
                    break
        joins = [b for b in text.split("\n\n") if "event: join" in b and "mallory" in b]
        assert len(joins) <= BURST // CHANNELS


async def test_reconnecting_escapes_no_budget_on_ws_and_stomp(hub: RunningHub) -> None:
    """A new connection does not bring a new allowance: subscribes on /ws connections that
    come and go, then STOMP ``SUBSCRIBE``, draw on the same one, and are refused past it with
    ``rate_limited`` (its ``retry_after`` in the error), while another user subscribes."""
    started = 0
    refused: list[dict[str, Any]] = []
    for _ in range(BURST // CHANNELS + 2):
        async with hub.ws(additional_headers=bearer("mallory")) as ws:
            for channel in rooms("news"):
                reply = await ws.subscribe(channel)
                if "ok" in reply:
                    started += 1
                else:
                    refused.append(reply["error"])
    assert started == BURST
    assert len(refused) == 2 * CHANNELS
    assert {e["code"] for e in refused} == {"rate_limited"}
    assert all(e["retry_after"] >= 1 for e in refused)
    async with stomp(hub) as client:
        await client.connect(Authorization=f"Bearer {token('mallory')}")
        await client.send("SUBSCRIBE", id="1", destination="/topic/news:0")
        error = await client.expect("ERROR")
        assert "client_subscribe_rate" in error.headers.get("message", "") + error.body.decode()
    async with hub.ws(additional_headers=bearer("bob")) as ws:
        for channel in rooms("news"):
            assert "ok" in await ws.subscribe(channel)


async def test_anonymous_clients_count_per_address(hub: RunningHub) -> None:
    """Without a user, the address is whom the allowance counts: anonymous connections from
    one address share it."""
    results: list[bool] = []
    for _ in range(BURST // CHANNELS + 1):
        async with hub.ws() as ws:
            results += ["ok" in await ws.subscribe(channel) for channel in rooms()]
    assert results == [True] * BURST + [False] * CHANNELS


async def test_long_poll_clients_joining_presence_count_too(hub: RunningHub) -> None:
    """A poll naming a new client joins its channels' presence as a subscribe does: past the
    budget it is answered, without an entry (no ``client`` given back); a known client's
    polls renew what it holds and take nothing."""
    async with hub.http(headers=bearer("mallory")) as http:
        given = [
            (await poll(http, *rooms(), client="")).get("client")
            for _ in range(BURST // CHANNELS + 2)
        ]
        assert all(given[: BURST // CHANNELS]) and given[BURST // CHANNELS :] == [None, None]
        for _ in range(5):
            body = await poll(http, *rooms(), client=given[0])
            assert body["client"] == given[0]
    async with hub.http(headers=bearer("bob")) as http:
        assert (await poll(http, *rooms(), client="")).get("client")


async def poll(http: httpx.AsyncClient, *channels: str, client: str) -> dict[str, Any]:
    """A plain poll of ``channels`` by the long-poll client ``client`` ("": a new one)."""
    params = {"channel": list(channels), "timeout": "0", "client": client}
    response = await http.get("/poll", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_several_tabs_resubscribing_everything_twice_are_not_refused(
    hub_factory: Callable[..., Any],
) -> None:
    """The defaults let an honest user's tabs come back at once: four tabs of 128 channels
    (two on /ws, one /sse stream, one long-poll client), dropped and reconnected all together."""
    running: RunningHub = await hub_factory(
        token_secret=SECRET,
        api_key=KEY,
        namespaces={"chat": NamespaceOptions(join_leave="client", presence_read="anyone")},
    )
    channels = [f"chat:{n}" for n in range(128)]

    async def ws_tab() -> None:
        async with running.ws(additional_headers=bearer("alice")) as ws:
            for channel in channels:
                reply = await ws.subscribe(channel)
                assert "ok" in reply, reply

    async def sse_tab(http: httpx.AsyncClient) -> None:
        async with http.stream("GET", "/sse", params={"channel": channels}) as response:
            assert response.status_code == 200

    async def poll_tab(http: httpx.AsyncClient) -> None:
        assert (await poll(http, *channels, client="")).get("client")

    async with running.http(headers=bearer("alice")) as http:
        for _ in range(2):  # connected, then all back after a blip
            await asyncio.gather(ws_tab(), ws_tab(), sse_tab(http), poll_tab(http))
