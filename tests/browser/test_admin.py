"""The admin page in headless Chromium against real hubs: login, the node and its connections,
the publish console, disconnecting a user, and two Redis nodes of which one is killed."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from clarion.core.auth import mint_token

from ..conftest import RunningHub, timeout
from ..docblocks import ROOT
from ..multinode.conftest import Cluster, cluster, redis_server
from .chromium import chromium_context, needs_chromium

__all__ = ["cluster", "redis_server"]  # the fixtures, for the two-node test

pytestmark = needs_chromium
SECRET = "admin-test-secret-0123456789abcdef"
KEY = "admin-test-key"
SCREENSHOTS = ROOT / "test-output" / "admin"
WAIT = 15_000  # ms, for the page's conditions


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    async with chromium_context(tmp_path / "profile") as context:
        page = await context.new_page()
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        page.console_errors = []  # what a test that expects none checks (console_clean)
        page.on(
            "console",
            lambda m: page.console_errors.append(m.text) if m.type == "error" else None,
        )
        yield page


def console_clean(page: Any) -> None:
    """No error in the page's console: no failed load (a missing /favicon.ico among them)."""
    assert page.console_errors == [], page.console_errors


async def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def log_in(page: Any, url: str, key: str = KEY) -> None:
    await page.goto(url + "/admin")
    await page.fill("#key", key)
    await page.click("#login button[type=submit]")


def token(user: str) -> str:
    return mint_token(SECRET, user, ["chat:*"], publish=["chat:*"])


async def admin_hub(hub_factory: Any) -> RunningHub:
    hub: RunningHub = await hub_factory(
        api_key=KEY,
        token_secret=SECRET,
        admin=True,
        allowed_origins=["http://127.0.0.1:*"],
    )
    return hub


async def test_admin_is_not_served_when_off(hub: RunningHub) -> None:
    async with hub.http() as http:
        for path in ("/admin", "/admin/admin.js", "/admin/vendor/uPlot.esm.js"):
            r = await http.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_a_wrong_key_is_refused_and_shows_nothing(page: Any, hub_factory: Any) -> None:
    hub = await admin_hub(hub_factory)
    await log_in(page, hub.http_url, "not-the-key")
    await page.wait_for_function(
        "() => document.getElementById('login-error').textContent.includes('refused')", timeout=WAIT
    )
    await screenshot(page, "refused")
    assert await page.is_hidden("#view") and await page.is_hidden("#nav")
    assert await page.evaluate("sessionStorage.length") == 0
    assert "not-the-key" not in page.url and KEY not in await page.content()


FITS = """() => {
  const boxes = [...document.querySelectorAll('.chart')];
  return boxes.length === 5 && boxes.every((box) => {
    const plot = box.querySelector('.uplot');
    const style = getComputedStyle(box);
    const inner = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return plot !== null && Math.abs(plot.offsetWidth - inner) <= 1;
  });
}"""


async def test_the_charts_fill_their_cards_as_the_window_changes(
    page: Any, hub_factory: Any
) -> None:
    hub = await admin_hub(hub_factory)
    for width in (1400, 1000, 700):
        await page.set_viewport_size({"width": width, "height": 900})
        if width == 1400:
            await log_in(page, hub.http_url)
        await page.wait_for_function(FITS, timeout=WAIT)


class Clients:
    """The test's own sessions, one kind per transport: 2 WebSockets, 1 SSE, 1 long poll,
    1 STOMP; alice holds a WebSocket and the SSE stream."""

    def __init__(self, hub: RunningHub) -> None:
        self.hub = hub
        self.tasks: list[asyncio.Task[Any]] = []
        self.sse_ended = asyncio.Event()
        self.alice_ws: Any = None
        self.carol_ws: Any = None

    async def ws(self, user: str, channel: str) -> Any:
        conn = await websockets.connect(self.hub.ws_url, subprotocols=["clarion.v1"])  # type: ignore[list-item]
        await conn.send(json.dumps({"id": 1, "op": "connect", "token": token(user)}))
        assert "ok" in json.loads(await conn.recv())
        await conn.send(json.dumps({"id": 2, "op": "subscribe", "channel": channel}))
        assert "ok" in json.loads(await conn.recv())
        return conn

    async def start(self) -> None:
        self.alice_ws = await self.ws("alice", "chat:room")
        self.carol_ws = await self.ws("carol", "chat:room")
        headers = {"authorization": f"Bearer {token('alice')}"}
        opened = asyncio.Event()

        async def sse() -> None:
            async with (
                httpx.AsyncClient(base_url=self.hub.http_url, timeout=None) as http,
                http.stream("GET", "/sse", params={"channel": "chat:news"}, headers=headers) as r,
            ):
                assert r.status_code == 200
                opened.set()
                async for _ in r.aiter_bytes():
                    pass
            self.sse_ended.set()

        async def poll() -> None:
            async with httpx.AsyncClient(base_url=self.hub.http_url, timeout=60) as http:
                params = {"channel": "chat:quiet", "timeout": "60"}
                bob = {"authorization": f"Bearer {token('bob')}"}
                await http.get("/poll", params=params, headers=bob)

        self.tasks += [asyncio.create_task(sse()), asyncio.create_task(poll())]
        await asyncio.wait_for(opened.wait(), timeout(10))
        self.stomp = await websockets.connect(
            f"ws://127.0.0.1:{self.hub.port}/stomp",
            subprotocols=[websockets.Subprotocol("v12.stomp")],
        )
        await self.stomp.send(f"CONNECT\naccept-version:1.2\npasscode:{token('dave')}\n\n\x00")
        assert str(await self.stomp.recv()).startswith("CONNECTED")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for conn in (self.alice_ws, self.carol_ws, self.stomp):
            if conn is not None:
                await conn.close()


async def cell(page: Any, selector: str, text: str) -> None:
    await page.wait_for_function(
        "([s, t]) => document.querySelector(s)?.textContent.trim() === t",
        arg=[selector, text],
        timeout=WAIT,
    )


async def test_operator_sees_connections_publishes_and_disconnects(
    page: Any, hub_factory: Any
) -> None:
    hub = await admin_hub(hub_factory)
    clients = Clients(hub)
    await clients.start()
    refused: list[str] = []  # the page's own calls to the hub, none of which may be refused
    page.on(
        "response",
        lambda r: (
            refused.append(f"{r.status} {r.url}")
            if r.status >= 400 and r.url.startswith(hub.http_url + "/")
            else None
        ),
    )
    try:
        await log_in(page, hub.http_url)
        await page.wait_for_selector("#nodes tbody tr", timeout=WAIT)
        node = hub.hub.nodes.node
        row = f"#nodes tr[data-node='{node}']"
        # The test's own clients, per transport; the page's own WebSocket is not among them.
        for transport, count in (("ws", "2"), ("sse", "1"), ("poll", "1"), ("stomp", "1")):
            await cell(page, f"{row} td.conn-{transport}", count)
        await cell(page, "#live-state", "live")
        assert "null" not in await page.inner_text("#nodes")  # no engine error, and no stray text
        # The charts follow the metrics channel: several seconds, the same 5 connections.
        await page.wait_for_function(
            "() => { const c = document.getElementById('chart-connections');"
            " return Number(c.dataset.points) >= 3 && c.dataset.last === '5'; }",
            timeout=WAIT,
        )
        await screenshot(page, "overview")
        assert KEY not in page.url
        assert refused == []  # the metrics history included: read over the page's WebSocket
        console_clean(page)

        # The publish console: carol, subscribed on a WebSocket, receives what it sends.
        await page.goto(hub.http_url + "/admin#channel/chat%3Aroom")
        await page.wait_for_selector("#presence tr[data-user='alice']", timeout=WAIT)
        await page.fill("#publish-data", '{"from": "console"}')
        await page.click("#publish button[type=submit]")
        await page.wait_for_function(
            "() => document.getElementById('publish-result').textContent.startsWith('published')",
            timeout=WAIT,
        )
        got = json.loads(await asyncio.wait_for(clients.carol_ws.recv(), timeout(10)))
        assert got["channel"] == "chat:room" and got["data"] == {"from": "console"}
        await page.check("#publish-ephemeral")
        await page.fill("#publish-data", '{"typing": true}')
        await page.click("#publish button[type=submit]")
        got = json.loads(await asyncio.wait_for(clients.carol_ws.recv(), timeout(10)))
        assert got["data"] == {"typing": True} and "offset" not in got
        await page.wait_for_selector("#history td >> text=console", timeout=WAIT)
        await screenshot(page, "channel")

        # Disconnect alice, refusing her a minute: her WebSocket and her SSE stream end.
        await page.goto(hub.http_url + "/admin#actions")
        await page.fill("#disconnect-user", "alice")
        await page.select_option("#disconnect-until", "60")
        await page.click("#disconnect button[type=submit]")
        await cell(page, "#action-result", "done")
        await screenshot(page, "actions")
        console_clean(page)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(clients.alice_ws.recv(), timeout(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4501
        await asyncio.wait_for(clients.sse_ended.wait(), timeout(10))
        assert all(s.user != "alice" for s in hub.hub.sessions.values())
        refused = await websockets.connect(hub.ws_url, subprotocols=["clarion.v1"])  # type: ignore[list-item]
        await refused.send(json.dumps({"id": 1, "op": "connect", "token": token("alice")}))
        assert json.loads(await refused.recv())["error"]["code"] == "revoked"
        await refused.close()
    finally:
        await clients.close()


ADMIN_CONFIG = f"""
api_key = "{KEY}"
admin = true
allowed_origins = ["http://127.0.0.1:*"]
"""


async def test_two_redis_nodes_and_one_killed(page: Any, cluster: Cluster) -> None:
    first = await cluster.start(config=ADMIN_CONFIG)
    second = await cluster.start(config=ADMIN_CONFIG)
    async with httpx.AsyncClient(timeout=timeout(5)) as http:
        info = await http.get(
            second.http_url + "/api/info", headers={"authorization": f"apikey {KEY}"}
        )
        second_id = info.json()["node"]
    await log_in(page, first.http_url)
    await page.wait_for_function(
        "() => document.querySelectorAll('#nodes tr.up').length === 2", timeout=WAIT
    )
    await cell(page, f"#nodes tr[data-node='{second_id}'] td.state", "up")
    await screenshot(page, "two-nodes")
    second.kill(signal.SIGKILL)
    await cell(page, f"#nodes tr[data-node='{second_id}'] td.state", "gone")
    assert await page.evaluate("document.querySelectorAll('#nodes tr.up').length") == 1
    await screenshot(page, "one-gone")


async def test_channels_search_and_a_server_side_unsubscribe(page: Any, hub_factory: Any) -> None:
    hub = await admin_hub(hub_factory)
    clients = Clients(hub)
    carol = await clients.ws("carol", "chat:lobby")
    erin = await clients.ws("erin", "chat:news")
    try:
        await log_in(page, hub.http_url)
        await page.wait_for_selector("#nodes tbody tr", timeout=WAIT)
        await page.goto(hub.http_url + "/admin#channels")
        await page.wait_for_selector("#by-subscribers tr[data-channel='chat:lobby']", timeout=WAIT)
        await page.fill("#channel-search", "news")
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#by-subscribers tbody tr')]"
            ".map((r) => r.dataset.channel).join() === 'chat:news'",
            timeout=WAIT,
        )
        await screenshot(page, "channels")
        # One node's channels: this hub's own id lists the same; another would list none.
        node = hub.hub.nodes.node
        await page.select_option("#channel-node", node)
        await page.wait_for_selector("#by-subscribers tr[data-channel='chat:news']", timeout=WAIT)
        await page.click("#by-subscribers a")
        await page.wait_for_selector("#presence tr[data-user='erin'] button", timeout=WAIT)
        await page.click("#presence tr[data-user='erin'] button >> text=Unsubscribe")
        pushed = json.loads(await asyncio.wait_for(erin.recv(), timeout(10)))
        assert pushed == {"unsubscribe": {"channel": "chat:news", "reason": "server"}}
        await page.wait_for_function(
            "() => !document.querySelector(\"#presence tr[data-user='erin']\")", timeout=WAIT
        )
    finally:
        await carol.close()
        await erin.close()


async def test_webhooks_dead_letters_and_replay_without_secrets(
    page: Any, hub_factory: Any, tmp_path: Path
) -> None:
    from ..webhooks.receiver import OK, Answer, Receiver

    hub: RunningHub = await hub_factory(
        api_key=KEY,
        admin=True,
        data_dir=str(tmp_path / "data"),
        webhook_allow_hosts=["127.0.0.1"],
        webhook_delivery={"retry_base": 0.02, "retry_cap": 0.1, "retry_window": 0.4},
    )
    failing = True
    async with Receiver(lambda r: Answer(status=500) if failing else OK) as receiver:
        async with hub.http() as http:
            auth = {"authorization": f"apikey {KEY}"}
            url = receiver.url + "?token=query-secret"
            r = await http.post(
                "/api/webhooks", json={"url": url, "channels": ["orders:*"]}, headers=auth
            )
            hook = r.json()
            receiver.secret = hook["secret"]  # it verifies each delivery's signature
        for n in range(2):
            await hub.publish("orders:1", {"n": n})
        await log_in(page, hub.http_url)
        await page.wait_for_selector("#nodes tbody tr", timeout=WAIT)
        await page.goto(hub.http_url + "/admin#webhooks")
        row = f"#webhooks tr[data-webhook='{hook['id']}']"
        await cell(page, f"{row} td.dead", "2")
        await cell(page, f"{row} td.backlog", "0")
        content = await page.content()
        assert "HTTP 500" in await page.inner_text(row)
        assert hook["secret"] not in content and "query-secret" not in content
        await screenshot(page, "webhooks")
        failing = False
        await page.click(f"{row} button.replay")
        await receiver.wait_acknowledged(2)
        await cell(page, f"{row} td.dead", "0")
