"""The browser client in headless Chromium against real hubs: every transport, every fallback
step, token refresh, publishing with a user's token, resume after a reload."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from clarion import Hub, Settings
from clarion.core.auth import mint_token
from clarion.protocol.cursor import encode_single

from ..conftest import RunningHub, start_hub, stop_hub, timeout, until
from ..docblocks import ROOT, blocks
from .chromium import chromium_context, needs_chromium

pytestmark = needs_chromium
SECRET = "browser-test-secret-0123456789abcdef"
TRANSPORTS = ["ws", "sse", "poll"]


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    async with chromium_context(tmp_path / "profile") as context:
        yield context


@pytest.fixture
async def page(browser: Any) -> Any:
    return await browser.new_page()


async def secured(hub_factory: Any, **kw: Any) -> RunningHub:
    hub: RunningHub = await hub_factory(
        token_secret=SECRET, api_key="backend-key", allowed_origins=["http://127.0.0.1:*"], **kw
    )
    return hub


def alice(ttl: float = 3600) -> str:
    return mint_token(SECRET, "alice", ["chat:*"], publish=["chat:*"], ttl=ttl)


# The page under test: one client, everything it sees recorded on window.
SETUP = """async ([options, channel, subscribeOptions]) => {
    const { connect } = await import('/clarion.js');
    window.log = { pubs: [], events: [], states: [], tokens: 0 };
    const opts = { backoffBase: 50, backoffCap: 1000, ...options };
    if (opts.tokenFromPage) {
        opts.getToken = async () => { window.log.tokens += 1; return await window.mintToken(); };
    }
    if (opts.useStore) opts.store = localStorage;
    window.client = connect(opts.hubUrl ?? location.origin, opts);
    for (const s of ['connecting', 'connected', 'disconnected', 'closed']) {
        window.client.on(s, (e) => window.log.states.push(s + ':' + e.transport
            + (e.code ? ':' + e.code : '')));
    }
    if (channel) {
        window.sub = window.client.subscribe(channel, {
            ...subscribeOptions,
            onPublication: (p) => window.log.pubs.push(p.data),
        });
        for (const e of ['subscribing', 'subscribed', 'reset', 'unsubscribed']) {
            window.sub.on(e, (d) => window.log.events.push({ event: e, ...d }));
        }
    }
}"""


async def open_client(
    page: Any,
    hub: RunningHub,
    options: dict[str, Any],
    channel: str | None = "chat:lobby",
    subscribe: dict[str, Any] | None = None,
) -> None:
    if not page.url.endswith(f":{hub.port}/healthz"):
        await page.goto(hub.http_url + "/healthz")  # the hub's origin
    await page.evaluate(SETUP, [options, channel, subscribe or {}])


async def wait_for(page: Any, expression: str, seconds: float = 10) -> Any:
    try:
        await page.wait_for_function(expression, timeout=timeout(seconds) * 1000)
    except Exception as exc:  # say what the page saw, not only that it timed out
        log = await page.evaluate(
            "window.log && [window.log.events, window.log.states, window.log.pubs]"
        )
        raise AssertionError(
            f"{expression} never held; the client's events, states and publications: {log}"
        ) from exc
    return await page.evaluate(expression)


async def pubs(page: Any, count: int, seconds: float = 10) -> list[Any]:
    await wait_for(page, f"window.log.pubs.length >= {count}", seconds)
    result: list[Any] = await page.evaluate("window.log.pubs")
    return result


async def subscribed(hub: RunningHub, channel: str, count: int = 1) -> None:
    for _ in range(int(timeout(10) / 0.05)):
        if sum(channel in s.subscriptions for s in hub.hub.sessions.values()) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"nobody subscribed to {channel}")


async def test_the_hub_serves_the_client_package(hub: RunningHub) -> None:
    package = Path(__file__).parents[2] / "clients" / "js" / "clarion.js"
    async with hub.http() as http:
        r = await http.get("/clarion.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.content == package.read_bytes()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_transport_refreshes_five_second_tokens(
    page: Any, hub_factory: Any, transport: str
) -> None:
    hub = await secured(hub_factory)
    await page.expose_function("mintToken", lambda: alice(ttl=5))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await open_client(
        page, hub, {"transports": [transport], "tokenFromPage": True, "pollTimeout": 2}
    )
    await wait_for(page, f"window.log.states.includes('connected:{transport}')")
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", "before")
    assert await pubs(page, 1) == ["before"]
    # Past two expiries: publications keep coming, with new tokens.
    await asyncio.sleep(11)
    await hub.publish("chat:lobby", "after")
    assert await pubs(page, 2) == ["before", "after"]
    assert await page.evaluate("window.log.tokens") >= 3
    assert await page.evaluate("window.client.transport") == transport
    if transport == "ws":
        # Refreshed on the open connection: never closed, the token never in a URL.
        assert not [s for s in await page.evaluate("window.log.states") if "disconnected" in s]
        assert sockets and all("token" not in url for url in sockets)
    else:
        assert not sockets


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_transport_publishes_with_the_users_token(
    page: Any, hub_factory: Any, transport: str
) -> None:
    hub = await secured(hub_factory)
    token = alice()
    await open_client(page, hub, {"transports": [transport], "token": token})
    await wait_for(page, f"window.log.states.includes('connected:{transport}')")
    await subscribed(hub, "chat:lobby")
    reply = await page.evaluate("window.client.publish('chat:lobby', {text: 'hi'})")
    assert reply["offset"] == 1
    assert await pubs(page, 1) == [{"text": "hi"}]
    history = await page.evaluate("window.client.history('chat:lobby', {limit: 10})")
    assert [p["data"] for p in history["publications"]] == [{"text": "hi"}]
    presence = await page.evaluate("window.client.presence('chat:lobby')")
    # A long-poll client too: one client across its polls.
    assert [(c["user"], c["transport"]) for c in presence["clients"]] == [("alice", transport)]
    stats = await page.evaluate("window.client.presenceStats('chat:lobby')")
    assert stats == {"clients": 1, "users": 1}
    # The token's permissions hold on every transport: no publishing to other channels.
    refused = await page.evaluate(
        "window.client.publish('news:x', 1).then(() => null, (e) => e.code)"
    )
    assert refused == "forbidden"


async def test_falls_back_from_websocket_to_sse_then_poll(page: Any, hub: RunningHub) -> None:
    # A proxy that refuses upgrades, then one that cuts event streams.
    async def refuse(ws: Any) -> None:
        await ws.close()

    await page.route_web_socket("**/ws", refuse)
    await open_client(page, hub, {})
    await wait_for(page, "window.log.states.includes('connected:sse')")
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", 1)
    assert await pubs(page, 1) == [1]

    await page.route("**/sse?*", lambda route: route.abort())
    for session in list(hub.hub.sessions.values()):
        session.close(4000)
    await wait_for(page, "window.log.states.includes('connected:poll')")
    await hub.publish("chat:lobby", 2)
    assert await pubs(page, 2) == [1, 2]
    assert await page.evaluate("window.client.transport") == "poll"


@pytest.mark.parametrize("transports", [TRANSPORTS, TRANSPORTS[1:]], ids=["ws", "sse"])
async def test_a_hub_that_is_down_is_retried_on_the_same_transport(
    page: Any, hub: RunningHub, transports: list[str]
) -> None:
    # The hub restarts on its port. While it is down every attempt fails and so does the health
    # check after it; the third health check is held until the hub is back, as a slow network
    # would deliver it: the hub answers it, though the transport failed only for its absence.
    transport = transports[0]
    checks = 0
    asked, back = asyncio.Event(), asyncio.Event()

    async def health(route: Any) -> None:
        nonlocal checks
        checks += 1
        if checks == 3:
            asked.set()
            await back.wait()
        await route.continue_()

    await open_client(page, hub, {"transports": transports})
    await wait_for(page, f"window.log.states.includes('connected:{transport}')")
    await subscribed(hub, "chat:lobby")
    await page.route("**/healthz", health)
    await stop_hub(hub)  # it stops listening, then tells its clients to come back (4000)
    await asyncio.wait_for(asked.wait(), timeout(10))
    again = await start_hub(hub=Hub(Settings()), port=hub.port)
    try:
        back.set()
        await wait_for(
            page, f"window.log.states.filter((s) => s === 'connected:{transport}').length >= 2"
        )
        states = await page.evaluate("window.log.states")
        assert states.count(f"connecting:{transport}") >= 3
        assert all(s.split(":")[1] == transport for s in states), states
        await subscribed(again, "chat:lobby")
        await again.publish("chat:lobby", "up")
        assert await pubs(page, 1) == ["up"]
    finally:
        await stop_hub(again)


async def test_a_proxys_error_page_for_a_hub_that_is_down_is_no_answer(
    page: Any, hub: RunningHub
) -> None:
    # Behind a proxy, a hub that is down still gets an answer to its health check: the proxy's
    # own 502 page. That is no sign the hub is up: the client stays on its transport.
    async def proxy(route: Any) -> None:
        await route.fulfill(status=502, content_type="text/html", body="<h1>Bad Gateway</h1>")

    await open_client(page, hub, {})
    await wait_for(page, "window.log.states.includes('connected:ws')")
    await subscribed(hub, "chat:lobby")
    await page.route("**/healthz", proxy)
    await stop_hub(hub)
    await wait_for(page, "window.log.states.filter((s) => s === 'connecting:ws').length >= 4")
    await page.unroute("**/healthz")
    again = await start_hub(hub=Hub(Settings()), port=hub.port)
    try:
        await wait_for(page, "window.log.states.filter((s) => s === 'connected:ws').length >= 2")
        states = await page.evaluate("window.log.states")
        assert all(s.split(":")[1] == "ws" for s in states), states
        await subscribed(again, "chat:lobby")
        await again.publish("chat:lobby", "up")
        assert await pubs(page, 1) == ["up"]
    finally:
        await stop_hub(again)


async def test_a_page_of_another_origin_falls_back_too(page: Any, hub_factory: Any) -> None:
    # The health check is read across origins (the hub allows it): the page at localhost, the
    # hub at 127.0.0.1, a proxy that refuses upgrades.
    hub = await hub_factory(allowed_origins=["http://localhost:*"])

    async def refuse(ws: Any) -> None:
        await ws.close()

    await page.route_web_socket("**/ws", refuse)
    await page.goto(f"http://localhost:{hub.port}/healthz")
    await open_client(page, hub, {"hubUrl": hub.http_url})
    await wait_for(page, "window.log.states.includes('connected:sse')")
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", 1)
    assert await pubs(page, 1) == [1]


async def test_the_hubs_refusal_before_the_connect_reply_is_no_transport_failure(
    page: Any, browser: Any, hub_factory: Any
) -> None:
    # A stale token cookie: the hub accepts the upgrade, says why it refuses and closes (4500).
    # The WebSocket works, so the client ends as the code says instead of stepping down.
    hub = await secured(hub_factory)
    await browser.add_cookies([{"name": "clarion_token", "value": "stale", "url": hub.http_url}])
    await open_client(page, hub, {})
    await wait_for(page, "window.client.state === 'closed'")
    states = await page.evaluate("window.log.states")
    assert states == ["connecting:ws", "disconnected:ws:4500", "closed:ws"], states


async def test_the_first_state_reaches_handlers_added_after_connect(
    page: Any, hub: RunningHub
) -> None:
    await open_client(page, hub, {})
    await wait_for(page, "window.log.states.includes('connected:ws')")
    assert await page.evaluate("window.log.states") == ["connecting:ws", "connected:ws"]


async def blocking_websockets(page: Any) -> dict[str, bool]:
    """The page's WebSockets to ``/ws`` are closed at once while ``["on"]`` holds."""
    blocked = {"on": True}

    async def ws_route(ws: Any) -> None:
        if blocked["on"]:
            await ws.close()
        else:
            ws.connect_to_server()

    await page.route_web_socket("**/ws", ws_route)
    return blocked


async def test_moves_back_up_once_the_websocket_works_again(page: Any, hub: RunningHub) -> None:
    blocked = await blocking_websockets(page)
    await open_client(page, hub, {"upgradeInterval": 500})
    await wait_for(page, "window.log.states.includes('connected:sse')")
    await hub.publish("chat:lobby", 1)
    assert await pubs(page, 1) == [1]
    blocked["on"] = False
    await wait_for(page, "window.log.states.includes('connected:ws')")
    await hub.publish("chat:lobby", 2)
    assert await pubs(page, 2) == [1, 2]
    assert await page.evaluate("window.client.transport") == "ws"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reload_resumes_from_the_stored_cursor(
    page: Any, hub: RunningHub, transport: str
) -> None:
    await open_client(page, hub, {"transports": [transport], "useStore": True})
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", 1)
    assert await pubs(page, 1) == [1]
    await page.reload()
    for n in (2, 3):  # while the page is away
        await hub.publish("chat:lobby", n)
    await open_client(page, hub, {"transports": [transport], "useStore": True})
    assert await pubs(page, 2) == [2, 3]
    events = await page.evaluate("window.log.events")
    assert [e["event"] for e in events][:2] == ["subscribing", "subscribed"]
    assert events[1]["recovered"] is True


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_subscription_events_and_a_server_side_unsubscribe(
    page: Any, hub: RunningHub, transport: str
) -> None:
    await open_client(page, hub, {"transports": [transport]})
    await wait_for(page, "window.log.events.some((e) => e.event === 'subscribed')")
    await subscribed(hub, "chat:lobby")
    # Every session holding the subscription: all are this page's, and an earlier stream the
    # hub has not yet seen close may still be listed beside the live one.
    holders = [c for c, s in hub.hub.sessions.items() if "chat:lobby" in s.subscriptions]
    assert holders
    async with hub.http() as http:
        for client in holders:
            r = await http.post(
                "/api/unsubscribe", json={"client": client, "channel": "chat:lobby"}
            )
            assert r.status_code == 200
    await wait_for(page, "window.log.events.some((e) => e.event === 'unsubscribed')")
    events = await page.evaluate("window.log.events")
    assert [e["event"] for e in events] == ["subscribing", "subscribed", "unsubscribed"]
    assert events[1]["recovered"] is True
    assert events[2]["reason"] == "server"
    assert await page.evaluate("window.client.getSubscription('chat:lobby')") is None


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_signals_pass_without_moving_the_cursor(
    page: Any, hub_factory: Any, transport: str
) -> None:
    hub = await secured(hub_factory)
    await open_client(page, hub, {"transports": [transport], "token": alice()})
    await wait_for(page, f"window.log.states.includes('connected:{transport}')")
    await subscribed(hub, "chat:lobby")
    await page.evaluate(
        "() => { window.seen = []; window.sub.on('publication', (p) => window.seen.push(p)); }"
    )
    stored = await page.evaluate("window.client.publish('chat:lobby', 'stored')")
    await pubs(page, 1)
    assert await page.evaluate("window.sub.cursor") == stored["cursor"]
    # A poll gets the signals that come while it waits: send until one arrives.
    signal = "window.client.publish('chat:lobby', {x: 1}, {ephemeral: true, key: 'alice'})"
    for _ in range(int(timeout(10) / 0.1)):
        assert await page.evaluate(signal) == {"ephemeral": True}
        await asyncio.sleep(0.1)
        if await page.evaluate("window.seen.length") >= 2:
            break
    seen = await page.evaluate("window.seen[1]")
    assert seen["ephemeral"] is True and seen["key"] == "alice" and seen["data"] == {"x": 1}
    assert "cursor" not in seen and "offset" not in seen
    assert seen["info"]["user"] == "alice"
    assert await page.evaluate("window.sub.cursor") == stored["cursor"]  # it moved nothing
    after = await hub.publish("chat:lobby", "stored again")
    assert after["offset"] == stored["offset"] + 1
    await wait_for(page, "window.log.pubs.includes('stored again')")
    assert await page.evaluate("window.sub.cursor") == after["cursor"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reset_is_told_with_its_reason(page: Any, hub: RunningHub, transport: str) -> None:
    await hub.publish("chat:lobby", 1)
    # A cursor of an epoch the channel never had: history cannot cover the gap.
    stale = encode_single("chat:lobby", "000000000000", 1)
    await open_client(page, hub, {"transports": [transport]}, subscribe={"since": stale})
    await wait_for(page, "window.log.events.some((e) => e.event === 'reset')")
    reset = next(e for e in await page.evaluate("window.log.events") if e["event"] == "reset")
    assert reset["reason"] == "epoch" and reset["cursor"] != stale
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", 2)
    assert await pubs(page, 1) == [2]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_latest_gives_the_newest_stored_publication_first(
    page: Any, hub: RunningHub, transport: str
) -> None:
    for n in (1, 2):
        await hub.publish("chat:lobby", n)
    await open_client(page, hub, {"transports": [transport]}, subscribe={"latest": True})
    assert await pubs(page, 1) == [2]
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", 3)
    assert await pubs(page, 2) == [2, 3]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_latest_is_each_subscriptions_own_on_a_shared_stream(
    page: Any, hub: RunningHub, transport: str
) -> None:
    """Two subscriptions made together, one asking for ``latest``: one request names that
    channel alone, so only the one that asked gets its channel's newest stored publication."""
    await hub.publish("chat:old", "stored")
    await hub.publish("chat:news", "newest")
    await open_client(page, hub, {"transports": [transport], "pollTimeout": 20}, None)
    await page.evaluate(
        """() => {
            const log = (p) => window.log.pubs.push(p.channel + ' ' + p.data);
            window.client.subscribe('chat:old', { onPublication: log });
            window.client.subscribe('chat:news', { onPublication: log, latest: true });
        }"""
    )
    assert await pubs(page, 1) == ["chat:news newest"]
    await subscribed(hub, "chat:old")
    await subscribed(hub, "chat:news")
    await hub.publish("chat:old", "live")
    assert await pubs(page, 2) == ["chat:news newest", "chat:old live"]


@contextlib.contextmanager
def static_site(folder: Path) -> Iterator[str]:
    """``python3 -m http.server`` on a loopback port of its own, serving ``folder``."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_the_page_in_the_guide_runs_as_written(
    page: Any, hub: RunningHub, tmp_path: Path
) -> None:
    """The "html" page of docs/client.md, served as the guide says: from a site of its own on
    a loopback port, talking to the hub at the address it names (here the test's hub)."""
    (html,) = [b.text for b in blocks(ROOT / "docs" / "client.md") if b.lang == "html"]
    assert html.count("http://127.0.0.1:8000") == 2
    (tmp_path / "lobby.html").write_text(html.replace("http://127.0.0.1:8000", hub.http_url))

    with static_site(tmp_path) as site:
        await page.goto(site + "/lobby.html")
        await page.wait_for_function(
            "document.getElementById('transport').textContent === 'ws'",
            timeout=timeout(10) * 1000,
        )
        await subscribed(hub, "chat:lobby")
        await hub.publish("chat:lobby", {"text": "from the backend"})
        await page.fill("#text", "from the page")
        await page.click("button")
        items = page.locator("#messages li")
        await items.nth(1).wait_for(timeout=timeout(10) * 1000)
        assert await items.all_text_contents() == ["from the backend", "from the page"]
        # Reloaded, it resumes after what it showed: nothing twice, nothing missed.
        await page.goto("about:blank")
        await hub.publish("chat:lobby", {"text": "while reloading"})
        await page.goto(site + "/lobby.html")
        await items.first.wait_for(timeout=timeout(10) * 1000)
        assert await items.all_text_contents() == ["while reloading"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_disconnected_user_is_told_and_not_reconnected(
    page: Any, hub_factory: Any, transport: str
) -> None:
    hub = await secured(hub_factory)
    await open_client(page, hub, {"transports": [transport], "token": alice(), "pollTimeout": 2})
    await wait_for(page, f"window.log.states.includes('connected:{transport}')")
    await subscribed(hub, "chat:lobby")
    async with hub.http() as http:
        r = await http.post(
            "/api/disconnect",
            json={"user": "alice"},
            headers={"authorization": "apikey backend-key"},
        )
        assert r.status_code == 200
    await wait_for(page, "window.log.states.includes('closed:' + window.client.transport)")
    states = await page.evaluate("window.log.states")
    assert f"disconnected:{transport}:4501" in states
    events = await page.evaluate("window.log.events")
    assert events[-1]["event"] == "unsubscribed"
    await asyncio.sleep(1)
    assert not hub.hub.sessions  # it did not come back
    assert (await page.evaluate("window.log.states"))[-1] == f"closed:{transport}"
    # Nor does anything else it is asked: a closed client makes no request.
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    for call in ("publish('chat:lobby', 1)", "history('chat:lobby')", "presence('chat:lobby')"):
        refused = await page.evaluate(f"window.client.{call}.then(() => 'sent', (e) => e.message)")
        assert refused == "the client is closed"
    assert requests == []


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_join_and_leave_reach_the_subscription(
    page: Any, hub_factory: Any, transport: str
) -> None:
    hub = await secured(hub_factory, namespaces={"chat": {"join_leave": True}})
    await open_client(page, hub, {"transports": [transport], "token": alice()})
    await page.evaluate(
        """() => { window.log.presence = [];
        for (const e of ['join', 'leave']) window.sub.on(e, (d) => window.log.presence.push(
            e + ':' + d.user)); }"""
    )
    await subscribed(hub, "chat:lobby")
    async with hub.ws() as ws:
        bob = mint_token(SECRET, "bob", ["chat:*"])
        assert "ok" in await ws.call("connect", token=bob)
        assert "ok" in await ws.subscribe("chat:lobby")
        await wait_for(page, "window.log.presence.includes('join:bob')")
    await wait_for(page, "window.log.presence.includes('leave:bob')")


async def test_a_server_side_subscription_is_a_subscription(page: Any, hub: RunningHub) -> None:
    await open_client(page, hub, {"transports": ["ws"]}, channel=None)
    await page.evaluate(
        """() => { window.client.on('subscription', (sub) => {
            window.log.events.push({event: 'server', channel: sub.channel});
            sub.on('publication', (p) => window.log.pubs.push(p.data)); }); }"""
    )
    await wait_for(page, "window.log.states.includes('connected:ws')")
    client = next(iter(hub.hub.sessions))
    async with hub.http() as http:
        r = await http.post("/api/subscribe", json={"client": client, "channel": "rooms:1"})
        assert r.status_code == 200
    await wait_for(page, "window.log.events.some((e) => e.event === 'server')")
    await hub.publish("rooms:1", "welcome")
    assert await pubs(page, 1) == ["welcome"]


async def test_a_server_side_subscription_resumed_from_since_stands_there_first(
    page: Any, hub: RunningHub
) -> None:
    before = await hub.publish("rooms:2", 1)
    await hub.publish("rooms:2", 2)
    top = await hub.publish("rooms:2", 3)
    await open_client(page, hub, {"transports": ["ws"]}, channel=None)
    await page.evaluate(
        """() => { window.client.on('subscription', (sub) => {
            sub.on('subscribed', (e) => window.log.events.push({event: 'at', cursor: e.cursor}));
            sub.on('publication', (p) => window.log.pubs.push(p.data)); }); }"""
    )
    await wait_for(page, "window.log.states.includes('connected:ws')")
    client = next(iter(hub.hub.sessions))
    async with hub.http() as http:
        body = {"client": client, "channel": "rooms:2", "since": before["cursor"]}
        assert (await http.post("/api/subscribe", json=body)).status_code == 200
    assert await pubs(page, 2) == [2, 3]
    # Told of the subscription, it stood at since (a drop then resumes before the replay).
    at = await page.evaluate("window.log.events.filter((e) => e.event === 'at')")
    assert at == [{"event": "at", "cursor": before["cursor"]}]
    assert await page.evaluate("window.client.subs.get('rooms:2').cursor") == top["cursor"]


async def test_a_silent_event_stream_is_reopened_from_its_cursor(
    page: Any, hub_factory: Any
) -> None:
    hub: RunningHub = await hub_factory(sse={"heartbeat": 60})
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/sse?" in r.url else None)
    await open_client(page, hub, {"transports": ["sse"], "sseSilence": 1000})
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", 1)
    assert await pubs(page, 1) == [1]
    await wait_for(page, "window.log.events.filter((e) => e.event === 'subscribed').length >= 3")
    await hub.publish("chat:lobby", 2)
    assert await pubs(page, 2) == [1, 2]
    assert len(streams) >= 3


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_token_stops_the_client_with_the_refusals_close_code(
    page: Any, hub_factory: Any, transport: str
) -> None:
    # The same token would be refused again: the client stops, as the Python client does.
    hub = await secured(hub_factory)
    await open_client(page, hub, {"transports": [transport], "token": "not-a-jwt"})
    await wait_for(page, "window.log.states.some((s) => s.startsWith('closed'))")
    states = await page.evaluate("window.log.states")
    assert f"disconnected:{transport}:4500" in states, states
    assert await page.evaluate("window.log.events.at(-1).event") == "unsubscribed"


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_forbidden_channel_ends_only_its_own_stream(
    page: Any, hub_factory: Any, transport: str
) -> None:
    hub = await secured(hub_factory)
    await open_client(page, hub, {"transports": [transport], "token": alice()}, "news:x")
    await wait_for(page, "window.log.events.some((e) => e.event === 'unsubscribed')")
    assert await page.evaluate("window.client.state") != "closed"
    # The client goes on: another channel, one the token allows, is read.
    await page.evaluate(
        "window.client.subscribe('chat:lobby', {onPublication: (p) => window.log.pubs.push(p.data)"
        "})"
    )
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", "still here")
    assert await pubs(page, 1) == ["still here"]


MANY = """(channels) => {
    window.subs = {};
    for (const c of channels) {
        window.subs[c] = window.client.subscribe(c, {
            onPublication: (p) => window.log.pubs.push(p.data),
            onError: (e) => window.log.events.push({ event: 'error', channel: c, code: e.code }),
        });
    }
}"""


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_every_subscription_shares_one_stream(
    page: Any, hub: RunningHub, transport: str
) -> None:
    """A browser opens at most six HTTP/1.1 connections to one host. Twelve subscriptions read
    over one stream, publish still has a connection, and the stream reopened for a change of
    subscriptions loses and repeats nothing."""
    channels = [f"chat:r{n}" for n in range(12)]
    await open_client(page, hub, {"transports": [transport], "pollTimeout": 20}, None)
    await page.evaluate(MANY, channels)
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")

    def reading() -> list[set[str]]:
        return [set(s.subscriptions) for s in hub.hub.sessions.values()]

    assert await until(lambda: reading() == [set(channels)])
    for channel in channels:
        await hub.publish(channel, channel)
    assert sorted(await pubs(page, 12)) == sorted(channels)
    # Over HTTP beside the stream; with a stream per subscription, it waited for a connection.
    reply = await page.evaluate("window.client.publish('chat:r0', 'from the page')")
    assert reply["offset"] == 2
    assert (await pubs(page, 13))[-1] == "from the page"
    # A change reopens the stream: what is published meanwhile arrives once, on every channel
    # it kept. The new one starts from when the hub takes it: it is published on once subscribed.
    await page.evaluate("window.subs['chat:r0'].unsubscribe()")
    await page.evaluate(MANY, ["chat:new"])
    for channel in channels:
        await hub.publish(channel, "again " + channel)
    await wait_for(page, "window.subs['chat:new'].state === 'subscribed'")
    await hub.publish("chat:new", "again chat:new")
    expected = ["again " + c for c in [*channels[1:], "chat:new"]]
    got = (await pubs(page, 13 + len(expected)))[13:]
    await asyncio.sleep(0.3)  # anything more (a repeat, chat:r0) would come by now
    assert sorted(await page.evaluate("window.log.pubs.slice(13)")) == sorted(expected)
    assert len(got) == len(expected)
    assert await until(lambda: reading() == [set(channels[1:]) | {"chat:new"}])


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_reload_resumes_quiet_and_busy_channels_of_a_shared_stream(
    page: Any, hub: RunningHub, transport: str
) -> None:
    """A quiet channel has no cursor of its own, only the stream's; a busy one has its own,
    further on. After a reload, each resumes from the furthest it had: nothing is missed,
    nothing comes twice."""
    options = {"transports": [transport], "useStore": True, "pollTimeout": 20}
    await open_client(page, hub, options, None)
    await page.evaluate(MANY, ["chat:busy", "chat:quiet"])
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")
    for n in range(5):
        await hub.publish("chat:busy", f"busy {n}")
    assert await pubs(page, 5) == [f"busy {n}" for n in range(5)]
    await page.reload()
    await hub.publish("chat:quiet", "quiet, while away")
    await hub.publish("chat:busy", "busy, while away")
    await open_client(page, hub, options, None)
    await page.evaluate(MANY, ["chat:busy", "chat:quiet"])
    got = await pubs(page, 2)
    await asyncio.sleep(0.3)  # a repeat of what came before the reload would be here by now
    assert sorted(await page.evaluate("window.log.pubs")) == sorted(got)
    assert sorted(got) == ["busy, while away", "quiet, while away"]


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_quiet_channel_added_after_a_reload_rewinds_no_other(
    page: Any, hub: RunningHub, transport: str
) -> None:
    """chat:c comes back with where its last stream opened, a cursor that also holds chat:a at
    an older place than the stream reopened now has: chat:a stays where it is."""
    options = {"transports": [transport], "useStore": True, "pollTimeout": 20}
    await open_client(page, hub, options, None)
    await page.evaluate(MANY, ["chat:a", "chat:b", "chat:c"])
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")
    for n in range(3):
        await hub.publish("chat:a", f"a{n}")
    assert await pubs(page, 3) == ["a0", "a1", "a2"]
    await page.reload()
    await open_client(page, hub, options, None)
    await page.evaluate(MANY, ["chat:a", "chat:b"])
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")
    await page.evaluate(MANY, ["chat:c"])
    await wait_for(page, "window.subs['chat:c'].state === 'subscribed'")
    await hub.publish("chat:a", "a3")
    await hub.publish("chat:c", "c0")
    assert sorted(await pubs(page, 2)) == ["a3", "c0"]
    await asyncio.sleep(0.3)  # a repeat of a0..a2 would be here by now
    assert sorted(await page.evaluate("window.log.pubs")) == ["a3", "c0"]


async def test_a_resumed_subscription_keeps_its_cursor_until_the_replay_moves_it(
    page: Any, hub: RunningHub
) -> None:
    """The subscribe reply's cursor is the channel's top: taken (and stored) before the
    replayed publications arrive, a reload then would skip them."""
    first = (await hub.publish("chat:lobby", 1))["cursor"]
    for n in (2, 3):
        await hub.publish("chat:lobby", n)
    await page.goto(hub.http_url + "/healthz")
    await page.evaluate(SETUP, [{"transports": ["ws"]}, None, {}])
    await page.evaluate(
        """(since) => {
            window.sub = window.client.subscribe('chat:lobby', {
                since,
                onPublication: (p) => window.log.pubs.push(p.data),
                onSubscribed: () => window.log.events.push({ cursor: window.sub.cursor }),
            });
        }""",
        first,
    )
    assert await pubs(page, 2) == [2, 3]
    assert await page.evaluate("window.log.events") == [{"cursor": first}]


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_page_of_many_subscriptions_reloads_on_a_shared_stream(
    page: Any, hub: RunningHub, transport: str
) -> None:
    """Half the subscriptions with a cursor of their own (stored after a publication), half
    quiet (the stream's cursor stands for them): the query that reopens the stream holds a
    channel for each, their own cursors and the stream's once, within the hub's limits."""
    channels = [f"chat:room-{n:03d}" for n in range(120)]
    options = {"transports": [transport], "useStore": True, "pollTimeout": 20}
    await open_client(page, hub, options, None)
    await page.evaluate(MANY, channels)
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")
    for channel in channels[::2]:
        await hub.publish(channel, "before")
    await pubs(page, len(channels) // 2)
    await page.evaluate("window.log.pubs = []")
    await page.reload()
    for channel in channels:
        await hub.publish(channel, "after")
    await open_client(page, hub, options, None)
    await page.evaluate(MANY, channels)
    assert await pubs(page, len(channels)) == ["after"] * len(channels)
    assert await page.evaluate("window.log.events") == []  # no error, no subscription ended


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_bad_cursor_of_one_subscription_moves_only_that_one_to_now(
    page: Any, hub: RunningHub, transport: str
) -> None:
    await open_client(page, hub, {"transports": [transport], "pollTimeout": 20}, None)
    await page.evaluate(MANY, ["chat:a"])
    await subscribed(hub, "chat:a")
    await hub.publish("chat:a", "a1")
    assert await pubs(page, 1) == ["a1"]
    await hub.publish("chat:b", "b, stored before")
    await page.evaluate(
        "window.subs['chat:b'] = window.client.subscribe('chat:b', {since: 'not-a-cursor',"
        " onPublication: (p) => window.log.pubs.push(p.data)})"
    )
    await hub.publish("chat:a", "a2")  # while the stream reopens: chat:a keeps its place
    await wait_for(page, "window.subs['chat:b'].state === 'subscribed'")
    await subscribed(hub, "chat:b")
    await hub.publish("chat:b", "b live")
    assert sorted(await pubs(page, 3)) == ["a1", "a2", "b live"]


async def test_a_quiet_channel_moves_up_to_the_websocket_from_where_its_stream_was(
    page: Any, hub: RunningHub
) -> None:
    """A subscription without publications has no cursor of its own over SSE: moving to the
    WebSocket, it subscribes from where its stream opened, and what came meanwhile arrives."""
    blocked = {"on": True, "since": 0}

    async def ws_route(ws: Any) -> None:
        if blocked["on"]:
            await ws.close()
            return
        blocked["since"] += 1
        if blocked["since"] == 2:  # the move itself, after the probe and the stream's end
            await hub.publish("chat:quiet", "during the move")
        ws.connect_to_server()

    await page.route_web_socket("**/ws", ws_route)
    await open_client(page, hub, {"upgradeInterval": 500}, None)
    await page.evaluate(MANY, ["chat:busy", "chat:quiet"])
    await wait_for(page, "window.log.states.includes('connected:sse')")
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")
    await hub.publish("chat:busy", "busy")
    assert await pubs(page, 1) == ["busy"]
    blocked["on"] = False
    await wait_for(page, "window.log.states.includes('connected:ws')")
    assert await pubs(page, 2) == ["busy", "during the move"]
    await hub.publish("chat:quiet", "after")
    assert await pubs(page, 3) == ["busy", "during the move", "after"]


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_over_the_hubs_cap_only_the_newest_subscriptions_end(
    page: Any, hub_factory: Any, transport: str
) -> None:
    hub = await hub_factory(limits={"max_subscriptions_per_connection": 3})
    await open_client(page, hub, {"transports": [transport], "pollTimeout": 20}, None)
    await page.evaluate(MANY, ["chat:1", "chat:2", "chat:3", "chat:4"])
    await wait_for(page, "window.log.events.some((e) => e.event === 'error')")
    assert await page.evaluate("window.log.events") == [
        {"event": "error", "channel": "chat:4", "code": "too_many_channels"}
    ]
    await wait_for(
        page, "['chat:1', 'chat:2', 'chat:3'].every((c) => window.subs[c].state === 'subscribed')"
    )
    for channel in ("chat:1", "chat:2", "chat:3", "chat:4"):
        await hub.publish(channel, channel)
    assert sorted(await pubs(page, 3)) == ["chat:1", "chat:2", "chat:3"]


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_forbidden_channel_on_a_shared_stream_ends_only_its_subscription(
    page: Any, hub_factory: Any, transport: str
) -> None:
    hub = await secured(hub_factory)
    await open_client(page, hub, {"transports": [transport], "token": alice()}, None)
    await page.evaluate(MANY, ["chat:a", "news:x", "chat:b"])
    await wait_for(page, "window.log.events.some((e) => e.event === 'error')")
    assert await page.evaluate("window.log.events") == [
        {"event": "error", "channel": "news:x", "code": "forbidden"}
    ]
    await wait_for(page, "window.subs['chat:a'].state === 'subscribed'")
    assert await page.evaluate("window.subs['news:x'].state") == "unsubscribed"
    await hub.publish("chat:a", "a")
    await hub.publish("chat:b", "b")
    assert sorted(await pubs(page, 2)) == ["a", "b"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_offline_browser_is_waited_for_not_retried(
    page: Any, hub: RunningHub, transport: str
) -> None:
    """While the browser says it has no network, the client tries nothing (each try would only
    fail, and log a failed load); once it is back, the client resumes at once."""
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))
    await open_client(page, hub, {"transports": [transport], "pollTimeout": 2})
    page.on(
        "console",
        lambda m: failed.append(f"console: {m.text}") if m.type == "error" else None,
    )
    await wait_for(page, f"window.log.states.includes('connected:{transport}')")
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", "before")
    assert await pubs(page, 1) == ["before"]
    await page.context.set_offline(True)
    for session in list(hub.hub.sessions.values()):
        session.close(4000)  # the hub tells the client to reconnect, while it cannot
    await hub.publish("chat:lobby", "while away")
    # With a 50 ms backoff, some twenty tries would have failed meanwhile.
    await asyncio.sleep(1.5)
    await page.context.set_offline(False)
    assert await pubs(page, 2, seconds=3) == ["before", "while away"]
    assert failed == []


async def test_a_page_of_128_subscriptions_resubscribes_after_a_drop_within_the_budget(
    page: Any, hub: RunningHub
) -> None:
    """The connection's command budget fits a page that subscribes all it may hold, then has
    them all subscribed again on its next connection."""
    channels = [f"chat:room-{n:03d}" for n in range(128)]
    await open_client(page, hub, {"transports": ["ws"]}, None)
    await page.evaluate(MANY, channels)
    await wait_for(page, "Object.values(window.subs).every((s) => s.state === 'subscribed')")
    for session in list(hub.hub.sessions.values()):
        session.close(4000)  # reconnect, and subscribe everything again
    await wait_for(page, "window.log.states.filter((s) => s === 'connected:ws').length >= 2")
    await subscribed(hub, channels[-1])
    for channel in channels:
        await hub.publish(channel, "after")
    assert await pubs(page, len(channels)) == ["after"] * len(channels)
    assert await page.evaluate("window.log.events") == []  # nothing refused


async def test_a_rate_limited_subscribe_is_sent_again(page: Any, hub_factory: Any) -> None:
    limits = {"max_subscriptions_per_connection": 2, "client_command_burst": 1}
    # A token every 2 s: the subscribe right after the budget ran out is refused however slow
    # the machine, and the client's retry a second or two later goes through.
    hub = await hub_factory(limits={**limits, "client_command_rate": 0.5})
    assert hub.hub.settings.limits.command_burst == 24
    await open_client(page, hub, {"transports": ["ws"]}, None)
    await wait_for(page, "window.log.states.includes('connected:ws')")
    # History reads take the budget, until one is refused; the subscribe follows at once.
    await page.evaluate(f"() => {{ window.many = {MANY}; }}")
    await page.evaluate(
        "async () => {"
        "  for (;;) {"
        "    try { await window.client.history('chat:a'); }"
        "    catch (e) { if (e.code === 'rate_limited') break; throw e; }"
        "  }"
        "  window.many(['chat:a']);"
        "}"
    )
    await subscribed(hub, "chat:a")
    assert hub.hub.stats.errors["rate_limited"] >= 2  # a history read, then the subscribe
    await hub.publish("chat:a", "hello")
    assert await pubs(page, 1) == ["hello"]
    assert await page.evaluate("window.log.events") == []


async def test_a_stream_refused_for_its_user_s_subscriptions_opens_after_retry_after(
    page: Any, hub_factory: Any
) -> None:
    """``/sse`` refused with ``429 rate_limited`` (the address's subscriptions are spent): the
    client waits its ``Retry-After`` and opens again, rather than stopping; counted in refusals,
    not seconds (a client that did not wait would be refused at each short backoff)."""
    limits = {
        "max_subscriptions_per_connection": 2,
        "client_subscribe_burst": 2,
        "client_subscribe_rate": 0.5,  # one every 2 s
    }
    hub = await hub_factory(limits=limits)
    async with (
        hub.http() as http,
        http.stream("GET", "/sse", params={"channel": ["a", "b"]}) as other,
    ):
        assert other.status_code == 200  # another tab of the address took the allowance
        await open_client(page, hub, {"transports": ["sse"], "backoffBase": 50, "backoffCap": 50})
        await subscribed(hub, "chat:lobby")
        await hub.publish("chat:lobby", "through")
        assert await pubs(page, 1) == ["through"]
    assert 1 <= hub.hub.stats.errors["rate_limited"] <= 2
    events = await page.evaluate("window.log.events")
    assert [e for e in events if e["event"] in ("error", "unsubscribed")] == [], events
