"""Presence is read only by those the namespace allows (default: subscribers with a token), and a
token's `info` is shown to clients only where the namespace shares it — on every transport."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest

from ..conftest import WS, RunningHub
from ..transports.streams import SseClient, sse

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "backend-key"
EMAIL = {"email": "alice@example.com"}
NAMESPACES = {
    "public": {"anonymous": True, "join_leave": True},
    "open": {"anonymous": True, "join_leave": True, "presence_read": "anyone"},
    "team": {"join_leave": True, "presence_read": "token"},
    "shared": {"anonymous": True, "join_leave": True, "presence_info": True},
}


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(token_secret=SECRET, api_key=KEY, namespaces=NAMESPACES)
    return running


def token(user: str, **claims: Any) -> str:
    body = {
        "sub": user,
        "channels": ["public:*", "open:*", "team:*", "shared:*"],
        "exp": int(time.time()) + 600,
        **claims,
    }
    return jwt.encode(body, SECRET, algorithm="HS256")


@asynccontextmanager
async def member(
    hub: RunningHub, channel: str, user: str | None, **claims: Any
) -> AsyncIterator[WS]:
    """A WebSocket session (with a token for ``user``, or anonymous) subscribed to ``channel``."""
    headers = {"Authorization": f"Bearer {token(user, **claims)}"} if user else {}
    async with hub.ws(additional_headers=headers) as ws:
        assert "ok" in await ws.subscribe(channel)
        yield ws


async def presence(ws: WS, channel: str) -> dict[str, Any]:
    return await ws.call("presence", channel=channel)


async def joined(ws: WS, user: str) -> dict[str, Any]:
    """The join event of ``user`` (earlier joins, e.g. the session's own, are skipped)."""
    while True:
        push = await ws.recv()
        assert "join" in push, push
        if push["join"]["user"] == user:
            event: dict[str, Any] = push["join"]
            return event


async def sse_joined(stream: SseClient, user: str) -> dict[str, Any]:
    while True:
        event = await stream.next()
        assert event.event == "join", event
        if event.json()["user"] == user:
            body: dict[str, Any] = event.json()
            return body


async def pushes_until_marker(ws: WS, marker: Any) -> list[dict[str, Any]]:
    """Every push up to the publication carrying ``marker``."""
    seen = []
    while True:
        push = await ws.recv()
        if push.get("data") == marker:
            return seen
        seen.append(push)


async def sse_events_until_marker(stream: SseClient, marker: Any) -> list[str]:
    kinds = []
    while True:
        event = await stream.next()
        if event.event == "message" and event.json().get("data") == marker:
            return kinds
        kinds.append(event.event)


async def test_anonymous_sessions_never_see_who_is_there(hub: RunningHub) -> None:
    channel = "public:lobby"
    async with (
        member(hub, channel, None) as anonymous,
        sse(hub, channel) as stream,
        member(hub, channel, "bob") as bob,
    ):
        await stream.opening()
        await joined(bob, "bob")
        async with member(hub, channel, "alice", info=EMAIL):
            join = await joined(bob, "alice")  # bob, a subscriber with a token, is told
            assert "info" not in join
            await hub.publish(channel, "marker")
            assert await pushes_until_marker(anonymous, "marker") == []
            assert await sse_events_until_marker(stream, "marker") == []
            reply = await presence(anonymous, channel)
            assert reply["error"]["code"] == "unauthorized", reply
            async with hub.ws() as stranger:  # not even subscribed
                assert (await presence(stranger, channel))["error"]["code"] == "unauthorized"
            users = {c["user"] for c in (await presence(bob, channel))["ok"]["clients"]}
            assert users == {"alice", "bob", None}  # None: the anonymous subscribers
            assert all("info" not in c for c in (await presence(bob, channel))["ok"]["clients"])


async def test_a_token_is_not_enough_without_subscribing(hub: RunningHub) -> None:
    async with member(hub, "public:lobby", "alice"):
        headers = {"Authorization": f"Bearer {token('bob')}"}
        async with hub.ws(additional_headers=headers) as bob:
            reply = await presence(bob, "public:lobby")
            assert reply["error"]["code"] == "forbidden"
            assert "subscribe" in reply["error"]["message"]
        # The `presence` claim grants reading without subscribing.
        headers = {"Authorization": f"Bearer {token('carol', presence=['public:*'])}"}
        async with hub.ws(additional_headers=headers) as carol:
            clients = (await presence(carol, "public:lobby"))["ok"]["clients"]
            assert [c["user"] for c in clients] == ["alice"]
            assert (await presence(carol, "open:x"))["ok"] == {
                "clients": [],
                "users": [],
                "anonymous": 0,
            }  # anyone may
            assert (await presence(carol, "shared:x"))["error"]["code"] == "forbidden"


async def test_namespace_anyone_lets_anonymous_sessions_read(hub: RunningHub) -> None:
    async with member(hub, "open:hall", "alice", info=EMAIL), hub.ws() as anonymous:
        clients = (await presence(anonymous, "open:hall"))["ok"]["clients"]
        assert [c["user"] for c in clients] == ["alice"] and "info" not in clients[0]
        # Whoever may subscribe: a namespace that is not anonymous still needs the token.
        assert (await presence(anonymous, "team:x"))["error"]["code"] == "unauthorized"


async def test_namespace_token_needs_the_claim_even_from_subscribers(hub: RunningHub) -> None:
    channel = "team:ops"
    async with member(hub, channel, "bob") as bob:
        assert (await presence(bob, channel))["error"]["code"] == "forbidden"
        async with member(hub, channel, "lead", presence=["team:*"]) as lead:
            users = {c["user"] for c in (await presence(lead, channel))["ok"]["clients"]}
            assert users == {"bob", "lead"}
            async with member(hub, channel, "carol"):
                await joined(lead, "carol")
                await hub.publish(channel, "marker")
                assert await pushes_until_marker(bob, "marker") == []
                assert (await lead.recv())["data"] == "marker"


async def test_info_is_shown_where_the_namespace_shares_it(hub: RunningHub) -> None:
    channel = "shared:room"
    async with member(hub, channel, "bob") as bob, sse(hub, channel, token=token("dave")) as stream:
        await stream.opening()
        async with member(hub, channel, "alice", info=EMAIL):
            assert (await joined(bob, "alice"))["info"] == EMAIL
            assert (await sse_joined(stream, "alice"))["info"] == EMAIL
            clients = (await presence(bob, channel))["ok"]["clients"]
            assert {c["user"]: c.get("info") for c in clients}["alice"] == EMAIL


async def test_the_server_api_sees_everything(hub: RunningHub) -> None:
    async with member(hub, "public:lobby", "alice", info=EMAIL):
        async with hub.http(headers={"Authorization": f"apikey {KEY}"}) as http:
            r = await http.get("/api/presence", params={"channel": "public:lobby"})
        (entry,) = r.json()["clients"]
        assert entry["user"] == "alice" and entry["info"] == EMAIL
        async with hub.http() as http:
            r = await http.get("/api/presence", params={"channel": "public:lobby"})
            assert r.status_code == 401


async def test_a_bad_presence_claim_refuses_the_token(hub: RunningHub) -> None:
    headers = {"Authorization": f"Bearer {token('eve', presence=['no spaces'])}"}
    async with hub.ws(additional_headers=headers) as ws:
        push = await ws.recv()
        assert push["disconnect"]["code"] == 4500 and "'presence'" in push["disconnect"]["reason"]
