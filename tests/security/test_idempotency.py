"""Idempotency keys: the backend's and the clients' live in separate spaces, and a client's keys
are its user's, so no client can pre-empt a key the backend will use — on both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from clarion.core.auth import mint_token

from ..conftest import RunningHub
from ..redis_fixture import RedisServer, redis_server
from ..stomp.client import stomp

__all__ = ["redis_server"]

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "backend-key"


@pytest.fixture(params=["memory", "redis"])
async def nodes(
    request: pytest.FixtureRequest, hub_factory: Callable[..., Any]
) -> AsyncIterator[tuple[RunningHub, RunningHub]]:
    """Two hubs sharing one engine (for memory, the same hub twice)."""
    settings = {"token_secret": SECRET, "api_key": KEY}
    if request.param == "memory":
        hub: RunningHub = await hub_factory(**settings)
        yield hub, hub
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    a: RunningHub = await hub_factory(engine=server.url, **settings)
    b: RunningHub = await hub_factory(engine=server.url, **settings)
    yield a, b


def bearer(user: str) -> dict[str, str]:
    token = mint_token(SECRET, user, ["inv:*"], publish=["inv:*"])
    return {"Authorization": f"Bearer {token}"}


async def backend_publish(hub: RunningHub, data: Any, key: str) -> dict[str, Any]:
    return await hub.publish("inv:1", data, id=key)


async def client_publish(hub: RunningHub, user: str, data: Any, key: str) -> dict[str, Any]:
    async with hub.ws(additional_headers=bearer(user)) as ws:
        reply = await ws.call("publish", channel="inv:1", data=data, pub_id=key)
    ok: dict[str, Any] = reply["ok"]
    return ok


async def history(hub: RunningHub) -> list[Any]:
    async with hub.http(headers={"Authorization": f"apikey {KEY}"}) as http:
        r = await http.get("/api/history", params={"channel": "inv:1"})
    return [p["data"] for p in r.json()["publications"]]


async def test_a_client_cannot_pre_empt_the_backends_key(
    nodes: tuple[RunningHub, RunningHub],
) -> None:
    a, b = nodes
    taken = await client_publish(a, "mallory", "forged", "invoice-1001")
    real = await backend_publish(b, "real", "invoice-1001")
    assert real["offset"] == taken["offset"] + 1
    # Within each space a repeat is still answered with the first publication.
    assert (await backend_publish(a, "again", "invoice-1001"))["offset"] == real["offset"]
    assert (await client_publish(b, "mallory", "again", "invoice-1001")) == taken
    assert await history(a) == ["forged", "real"]


async def test_the_backend_cannot_swallow_a_clients_key(
    nodes: tuple[RunningHub, RunningHub],
) -> None:
    a, b = nodes
    first = await backend_publish(a, "backend", "k")
    mine = await client_publish(b, "alice", "client", "k")
    assert mine["offset"] == first["offset"] + 1
    # App code publishing from Python shares the backend's space with the server API.
    same = await a.hub.publish("inv:1", "app code", idempotency_key="k")
    assert same.repeated and same.offset == first["offset"]
    assert await history(b) == ["backend", "client"]


async def test_client_keys_belong_to_the_user(nodes: tuple[RunningHub, RunningHub]) -> None:
    a, b = nodes
    alice = await client_publish(a, "alice", "from alice", "msg-1")
    # Another connection of the same user, on another node and transport: the same key space,
    # so a retry after a lost answer is published once.
    async with stomp(b) as client:
        await client.connect(passcode=bearer("alice")["Authorization"].removeprefix("Bearer "))
        await client.send(
            "SEND", '"retry"', destination="/topic/inv\\c1", receipt="r",
            **{"x-idempotency-key": "msg-1"},
        )  # fmt: skip
        receipt = await client.expect("RECEIPT")
        assert receipt.headers["x-cursor"] == alice["cursor"]
    # Another user's identical key is another key.
    bob = await client_publish(b, "bob", "from bob", "msg-1")
    assert bob["offset"] == alice["offset"] + 1
    assert await history(a) == ["from alice", "from bob"]


async def test_sessions_without_a_user_keep_keys_of_their_own(hub: RunningHub) -> None:
    # Development mode: clients are trusted but have no user, so each connection is its space.
    async with hub.ws() as one, hub.ws() as two:
        first = (await one.call("publish", channel="c", data=1, pub_id="k"))["ok"]
        again = (await one.call("publish", channel="c", data=2, pub_id="k"))["ok"]
        other = (await two.call("publish", channel="c", data=3, pub_id="k"))["ok"]
    backend = await hub.publish("c", 4, id="k")
    assert again == first
    assert [other["offset"], backend["offset"]] == [first["offset"] + 1, first["offset"] + 2]
