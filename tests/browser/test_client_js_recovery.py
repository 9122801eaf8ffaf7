"""The browser client in headless Chromium against real hubs, where a connection or a stream
goes wrong: oversized requests, subscriptions made while attaching, a hub's narrower poll
bounds, outages, subscriptions made again during one, and the end of a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import RunningHub
from .chromium import chromium_context, needs_chromium
from .test_client_js import open_client, pubs, wait_for

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
