"""A client with a connection token (and no API key), off WebSocket: publish, history and
presence through the client API (``/client/*``) with its token, under the rules of the same
ops over WebSocket; through a proxy without WebSocket too (``auto``)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from clarion.client import (
    Disconnected,
    PresenceStats,
    RequestFailed,
    TransportName,
    connect,
)
from clarion.protocol.codes import CloseCode

from ..conftest import RunningHub
from .conftest import FrontFactory, next_message

SECRET = "a-test-secret-of-at-least-32-bytes!"
KEY = "backend-key"
OFF_WEBSOCKET: list[TransportName] = ["sse", "poll"]


def token(user: str = "ada", *, exp: float = 600, **claims: Any) -> str:
    body = {
        "sub": user,
        "channels": ["chat:*"],
        "publish": ["chat:*"],
        "exp": int(time.time() + exp),
        **claims,
    }
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.fixture
async def hub(hub_factory: Any) -> RunningHub:
    """A hub as on the internet: an API key for backends, a token secret for clients (the
    ``front`` fixture serves this one too)."""
    running: RunningHub = await hub_factory(api_key=KEY, token_secret=SECRET)
    return running


async def _round_trip(url: str, transport: TransportName, hub: RunningHub) -> None:
    async with connect(url, token=token(), transport=transport) as client:
        async with client.subscribe("chat:lobby") as sub:
            published = await client.publish("chat:lobby", {"n": 1}, id="m-1")
            assert client.transport == ("sse" if transport == "auto" else transport)
            message = await next_message(sub)
            assert message.data == {"n": 1} and message.cursor == published.cursor
            # The client API's publication: the token's user goes with it, as over WebSocket.
            assert message.info is not None and message.info["user"] == "ada"
            members = await client.presence("chat:lobby")
            users = await client.presence_users("chat:lobby")
            stats = await client.presence_stats("chat:lobby")
        # A long-poll client too, as one client across its polls.
        assert [(m.user, m.transport) for m in members] == [("ada", client.transport)]
        assert [u.user for u in users] == ["ada"] and stats == PresenceStats(1, 1)
        # The same key again, from the same user: published once.
        again = await client.publish("chat:lobby", {"n": 1}, id="m-1")
        assert again.offset == published.offset
        page = await client.history("chat:lobby", limit=10)
        assert [(m.data, m.id) for m in page.publications] == [({"n": 1}, "m-1")]
        backwards = await client.history("chat:lobby", reverse=True)
        assert [m.offset for m in backwards.publications] == [published.offset]


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_a_token_client_publishes_and_reads_off_websocket(
    hub: RunningHub, transport: TransportName
) -> None:
    await _round_trip(hub.http_url, transport, hub)
    # The backend's keys live in a space of their own: its "m-1" is another publication.
    backend = await hub.publish("chat:lobby", "from the backend", id="m-1")
    assert backend["offset"] == 2


async def test_auto_keeps_publishing_behind_a_proxy_without_websocket(
    hub: RunningHub, front: FrontFactory
) -> None:
    await _round_trip(await front(refuse_ws=True), "auto", hub)


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_refusals_are_those_of_the_websocket_ops(
    hub_factory: Any, transport: TransportName
) -> None:
    hub: RunningHub = await hub_factory(
        api_key=KEY,
        token_secret=SECRET,
        namespaces={"news": {"client_publish": False}},
        limits={"client_publish_rate": 1, "client_publish_burst": 1},
    )
    narrow = token(channels=["chat:lobby"], publish=["chat:lobby"])
    async with connect(hub.http_url, token=narrow, transport=transport) as client:
        refusals: list[tuple[str, int]] = []
        for request in (
            client.publish("chat:other", "not mine"),
            client.publish("news:today", "clients may not"),
            client.history("chat:other"),
            client.history("chat:lobby", since="garbage"),
            client.presence("chat:other"),
            client.publish("chat:lobby", "x" * 200_000),
        ):
            with pytest.raises(RequestFailed) as caught:
                await request
            refusals.append((caught.value.code, caught.value.status))
        assert refusals == [
            ("forbidden", 403),
            ("forbidden", 403),
            ("forbidden", 403),
            ("bad_cursor", 400),
            ("forbidden", 403),
            ("too_large", 413),
        ]
        # The client publish rate of the token's user, as on one connection.
        await client.publish("chat:lobby", "first")
        with pytest.raises(RequestFailed) as caught:
            await client.publish("chat:lobby", "too soon")
        assert (caught.value.code, caught.value.status) == ("rate_limited", 429)
        assert not client.closed
    async with connect(hub.http_url, token="not-a-jwt", transport=transport) as client:
        with pytest.raises(RequestFailed) as caught:
            await client.publish("chat:lobby", "refused")
        assert (caught.value.code, caught.value.status) == ("unauthorized", 401)


@pytest.mark.parametrize("transport", OFF_WEBSOCKET)
async def test_requests_carry_the_current_token(hub: RunningHub, transport: TransportName) -> None:
    handed: list[str] = []
    tokens = [token("expired", exp=-60), token("second"), token("third")]

    def next_token() -> str:
        handed.append(tokens[min(len(handed), 2)])  # then "third" for every poll
        return handed[-1]

    async with connect(hub.http_url, token=next_token, transport=transport) as client:
        # Refused as expired before anything was done: sent again, with a fresh token.
        first = await client.publish("chat:lobby", 1)
        assert len(handed) == 2
        await client.publish("chat:lobby", 2)
        assert len(handed) == 2  # the current token, not one asked for each request
        # A stream request asks for a token; the requests after it carry that one.
        async with client.subscribe("chat:lobby", since=first.cursor) as sub:
            assert (await next_message(sub)).data == 2
            assert len(handed) >= 3
            await client.publish("chat:lobby", 3)
            assert (await next_message(sub)).data == 3
        page = await client.history("chat:lobby")
        assert [(m.info or {}).get("user") for m in page.publications] == [
            "second",
            "second",
            "third",
        ]


@pytest.mark.parametrize("transport", ["ws", *OFF_WEBSOCKET])
async def test_a_fixed_token_that_expired_stops_the_client(
    hub: RunningHub, transport: TransportName, caplog: pytest.LogCaptureFixture
) -> None:
    if transport == "ws":  # the connection itself is refused: connect() says so
        with pytest.raises(Disconnected) as caught:
            async with connect(hub.http_url, token=token(exp=-60), transport=transport):
                pass
        assert caught.value.close_code == CloseCode.TOKEN_EXPIRED
    else:
        async with connect(hub.http_url, token=token(exp=-60), transport=transport) as client:
            with pytest.raises(Disconnected) as caught:
                await client.publish("chat:lobby", "too late")
            assert caught.value.close_code == CloseCode.TOKEN_EXPIRED
            assert client.closed
            with pytest.raises(Disconnected):
                await client.history("chat:lobby")
    # A stop is said in the log too, at WARNING (client.md), once.
    stops = [
        r for r in caplog.records if r.name.startswith("clarion.client") and "stopped" in r.message
    ]
    assert [r.levelname for r in stops] == ["WARNING"], caplog.text


async def test_an_api_key_still_goes_through_the_server_api(hub: RunningHub) -> None:
    async with connect(hub.http_url, api_key=KEY, transport="sse") as client:
        published = await client.publish("news:today", "from the backend", id="b-1")
        page = await client.history("news:today")
        assert [(m.offset, m.id, m.info) for m in page.publications] == [
            (published.offset, "b-1", None)
        ]


@pytest.mark.parametrize("transport", ["ws", *OFF_WEBSOCKET])
async def test_a_refusal_says_why_on_every_transport(
    hub_factory: Any, transport: TransportName
) -> None:
    hub: RunningHub = await hub_factory(
        api_key=KEY,
        token_secret=SECRET,
        namespaces={"news": {"client_publish": False}, "room": {"presence_read": "token"}},
    )
    narrow = token(channels=["chat:lobby", "room:*"], publish=["chat:lobby"])
    reader = token(channels=["chat:*"], publish=[])

    async def refusal(request: Any) -> str:
        with pytest.raises(RequestFailed) as caught:
            await request
        return f"{caught.value.code}: {caught.value.message}"

    async with connect(hub.http_url, token=narrow, transport=transport) as client:
        uncovered = "the token's {} claim does not cover it"
        assert await refusal(client.publish("chat:other", 1)) == (
            "forbidden: not allowed to publish to 'chat:other': " + uncovered.format("publish")
        )
        assert await refusal(client.history("chat:other")) == (
            "forbidden: not allowed to read the history of 'chat:other': "
            + uncovered.format("channels")
        )
        assert await refusal(client.presence("room:a")) == (
            "forbidden: not allowed to read the presence of 'room:a': "
            "the token has no presence claim"
        )
        assert await refusal(client.publish("news:today", 1)) == (
            "forbidden: clients may not publish to 'news:today': its namespace takes "
            "publications from the server API only (client_publish = false)"
        )
        with pytest.raises(RequestFailed) as caught:
            async with client.subscribe("chat:other"):
                pass
        assert caught.value.message == (
            "not allowed to subscribe to 'chat:other': " + uncovered.format("channels")
        )
    # Off WebSocket a client that may publish nowhere is refused from its request's head,
    # before the body that names the channel is read.
    to = " to 'chat:lobby'" if transport == "ws" else ""
    async with connect(hub.http_url, token=reader, transport=transport) as client:
        assert await refusal(client.publish("chat:lobby", 1)) == (
            f"forbidden: not allowed to publish{to}: the token has no publish claim"
        )
    async with connect(hub.http_url, transport=transport) as client:
        assert await refusal(client.publish("chat:lobby", 1)) == (
            f"forbidden: not allowed to publish{to}: no token was given (a client "
            "publishes with a token whose publish claim covers the channel, a backend with "
            "the API key)"
        )
