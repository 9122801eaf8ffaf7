"""transport="auto": WebSocket first, then SSE when the upgrade is refused, then long polling
when there is no /sse either — through a front server that refuses them, like a proxy would."""

from __future__ import annotations

import pytest

from clarion.client import ConnectFailed, connect

from ..conftest import RunningHub
from .conftest import FrontFactory, next_item, next_message, sessions


async def test_auto_uses_websocket_when_it_can(hub: RunningHub) -> None:
    async with connect(hub.http_url) as client:
        assert client.transport == "ws"


async def test_refused_upgrade_falls_back_to_sse(hub: RunningHub, front: FrontFactory) -> None:
    url = await front(refuse_ws=True)
    async with connect(url) as client:
        assert client.transport == "sse"
        async with client.subscribe("chat:lobby") as sub:
            assert len(sessions(hub, "sse", "chat:lobby")) == 1
            await hub.publish("chat:lobby", "over sse")
            assert (await next_message(sub)).data == "over sse"
        assert (await client.publish("chat:lobby", "via the api")).offset == 2


async def test_no_sse_either_falls_back_to_long_polling(
    hub: RunningHub, front: FrontFactory
) -> None:
    url = await front(refuse_ws=True, missing=("/sse",))
    async with connect(url) as client, client.subscribe("chat:lobby") as sub:
        assert client.transport == "poll"
        await hub.publish("chat:lobby", "over polling")
        assert (await next_message(sub)).data == "over polling"


async def test_an_explicit_transport_does_not_fall_back(front: FrontFactory) -> None:
    url = await front(refuse_ws=True, missing=("/sse",))
    async with connect(url, transport="sse") as client:
        sub = client.subscribe("chat:lobby")
        with pytest.raises(ConnectFailed) as caught:
            await next_item(sub)
        assert "/sse" in str(caught.value)
        assert client.transport == "sse"


async def test_a_wrong_url_fails_at_connect_not_at_the_first_subscribe(hub: RunningHub) -> None:
    # Nothing serves /wrong/ws (404), and /wrong/healthz is not the hub's answer either: no
    # stepping down to SSE, which would only fail later.
    with pytest.raises(ConnectFailed) as caught:
        async with connect(hub.http_url + "/wrong"):
            pass
    message = str(caught.value)
    assert "HTTP 404" in message and f"nothing is at {hub.http_url}/wrong/healthz" in message
    assert "the hub's URL" in message  # the hint at what a wrong path usually is
