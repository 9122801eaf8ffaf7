"""The browser client in headless Chromium against real hubs, where a connection or a stream
goes wrong: oversized requests, subscriptions made while attaching, a hub's narrower poll
bounds, outages, subscriptions made again during one, and the end of a client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from clarion.core.auth import mint_token
from clarion.protocol.cursor import encode_single

from ..conftest import RunningHub
from ..support.proxy import FaultProxy
from .chromium import chromium_context, needs_chromium
from .test_client_js import (
    MANY,
    SECRET,
    TRANSPORTS,
    alice,
    open_client,
    pubs,
    secured,
    subscribed,
    wait_for,
)

pytestmark = needs_chromium


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    async with chromium_context(tmp_path / "profile") as context:
        yield await context.new_page()


async def test_an_oversized_publish_over_websocket_is_refused_without_losing_the_client(
    page: Any, hub: RunningHub
) -> None:
    """The hub closes a WebSocket for good (1009) over a frame above its
    `max_message_bytes`: the client refuses the request itself, as the hub refuses it over
    HTTP, and everything else goes on."""
    sent: list[int] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(len(payload))))
    await open_client(page, hub, {"transports": ["ws"]})
    await wait_for(page, "window.sub.state === 'subscribed'")
    refused = await page.evaluate(
        "window.client.publish('chat:lobby', 'x'.repeat(70000))"
        ".then(() => null, (e) => ({code: e.code, limit: e.limit}))"
    )
    assert refused == {"code": "too_large", "limit": 65536}
    assert max(sent) < 65536
    await hub.publish("chat:lobby", "still here")
    assert await pubs(page, 1) == ["still here"]
    reply = await page.evaluate("window.client.publish('chat:lobby', 'x'.repeat(60000))")
    assert reply["offset"] == 2
    assert await page.evaluate("[window.client.state, window.sub.state]") == [
        "connected",
        "subscribed",
    ]
    assert await page.evaluate("window.log.states") == ["connecting:ws", "connected:ws"]


@pytest.mark.parametrize("event", ["connected", "state"])
async def test_a_subscription_made_while_the_client_attaches_is_sent_once(
    page: Any, hub: RunningHub, event: str
) -> None:
    """A page that (re)subscribes when the client connects: its handler runs while the client
    attaches every subscription, and the new one is attached with them, once."""
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(frame)))
    await page.goto(hub.http_url + "/healthz")
    await page.evaluate(
        """async (event) => {
            const { connect } = await import('/clarion.js');
            window.log = { pubs: [], events: [], states: [] };
            const client = connect(location.origin, { transports: ['ws'] });
            window.client = client;
            client.on(event, () => {
                if (client.state !== 'connected' || client.getSubscription('chat:lobby')) return;
                window.sub = client.subscribe('chat:lobby', {
                    onPublication: (p) => window.log.pubs.push(p.data),
                });
                const log = (e) => (d) => window.log.events.push(e + (d.code ? ':' + d.code : ''));
                for (const e of ['subscribed', 'unsubscribed', 'error']) window.sub.on(e, log(e));
            });
        }""",
        event,
    )
    await wait_for(page, "window.log.events.length > 0")
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", "delivered")
    assert await pubs(page, 1) == ["delivered"]
    assert await page.evaluate("window.log.events") == ["subscribed"]
    assert await page.evaluate("window.sub.state") == "subscribed"
    assert sum('"op":"subscribe"' in frame for frame in sent) == 1


@pytest.mark.parametrize(
    ("timeout_max", "options", "refused", "longest"),
    [(20, {}, [25], 10), (None, {"pollTimeout": 90}, [], 60), (5, {}, [25, 10], 0)],
    ids=["hub-max-20", "asked-90", "hub-max-5"],
)
async def test_long_polls_keep_within_the_hubs_bound(
    page: Any,
    hub_factory: Any,
    timeout_max: float | None,
    options: dict[str, Any],
    refused: list[float],
    longest: float,
) -> None:
    """A hub whose `poll.timeout_max` is below the client's poll timeout refuses the long poll
    (`bad_timeout`): the client asks for less, and its subscriptions go on."""
    hub = await hub_factory(**({"poll": {"timeout_max": timeout_max}} if timeout_max else {}))
    asked: list[float] = []

    def poll(request: Any) -> None:
        if "/poll?" in request.url:
            asked.append(float(parse_qs(urlsplit(request.url).query)["timeout"][0]))

    page.on("request", poll)
    await open_client(page, hub, {"transports": ["poll"], **options})
    await wait_for(page, "window.sub.state === 'subscribed'")
    await hub.publish("chat:lobby", 1)  # the poll's cursor holds the channel: nothing is missed
    assert await pubs(page, 1) == [1]
    await asyncio.sleep(1.5)  # long polls under way, or plain ones paced
    await hub.publish("chat:lobby", 2)
    assert await pubs(page, 2) == [1, 2]
    assert [e["event"] for e in await page.evaluate("window.log.events")] == [
        "subscribing",
        "subscribed",
    ]
    # Over the bound: the client's first long poll, then its fallback, each refused once.
    assert [t for t in asked if t > (timeout_max or 60)] == refused
    assert asked[-1] == longest


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_an_outage_of_tokens_is_told_as_on_websocket(
    page: Any, hub_factory: Any, transport: str
) -> None:
    """Short tokens, and getToken fails for a while: the stream cannot read, and the client
    says so as over WebSocket (disconnected, the subscription subscribing), then comes back."""
    hub = await secured(hub_factory)
    broken = {"on": False}

    def mint() -> str:
        if broken["on"]:
            raise RuntimeError("the token service is down")
        return alice(ttl=3)

    await page.expose_function("mintToken", mint)
    await open_client(page, hub, {"transports": [transport], "tokenFromPage": True})
    await wait_for(page, "window.sub.state === 'subscribed'")
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", "before")
    assert await pubs(page, 1) == ["before"]
    broken["on"] = True
    await wait_for(page, f"window.log.states.includes('disconnected:{transport}')")
    await wait_for(page, "window.sub.state === 'subscribing'")
    # It tries again as a WebSocket does: connecting, after each wait.
    await wait_for(
        page,
        f"window.log.states.lastIndexOf('connecting:{transport}')"
        f" > window.log.states.indexOf('disconnected:{transport}')",
    )
    broken["on"] = False
    await wait_for(page, f"window.log.states.at(-1) === 'connected:{transport}'")
    await wait_for(page, "window.sub.state === 'subscribed'")
    await hub.publish("chat:lobby", "after")
    assert await pubs(page, 2) == ["before", "after"]
    events = [e["event"] for e in await page.evaluate("window.log.events")]
    assert events[:2] == ["subscribing", "subscribed"]
    assert events[-2:] == ["subscribing", "subscribed"]
    assert "unsubscribed" not in events


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_subscription_made_again_during_an_outage_starts_from_now(
    page: Any, hub: RunningHub, transport: str
) -> None:
    """chat:b ends and is made again while the stream cannot read, so the stream's position
    still holds chat:b where the old subscription was: the new one, without `since`, starts
    from now all the same, as on WebSocket."""
    await open_client(page, hub, {"transports": [transport], "pollTimeout": 20}, None)
    await page.evaluate(MANY, ["chat:a", "chat:b"])
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")
    await hub.publish("chat:b", "b seen")
    assert await pubs(page, 1) == ["b seen"]
    await page.context.set_offline(True)
    for session in list(hub.hub.sessions.values()):
        session.close(4000)
    await page.evaluate("window.subs['chat:b'].unsubscribe()")
    for n in range(3):
        await hub.publish("chat:b", f"b old {n}")
    await page.evaluate(MANY, ["chat:b"])
    await page.context.set_offline(False)
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")
    await subscribed(hub, "chat:b")
    await hub.publish("chat:a", "a live")
    await hub.publish("chat:b", "b live")
    got = await pubs(page, 3)
    await asyncio.sleep(0.3)  # anything more would be here by now
    assert sorted(await page.evaluate("window.log.pubs")) == sorted(got)
    assert sorted(got) == ["a live", "b live", "b seen"]
    assert await page.evaluate("window.log.events") == []  # nothing refused


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_close_ends_every_subscription(page: Any, hub: RunningHub, transport: str) -> None:
    await open_client(page, hub, {"transports": [transport], "pollTimeout": 2})
    await wait_for(page, "window.sub.state === 'subscribed'")
    await page.evaluate("window.client.close()")
    assert await page.evaluate("window.sub.state") == "unsubscribed"
    events = await page.evaluate("window.log.events")
    assert [(e["event"], e.get("reason")) for e in events] == [
        ("subscribing", None),
        ("subscribed", None),
        ("unsubscribed", "client"),
    ]
    assert await page.evaluate("window.client.getSubscription('chat:lobby')") is None
    assert (await page.evaluate("window.log.states"))[-1] == f"closed:{transport}"


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_failing_token_refresh_is_retried_with_backoff(
    page: Any, hub_factory: Any, transport: str
) -> None:
    """getToken fails from its second call on: the scheduled refresh asks it again after the
    client's backoff (here 0.9 s, 1.8 s, 3.6 s, …), not every half second."""
    hub = await secured(hub_factory)
    calls: list[int] = []

    def mint() -> str:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("the token service is down")
        return alice(ttl=3)

    await page.expose_function("mintToken", mint)
    await page.goto(hub.http_url + "/healthz")
    await page.evaluate("Math.random = () => 0.9")  # the backoff's delays, made exact
    options = {"backoffBase": 1000, "backoffCap": 4000, "pollTimeout": 2}
    await open_client(page, hub, {"transports": [transport], "tokenFromPage": True, **options})
    await wait_for(page, "window.sub.state === 'subscribed'")
    await asyncio.sleep(9)
    # The refresh timer and the stream, which asks for a token each time it is refused.
    assert len(calls) <= 12, len(calls)
    assert await page.evaluate("window.sub.state") == "subscribing"


async def test_a_token_that_no_longer_allows_the_channel_is_an_error_then_the_end(
    page: Any, hub_factory: Any
) -> None:
    """Over WebSocket the refreshed token's loss of the channel is told as over SSE and
    polling, where the reopened stream is refused: error (forbidden), then unsubscribed."""
    hub = await secured(hub_factory)
    tokens = [alice(ttl=4), mint_token(SECRET, "alice", ["news:*"], ttl=3600)]
    await page.expose_function("mintToken", lambda: tokens.pop(0) if len(tokens) > 1 else tokens[0])
    await open_client(page, hub, {"transports": ["ws"], "tokenFromPage": True})
    await wait_for(page, "window.sub.state === 'subscribed'")
    await page.evaluate(
        "() => { window.sub.on('error', (e) => window.log.events.push({event: 'error',"
        " code: e.code, channel: e.channel})); }"
    )
    await wait_for(page, "window.sub.state === 'unsubscribed'")
    events = await page.evaluate("window.log.events")
    assert [(e["event"], e.get("code") or e.get("reason")) for e in events] == [
        ("subscribing", None),
        ("subscribed", None),
        ("error", "forbidden"),
        ("unsubscribed", "forbidden"),
    ]
    assert events[2]["channel"] == "chat:lobby"
    assert await page.evaluate("window.client.state") == "connected"


@pytest.fixture
async def proxy(hub: RunningHub) -> AsyncIterator[FaultProxy]:
    proxied = await FaultProxy(hub.port).start()
    yield proxied
    await proxied.close()


@pytest.mark.parametrize("transport", ["ws", "poll"])
async def test_a_connection_that_dies_without_closing_is_replaced(
    page: Any, hub: RunningHub, proxy: FaultProxy, transport: str
) -> None:
    """A NAT that forgot the connection, a laptop woken on another network: nothing closes, and
    a browser shows nothing (it answers the hub's pings out of the page's sight). The client
    once stayed "connected" for good, receiving nothing, its calls waiting for ever."""
    options = {
        "hubUrl": f"http://127.0.0.1:{proxy.port}",
        "transports": [transport],
        "pingInterval": 500,
        "pongTimeout": 500,
        "pollTimeout": 1,
        "openTimeout": 1000,
    }
    await open_client(page, hub, options)
    await wait_for(page, f"window.log.states.includes('connected:{transport}')")
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", "before")
    assert await pubs(page, 1) == ["before"]
    assert proxy.freeze() >= 1
    await hub.publish("chat:lobby", "while dead")
    # Taken for dead, replaced over a new connection, resumed from the cursor.
    assert await pubs(page, 2, seconds=15) == ["before", "while dead"]
    await hub.publish("chat:lobby", "after")
    assert await pubs(page, 3) == ["before", "while dead", "after"]


async def test_a_call_the_hub_does_not_answer_rejects_with_timeout(
    page: Any, hub: RunningHub, proxy: FaultProxy
) -> None:
    options = {
        "hubUrl": f"http://127.0.0.1:{proxy.port}",
        "transports": ["ws"],
        "pingInterval": 60000,
        "requestTimeout": 700,
    }
    await open_client(page, hub, options)
    await wait_for(page, "window.sub.state === 'subscribed'")
    proxy.freeze()
    refused = await page.evaluate(
        "window.client.publish('chat:lobby', 1).then(() => null,"
        " (e) => ({code: e.code, message: e.message}))"
    )
    assert refused == {"code": "timeout", "message": "no answer to publish within 700 ms"}


async def page_with_tokens(page: Any, hub_factory: Any) -> None:
    """A page on a hub with tokens, which mints alice's with ``window.mintToken()``."""
    hub = await secured(hub_factory)
    await page.goto(hub.http_url + "/healthz")
    await page.expose_function("mintToken", lambda: alice())


async def test_a_get_token_that_never_settles_is_an_error_and_tried_again(
    page: Any, hub_factory: Any
) -> None:
    await page_with_tokens(page, hub_factory)
    # A getToken that hangs the first time, then gives a token.
    await page.evaluate(
        """async () => {
            const { connect } = await import('/clarion.js');
            window.asked = 0;
            window.hang = () => new Promise(() => {});
            window.errors = [];
            window.client = connect(location.origin, {
                transports: ['ws'], tokenTimeout: 300, backoffBase: 50,
                getToken: () => (++window.asked === 1 ? window.hang() : window.mintToken()),
            });
            window.client.on('error', (e) => window.errors.push(e.code));
        }"""
    )
    await wait_for(page, "window.client.state === 'connected'")
    assert await page.evaluate("window.errors") == ["timeout"]


async def test_a_call_before_the_first_connection_carries_the_token(
    page: Any, hub_factory: Any
) -> None:
    """It went to the client API without one (403 "no token was given"), on every transport."""
    await page_with_tokens(page, hub_factory)
    reply = await page.evaluate(
        """async () => {
            const { connect } = await import('/clarion.js');
            const client = connect(location.origin, {
                transports: ['ws'], getToken: () => window.mintToken(),
            });
            try { return await client.publish('chat:lobby', 'early'); }
            catch (e) { return {code: e.code, message: e.message}; }
            finally { client.close(); }
        }"""
    )
    assert reply["offset"] == 1, reply


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_subscriptions_that_change_faster_than_the_hub_answers_starve_no_channel(
    page: Any, hub: RunningHub, proxy: FaultProxy, transport: str
) -> None:
    """Each change reopens the one stream (or poll loop) of every subscription. Each reopening
    cut the one before it short, before it read anything: with a subscription toggled every
    250 ms and a hub 400 ms away, a channel nobody touched once got 20 of 990 publications
    while it went on over polling, and none over SSE (toggled every 150 ms here). A poll loop
    now gets its first reply before it restarts; an event stream goes on until the one that
    replaces it has opened."""
    proxy.latency = 0.2  # each way: a poll is answered, a stream opens, in 0.4 s at best
    options = {"hubUrl": f"http://127.0.0.1:{proxy.port}", "transports": [transport]}
    await open_client(page, hub, options)
    await wait_for(page, "window.sub.state === 'subscribed'", seconds=15)
    await page.evaluate(
        """() => {
            let sub = null;
            window.toggling = setInterval(() => {
                if (sub) { sub.unsubscribe(); sub = null; }
                else sub = window.client.subscribe('chat:toggled');
            }, 150);
        }"""
    )
    for n in range(30):
        await hub.publish("chat:lobby", n)
        await asyncio.sleep(0.1)
    during = len(await page.evaluate("window.log.pubs"))
    await page.evaluate("clearInterval(window.toggling)")
    assert during >= 15, during  # half of them while the toggling went on (none before)
    assert await pubs(page, 30, seconds=15) == list(range(30))


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_subscription_toggled_while_publications_flow_loses_and_repeats_nothing(
    page: Any, hub: RunningHub, proxy: FaultProxy, transport: str
) -> None:
    """Reopenings while both channels publish: over SSE the stream that replaces another opens
    from where that one was asked (the old one delivers meanwhile, and the new one delivers it
    again), over polling a loop restarts after its first reply. The channel nobody touches and
    the toggled one, each subscription of it resuming where the last one ended, get every
    publication once, in order."""
    proxy.latency = 0.1
    options = {"hubUrl": f"http://127.0.0.1:{proxy.port}", "transports": [transport]}
    await open_client(page, hub, options)
    await wait_for(page, "window.sub.state === 'subscribed'", seconds=15)
    start = await hub.publish("chat:toggled", "start")
    since = encode_single("chat:toggled", start["epoch"], start["offset"])
    await page.evaluate(
        """(since) => {
            window.toggled = [];
            window.toggledSince = since;
            window.toggle = () => {
                const sub = window.toggledSub;
                if (sub) {
                    window.toggledSince = sub.cursor || window.toggledSince;
                    sub.unsubscribe();
                    window.toggledSub = null;
                    return;
                }
                window.toggledSub = window.client.subscribe('chat:toggled', {
                    since: window.toggledSince,
                    onPublication: (p) => window.toggled.push(p.data),
                });
            };
            window.toggle();
            window.toggling = setInterval(window.toggle, 230);
        }""",
        since,
    )
    count = 60
    for n in range(count):
        await hub.publish("chat:lobby", n)
        await hub.publish("chat:toggled", n)
        await asyncio.sleep(0.05)
    await page.evaluate("clearInterval(window.toggling); window.toggledSub || window.toggle()")
    assert await pubs(page, count, seconds=15) == list(range(count))
    await wait_for(page, f"window.toggled.length >= {count}", seconds=15)
    await asyncio.sleep(0.5)  # a repeat would come with the next reopening
    assert await page.evaluate("window.log.pubs") == list(range(count))
    assert await page.evaluate("window.toggled") == list(range(count))


@pytest.mark.parametrize("close_delay", [0.0, 0.7, 1.2])
async def test_a_stream_replaced_at_the_hubs_connection_cap_cuts_the_old_one_first(
    page: Any, hub_factory: Any, close_delay: float
) -> None:
    """A hub that allows one connection per address refuses (too_many_connections) the stream
    asked beside the open one to replace it: the client cuts the old one, asks again, and goes
    on with both channels, where that refusal would otherwise close it. A hub that notices the
    cut late (a busy one; here a proxy holds each close 0.7 s or 1.2 s, past the first tries
    again: 50, 100, 200 ms later with the tests' backoffBase) refuses the next tries too: the
    client tries a few times, each waiting longer."""
    hub = await hub_factory(limits={"max_connections_per_ip": 1})
    proxy = await FaultProxy(hub.port).start()
    proxy.close_delay = close_delay
    try:
        await replace_at_the_cap(page, hub, proxy)
    finally:
        await proxy.close()


async def replace_at_the_cap(page: Any, hub: RunningHub, proxy: FaultProxy) -> None:
    options = {"hubUrl": f"http://127.0.0.1:{proxy.port}", "transports": ["sse"]}
    await open_client(page, hub, options)
    await wait_for(page, "window.sub.state === 'subscribed'")
    await hub.publish("chat:lobby", 1)
    assert await pubs(page, 1) == [1]
    await page.evaluate(
        """() => {
            window.other = [];
            window.client.subscribe('chat:other', {
                onPublication: (p) => window.other.push(p.data),
            });
        }"""
    )
    await wait_for(page, "window.client.getSubscription('chat:other')?.state === 'subscribed'")
    await hub.publish("chat:lobby", 2)
    await hub.publish("chat:other", "other")
    assert await pubs(page, 2) == [1, 2]
    assert await wait_for(page, "window.other.length && window.other") == ["other"]
    assert await page.evaluate("[window.client.state, window.sub.state]") == [
        "connected",
        "subscribed",
    ]


async def test_a_subscribe_in_flight_when_the_connection_drops_is_made_again(
    page: Any, hub: RunningHub, proxy: FaultProxy
) -> None:
    """The drop fails what waits for an answer. A subscribe among it is no refusal: the next
    connection makes it again (a call, by contrast, rejects with code connection_lost)."""
    options = {"hubUrl": f"http://127.0.0.1:{proxy.port}", "transports": ["ws"]}
    await open_client(page, hub, options)
    await wait_for(page, "window.sub.state === 'subscribed'")
    proxy.latency = 0.3  # the subscribe's answer is on its way when the connection goes
    await page.evaluate(
        """() => {
            window.late = window.client.subscribe('chat:late', {
                onPublication: (p) => window.log.pubs.push(p.data),
            });
            window.call = window.client.history('chat:lobby')
                .then(() => 'answered', (e) => e.code);
        }"""
    )
    await asyncio.sleep(0.1)
    assert proxy.reset() >= 1
    proxy.latency = 0
    assert await wait_for(page, "window.call") == "connection_lost"
    await wait_for(page, "window.late.state === 'subscribed'", seconds=15)
    await hub.publish("chat:late", "made again")
    assert await pubs(page, 1) == ["made again"]
