"""Headless Chromium against a real hub: native EventSource, and the shipped clarion.js."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clarion.protocol import deflate
from clarion.protocol.codes import DISCONNECTS

from ..conftest import RunningHub, clarion_server
from .chromium import chromium_context, needs_chromium

pytestmark = needs_chromium


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    async with chromium_context(tmp_path / "profile") as context:
        yield await context.new_page()


async def received(page: Any, count: int, name: str = "received") -> list[Any]:
    await page.wait_for_function(f"window.{name}.length >= {count}", timeout=10_000)
    result: list[Any] = await page.evaluate(f"window.{name}")
    return result


async def test_native_eventsource_resumes_with_last_event_id(page: Any, hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(sse={"retry_ms": 200})
    await page.goto(hub.http_url + "/healthz")  # same origin as the hub
    await page.evaluate(
        """() => {
        window.received = [];
        window.opened = 0;
        const source = new EventSource('/sse?channel=feed');
        source.onopen = () => { window.opened += 1; };
        source.addEventListener('message', (e) => window.received.push(
            {offset: JSON.parse(e.data).offset, id: e.lastEventId}));
    }"""
    )
    await page.wait_for_function("window.opened >= 1", timeout=10_000)
    await hub.publish("feed", "one")
    first = await received(page, 1)
    assert first[0]["offset"] == 1 and first[0]["id"]
    # The hub ends the stream; while the browser is away, three publications happen.
    for session in list(hub.hub.sessions.values()):
        session.close(4000)
    for n in range(3):
        await hub.publish("feed", f"missed {n}")
    got = await received(page, 4)
    assert [r["offset"] for r in got] == [1, 2, 3, 4]
    assert await page.evaluate("window.opened") >= 2  # it did reconnect, by itself
    await hub.publish("feed", "live")
    assert [r["offset"] for r in await received(page, 5)] == [1, 2, 3, 4, 5]


async def test_clarion_js_over_websocket_resumes(page: Any, hub: RunningHub) -> None:
    await page.goto(hub.http_url + "/healthz")
    await page.evaluate(
        """async () => {
        const { connect } = await import('/clarion.js');
        window.received = [];
        window.states = [];
        window.hub = connect(location.origin, {
            backoffBase: 50,
            onState: (s, t) => window.states.push(s + ':' + t),
        });
        window.hub.subscribe('chat:lobby', {
            onPublication: (p) => window.received.push(p.offset),
        });
    }"""
    )
    await page.wait_for_function("window.states.includes('connected:ws')", timeout=10_000)
    await _wait_subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", 1)
    assert await received(page, 1) == [1]
    for session in list(hub.hub.sessions.values()):
        session.close(4000)  # "reconnect elsewhere"
    for n in range(3):
        await hub.publish("chat:lobby", n)
    assert await received(page, 4) == [1, 2, 3, 4]
    reply = await page.evaluate("window.hub.publish('chat:lobby', {from: 'browser'})")
    assert reply["offset"] == 5
    assert await received(page, 5) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_clarion_js_http_transports(page: Any, hub: RunningHub, transport: str) -> None:
    await page.goto(hub.http_url + "/healthz")
    await page.evaluate(
        """async (transport) => {
        const { connect } = await import('/clarion.js');
        window.received = [];
        window.hub = connect(location.origin, { transport });
        window.hub.subscribe('ticks', { onPublication: (p) => window.received.push(p.data) });
    }""",
        transport,
    )
    await _wait_subscribed(hub, "ticks")
    for n in range(3):
        await hub.publish("ticks", n)
    assert await received(page, 3) == [0, 1, 2]


async def test_js_close_code_table_matches_the_hub(page: Any, hub: RunningHub) -> None:
    await page.goto(hub.http_url + "/healthz")
    codes = sorted(DISCONNECTS)
    verdicts = await page.evaluate(
        """async (codes) => {
        const { shouldReconnect } = await import('/clarion.js');
        return codes.map((c) => shouldReconnect(c));
    }""",
        codes,
    )
    assert verdicts == [DISCONNECTS[c].reconnect for c in codes]


async def _wait_subscribed(hub: RunningHub, channel: str) -> None:
    import asyncio

    for _ in range(200):
        if any(channel in s.subscriptions for s in hub.hub.sessions.values()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"nobody subscribed to {channel}")


@clarion_server("the hub's own permessage-deflate, which clarion's server offers")
async def test_chromium_negotiates_permessage_deflate(page: Any, hub: RunningHub) -> None:
    await page.goto(hub.http_url + "/healthz")
    await page.evaluate(
        """() => new Promise((resolve) => {
        window.received = [];
        const ws = window.ws = new WebSocket(
            location.origin.replace('http', 'ws') + '/ws', 'clarion.v1');
        ws.onmessage = (e) => window.received.push(JSON.parse(e.data));
        ws.onopen = () => {
            ws.send(JSON.stringify({id: 1, op: 'subscribe', channel: 'chat:lobby'}));
            resolve();
        };
    })"""
    )
    assert await page.evaluate("window.ws.extensions") == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    await received(page, 1)  # the subscribe reply
    long = {"text": "Anyone up for lunch at the new ramen place on 5th? " * 20}
    before = deflate.TOTALS.messages
    for data in (long, {"n": 1}, ["x"] * 200):
        await hub.publish("chat:lobby", data)
    got = await received(page, 4)
    assert [m["data"] for m in got[1:]] == [long, {"n": 1}, ["x"] * 200]
    assert deflate.TOTALS.messages - before == 3
    # Chromium compresses what it sends (with no context, as the hub asked): it is inflated.
    await page.evaluate(
        "window.ws.send(JSON.stringify({id: 2, op: 'publish', channel: 'chat:lobby', "
        "data: {text: 'y'.repeat(3000)}}))"
    )
    got = await received(page, 6)
    assert {"id", "ok"} <= set(got[4]) | set(got[5])
    assert any(m.get("data") == {"text": "y" * 3000} for m in got[4:])
