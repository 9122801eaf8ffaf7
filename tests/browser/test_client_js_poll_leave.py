"""The browser client on long polling leaves presence when it is done with a channel: after
`unsubscribe()`, `close()` and when its page goes, its watchers see it leave at once
(`DELETE /poll`), not when the lease of its last poll runs out (its 20 s wait and
`poll.presence_timeout`, 10 s here)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from clarion.core.auth import mint_token
from clarion.settings import NamespaceOptions, PollOptions

from ..conftest import WS, RunningHub, timeout, until
from .chromium import CHROMIUM, FLAGS, chromium_context, needs_chromium
from .test_client_js import blocking_websockets, wait_for

pytestmark = needs_chromium

SECRET = "browser-poll-leave-secret-0123456789"
KEY = "poll-leave-api-key"
# A leave well before any lease would end: the first poll's (timeout=0) is 10 s, a long
# poll's 30 s.
SOON = 8.0


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    async with chromium_context(tmp_path / "profile") as context:
        yield await context.new_page()


async def presence_hub(hub_factory: Any) -> RunningHub:
    room = NamespaceOptions(join_leave="client", presence_grace=0.5, anonymous=True)
    hub: RunningHub = await hub_factory(
        token_secret=SECRET,
        api_key=KEY,
        # A DELETE carries an Origin even from the hub's own origin, as a POST does.
        allowed_origins=["http://127.0.0.1:*"],
        namespaces={"room": room},
        poll=PollOptions(presence_timeout=10),
    )
    return hub


def token(user: str) -> str:
    return mint_token(SECRET, user, ["room:*"])


def watching(hub: RunningHub) -> AbstractAsyncContextManager[WS]:
    """Bob's WebSocket, which hears alice's joins and leaves on the channels it subscribes."""
    return hub.ws(additional_headers={"Authorization": f"Bearer {token('bob')}"})


# One client on long polling with alice's token, subscribed to `channels`, on the hub's origin.
SETUP = """async ([token, channels]) => {
    const { connect } = await import('/clarion.js');
    window.log = { events: [], states: [] };
    window.client = connect(location.origin,
        { transports: ['poll'], token, pollTimeout: 20, backoffBase: 50, backoffCap: 1000 });
    window.client.on('state', (s, t) => window.log.states.push(s + ':' + t));
    window.subs = {};
    for (const channel of channels) {
        const sub = window.client.subscribe(channel);
        for (const e of ['subscribing', 'subscribed', 'unsubscribed']) {
            sub.on(e, (d) => window.log.events.push({ event: e, ...d }));
        }
        window.subs[channel] = sub;
    }
}"""


async def polling(page: Any, hub: RunningHub, watcher: WS, channels: list[str]) -> str:
    """Alice's page polls `channels`, in their presence (the watcher saw her join each) and
    in a long poll (whose lease is 30 s); her poll client's id."""
    for channel in channels:
        assert "ok" in await watcher.subscribe(channel)
    await page.goto(hub.http_url + "/healthz")  # the hub's origin
    await page.evaluate(SETUP, [token("alice"), channels])
    joined: dict[str, str] = {}
    while len(joined) < len(channels):
        kind, event = await about(watcher, "alice")
        assert (kind, event["transport"]) == ("join", "poll"), event
        joined[event["channel"]] = event["client"]
    assert sorted(joined) == sorted(channels)
    client = joined[channels[0]]
    assert set(joined.values()) == {client}  # one client across its polls and channels
    quoted = ", ".join(f"'{c}'" for c in channels)
    await wait_for(page, f"[{quoted}].every((c) => window.subs[c].state === 'subscribed')")
    assert await page.evaluate("window.client._pollClient") == client
    # The long poll waits on the hub: subscribed through the core, beside the watcher.
    await until(
        lambda: all(
            sum(c in s.subscriptions for s in hub.hub.sessions.values()) == 2 for c in channels
        ),
        wait=10,
        interval=0.05,
    )
    return client


async def about(ws: WS, user: str, wait: float = 10) -> tuple[str, dict[str, Any]]:
    """The next join or leave about ``user``, within ``timeout(wait)``."""
    deadline = time.monotonic() + timeout(wait)
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no join or leave about {user} in time"
        try:
            msg = await ws.recv(left / timeout(1))
        except TimeoutError:
            raise AssertionError(f"no join or leave about {user} in time") from None
        for kind in ("join", "leave"):
            if kind in msg and msg[kind].get("user") == user:
                return kind, msg[kind]


async def leaves(ws: WS, client: str, channels: list[str]) -> float:
    """The leaves of alice's `client` from each of `channels`, none from others, and nothing
    else about her; seconds they took."""
    started = time.monotonic()
    left: set[str] = set()
    while left != set(channels):
        kind, event = await about(ws, "alice", wait=SOON)
        assert (kind, event["client"]) == ("leave", client), event
        assert event["channel"] in channels, event
        left.add(event["channel"])
    took = time.monotonic() - started
    assert took < SOON, f"left after {took:.1f} s: its lease ran out, it did not say it left"
    return took


async def listed(hub: RunningHub, channel: str) -> list[tuple[str, str]]:
    async with hub.http(headers={"Authorization": f"apikey {KEY}"}) as http:
        r = await http.get("/api/presence", params={"channel": channel})
    assert r.status_code == 200, r.text
    return sorted((c["user"], c["transport"]) for c in r.json()["clients"])


async def test_a_poll_client_that_unsubscribes_leaves_that_channel_at_once(
    page: Any, hub_factory: Any
) -> None:
    hub = await presence_hub(hub_factory)
    async with watching(hub) as watcher:
        client = await polling(page, hub, watcher, ["room:1", "room:2"])
        await page.evaluate("window.subs['room:1'].unsubscribe()")
        await leaves(watcher, client, ["room:1"])
        assert await listed(hub, "room:1") == [("bob", "ws")]
        # The other channel's poll goes on: she stays there, and leaves it when she
        # unsubscribes it too.
        assert await listed(hub, "room:2") == [("alice", "poll"), ("bob", "ws")]
        await page.evaluate("window.subs['room:2'].unsubscribe()")
        await leaves(watcher, client, ["room:2"])
        assert await listed(hub, "room:2") == [("bob", "ws")]


async def test_a_poll_client_that_is_closed_leaves_every_channel_at_once(
    page: Any, hub_factory: Any
) -> None:
    hub = await presence_hub(hub_factory)
    async with watching(hub) as watcher:
        client = await polling(page, hub, watcher, ["room:1", "room:2"])
        await page.evaluate("window.client.close()")
        await leaves(watcher, client, ["room:1", "room:2"])
        for channel in ("room:1", "room:2"):
            assert await listed(hub, channel) == [("bob", "ws")]
        assert await page.evaluate("window.client.state") == "closed"


@pytest.mark.parametrize("how", ["closed", "navigated away"])
async def test_a_poll_client_whose_page_goes_leaves_at_once(
    page: Any, hub_factory: Any, how: str
) -> None:
    hub = await presence_hub(hub_factory)
    async with watching(hub) as watcher:
        client = await polling(page, hub, watcher, ["room:1", "room:2"])
        if how == "closed":
            await page.close()
        else:
            await page.goto("about:blank")
        await leaves(watcher, client, ["room:1", "room:2"])
        for channel in ("room:1", "room:2"):
            assert await listed(hub, channel) == [("bob", "ws")]


async def test_a_poll_client_whose_page_comes_back_from_the_cache_joins_again(
    hub_factory: Any, tmp_path: Path
) -> None:
    """A page kept in the back/forward cache left as it went; restored, it polls (and joins)
    again, and leaves again when closed."""
    from playwright.async_api import async_playwright

    hub = await presence_hub(hub_factory)
    async with async_playwright() as pw:
        # Playwright turns the cache off by default.
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            ignore_default_args=["--disable-back-forward-cache"],
        )
        try:
            page = await context.new_page()
            async with watching(hub) as watcher:
                client = await polling(page, hub, watcher, ["room:1"])
                await page.evaluate(
                    "addEventListener('pageshow', (e) => { window.restored = e.persisted; })"
                )
                await page.goto(hub.http_url + "/clarion.js")
                await leaves(watcher, client, ["room:1"])
                await page.go_back(wait_until="commit")  # no load event from the cache
                await wait_for(page, "window.restored !== undefined || !window.client")
                if not await page.evaluate("window.restored"):
                    pytest.skip("this Chromium did not keep the page in its back/forward cache")
                kind, event = await about(watcher, "alice")
                assert (kind, event["channel"], event["client"]) == ("join", "room:1", client)
                await page.evaluate("window.client.close()")
                await leaves(watcher, client, ["room:1"])
        finally:
            await context.close()


async def test_a_poll_client_that_moves_up_to_the_websocket_leaves_as_its_connection_joins(
    page: Any, hub_factory: Any
) -> None:
    hub = await presence_hub(hub_factory)
    blocked = await blocking_websockets(page)
    async with watching(hub) as watcher:
        assert "ok" in await watcher.subscribe("room:1")
        await page.goto(hub.http_url + "/healthz")
        await page.evaluate(
            """async (token) => {
                const { connect } = await import('/clarion.js');
                window.client = connect(location.origin, { transports: ['ws', 'poll'], token,
                    pollTimeout: 20, upgradeInterval: 500, backoffBase: 50, backoffCap: 1000 });
                window.client.subscribe('room:1');
            }""",
            token("alice"),
        )
        kind, event = await about(watcher, "alice")
        assert (kind, event["transport"]) == ("join", "poll"), event
        polled = event["client"]
        blocked["on"] = False
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout(SOON + 2)
        while len(seen) < 2:  # the poll client's leave and the connection's join, either order
            assert time.monotonic() < deadline, seen
            kind, event = await about(watcher, "alice")
            seen[kind] = event
        assert (seen["leave"]["client"], seen["leave"]["transport"]) == (polled, "poll")
        assert seen["join"]["transport"] == "ws"
        assert await listed(hub, "room:1") == [("alice", "ws"), ("bob", "ws")]
