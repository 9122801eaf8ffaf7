"""The Python client surfaces the subscriptions the hub makes for it, over real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from clarion.client import Message, RequestFailed, Subscription, connect
from clarion.protocol.codes import CloseCode

from ..conftest import RunningHub, timeout
from .conftest import next_message

SECRET = "a-long-enough-test-secret-0123456789"


def token(**claims: Any) -> str:
    body = {"sub": "alice", "channels": ["chat:*"], "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


async def api(hub: RunningHub, path: str, **body: Any) -> None:
    async with hub.http() as http:
        r = await http.post(path, json=body, headers={"Authorization": "apikey k"})
        assert r.status_code == 200, r.text


async def test_server_subscriptions_arrive_and_end(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="k")
    async with connect(hub.http_url, token=token(), transport="ws") as client:
        made = client.server_subscriptions()
        waiting = asyncio.ensure_future(anext(made))
        await asyncio.sleep(0)  # the first call registers the client's interest
        await api(hub, "/api/subscribe", user="alice", channel="room:1")
        sub: Subscription = await asyncio.wait_for(waiting, timeout(5))
        assert sub.channel == "room:1"
        await hub.publish("room:1", "hello")
        message = await next_message(sub)
        assert isinstance(message, Message) and message.data == "hello"
        await api(hub, "/api/unsubscribe", user="alice", channel="room:1")
        with pytest.raises(RequestFailed) as ended:
            await asyncio.wait_for(anext(sub), timeout(5))
        assert ended.value.code == "unsubscribed"


async def test_a_claimed_subscription_resumes_after_a_reconnect(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="k")
    async with connect(hub.http_url, token=token(subs=["chat:general"]), transport="ws") as client:
        made = client.server_subscriptions()
        first = asyncio.ensure_future(anext(made))
        await asyncio.sleep(0)
        # The claim is applied at connect, possibly before the client asked: reconnect to see it.
        for session in list(hub.hub.sessions.values()):
            session.close(CloseCode.SHUTDOWN)  # clients reconnect
        sub = await asyncio.wait_for(first, timeout(10))
        await hub.publish("chat:general", 1)
        assert (await next_message(sub)).data == 1
        for session in list(hub.hub.sessions.values()):
            session.close(CloseCode.SHUTDOWN)
        await hub.publish("chat:general", 2)  # while the client is away
        await hub.publish("chat:general", 3)
        assert [(await next_message(sub, 10)).data for _ in range(2)] == [2, 3]


async def test_a_subscription_the_hub_resumes_stands_at_since_until_read(
    hub_factory: Any,
) -> None:
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="k")
    before = await hub.publish("room:2", 1)
    await hub.publish("room:2", 2)
    top = await hub.publish("room:2", 3)
    async with connect(hub.http_url, token=token(), transport="ws") as client:
        made = client.server_subscriptions()
        waiting = asyncio.ensure_future(anext(made))
        await asyncio.sleep(0)
        await api(hub, "/api/subscribe", user="alice", channel="room:2", since=before["cursor"])
        sub: Subscription = await asyncio.wait_for(waiting, timeout(5))
        # Not the top: a reconnect before the replay is read must ask for it again.
        assert sub.cursor == before["cursor"]
        assert [(await next_message(sub)).data for _ in range(2)] == [2, 3]
        assert sub.cursor == top["cursor"]
