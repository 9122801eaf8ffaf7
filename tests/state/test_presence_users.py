"""Presence per user over real sockets on both engines: a user's tabs are one user, anonymous
clients are counted and not listed, and the counts agree with the listing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from clarion.client import PresenceStats, connect
from clarion.core.auth import mint_token
from clarion.settings import NamespaceOptions

from ..conftest import RunningHub, timeout
from ..transports.streams import sse

pytestmark = pytest.mark.timeout(90)

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "presence-api-key"
SETTINGS: dict[str, Any] = {
    "token_secret": SECRET,
    "api_key": KEY,
    "namespaces": {"room": NamespaceOptions(anonymous=True, presence_info=True)},
}
API = {"Authorization": f"apikey {KEY}"}


def bearer(user: str, **info: Any) -> dict[str, str]:
    token = mint_token(SECRET, user, ["room:*"], info=info or None)
    return {"Authorization": f"Bearer {token}"}


async def stats_of(hub: RunningHub, channel: str) -> dict[str, Any]:
    async with hub.http(headers=API) as http:
        r = await http.get("/api/presence_stats", params={"channel": channel})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def until_stats(hub: RunningHub, channel: str, clients: int, users: int) -> None:
    deadline = time.monotonic() + timeout(10)
    while (body := await stats_of(hub, channel)) != {"clients": clients, "users": users}:
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_two_tabs_of_alice_and_bob_are_two_users(nodes: Callable[..., Any]) -> None:
    a: RunningHub = await nodes(**SETTINGS)
    b: RunningHub = await nodes(**SETTINGS)
    async with (
        a.ws(additional_headers=bearer("alice", name="Alice")) as tab1,
        sse(b, "room:1", headers=bearer("alice", avatar="a.png")) as tab2,
        b.ws(additional_headers=bearer("bob")) as bob,
        a.ws() as anonymous,
    ):
        await tab1.subscribe("room:1")
        await tab2.opening()
        await bob.subscribe("room:1")
        await anonymous.subscribe("room:1")
        await until_stats(a, "room:1", clients=4, users=2)
        assert await stats_of(b, "room:1") == {"clients": 4, "users": 2}

        seen = (await bob.call("presence", channel="room:1"))["ok"]
        assert len(seen["clients"]) == 4 and seen["anonymous"] == 1
        users = {u["user"]: u for u in seen["users"]}
        assert set(users) == {"alice", "bob"}
        assert len(users["alice"]["clients"]) == 2
        assert users["alice"]["info"] == {"name": "Alice", "avatar": "a.png"}  # the union
        assert "info" not in users["bob"]
        counted = (await bob.call("presence_stats", channel="room:1"))["ok"]
        assert counted == {"clients": 4, "users": 2}

        # Anonymous readers are kept out by the namespace's presence_read, as for the listing.
        refused = await anonymous.call("presence_stats", channel="room:1")
        assert refused["error"]["code"] in ("unauthorized", "forbidden")

        async with a.http(headers=API) as http:
            full = (await http.get("/api/presence", params={"channel": "room:1"})).json()
        assert {u["user"] for u in full["users"]} == {"alice", "bob"}
        assert all("address" in c for c in full["clients"])

        async with connect(a.http_url, api_key=KEY) as client:
            assert await client.presence_stats("room:1") == PresenceStats(4, 2)
            listed = {u.user: u for u in await client.presence_users("room:1")}
            assert sorted(listed) == ["alice", "bob"] and len(listed["alice"].clients) == 2
        async with connect(b.http_url, token=mint_token(SECRET, "bob", ["room:*"])) as client:
            subscription = client.subscribe("room:1")
            await until_stats(a, "room:1", clients=5, users=2)
            assert await client.presence_stats("room:1") == PresenceStats(5, 2)
            assert {u.user for u in await client.presence_users("room:1")} == {"alice", "bob"}
            await subscription.unsubscribe()

        await tab1.conn.close()
        await until_stats(b, "room:1", clients=3, users=2)  # alice still has a tab
    await until_stats(a, "room:1", clients=0, users=0)
