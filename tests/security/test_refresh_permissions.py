"""A new token on an open connection re-checks every subscription it holds, over real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from clarion.settings import NamespaceOptions

from ..conftest import WS, RunningHub, timeout

SECRET = "a-long-enough-test-secret-0123456789"


def token(channels: list[str], *, sub: str = "alice", ttl: int = 600) -> str:
    claims = {"sub": sub, "channels": channels, "exp": int(time.time()) + ttl}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture
async def secured(hub_factory: Any) -> RunningHub:
    hub: RunningHub = await hub_factory(
        token_secret=SECRET,
        api_key="k",
        namespaces={"public": NamespaceOptions(anonymous=True)},
    )
    return hub


async def pushes_until_reply(ws: WS, op: str, **fields: Any) -> tuple[list[Any], dict[str, Any]]:
    """Send a command; return the pushes that came before its reply, and the reply."""
    await ws.send({"id": 99, "op": op, **fields})
    pushes = []
    while True:
        msg = await ws.recv()
        if msg.get("id") == 99:
            return pushes, msg
        pushes.append(msg)


async def only_from(ws: WS, channel: str) -> dict[str, Any]:
    """The next publication; it must be on ``channel``."""
    msg = await ws.recv()
    assert msg.get("channel") == channel, msg
    return msg


@pytest.mark.parametrize("op", ["refresh", "connect"])
async def test_narrower_token_ends_subscriptions_it_no_longer_allows(
    secured: RunningHub, op: str
) -> None:
    t1 = token(["private:*"], ttl=3)
    async with secured.ws(additional_headers={"Authorization": f"Bearer {t1}"}) as ws:
        for channel in ("private:secret", "private:alice", "public:news"):
            assert "ok" in await ws.subscribe(channel)
        pushes, reply = await pushes_until_reply(ws, op, token=token(["private:alice"]))
        assert reply["ok"]["user"] == "alice"
        # Told before the reply: nothing of the channel arrives once the new token holds.
        assert pushes == [{"unsubscribe": {"channel": "private:secret", "reason": "forbidden"}}]
        await asyncio.sleep(timeout(3.5))  # past T1's exp: the connection lives on T2
        await secured.publish("private:secret", "leak")
        await secured.publish("private:alice", "mine")
        await secured.publish("public:news", "open to all")
        assert (await only_from(ws, "private:alice"))["data"] == "mine"
        assert (await only_from(ws, "public:news"))["data"] == "open to all"
        # The channel is gone from the session: subscribing again is refused by the new token.
        refused = await ws.subscribe("private:secret")
        assert refused["error"]["code"] == "forbidden"
        ended = await ws.call("unsubscribe", channel="private:secret")
        assert ended["error"]["code"] == "not_subscribed"
    assert secured.hub.channels().get("private:secret") is None


async def test_wider_token_ends_nothing(secured: RunningHub) -> None:
    async with secured.ws(
        additional_headers={"Authorization": f"Bearer {token(['private:alice'])}"}
    ) as ws:
        assert "ok" in await ws.subscribe("private:alice")
        pushes, reply = await pushes_until_reply(ws, "refresh", token=token(["private:*"]))
        assert pushes == [] and "ok" in reply
        await secured.publish("private:alice", 1)
        assert (await only_from(ws, "private:alice"))["data"] == 1


async def test_refused_refresh_changes_nothing(secured: RunningHub) -> None:
    async with secured.ws(
        additional_headers={"Authorization": f"Bearer {token(['private:*'])}"}
    ) as ws:
        assert "ok" in await ws.subscribe("private:secret")
        # Another user's token, and a token that does not verify: refused, nothing ended.
        for bad in (token([], sub="mallory"), token([])[:-3] + "AAA"):
            pushes, reply = await pushes_until_reply(ws, "refresh", token=bad)
            assert pushes == [] and "error" in reply
        await secured.publish("private:secret", "still mine")
        assert (await only_from(ws, "private:secret"))["data"] == "still mine"
