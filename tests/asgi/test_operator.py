"""Operator sessions: the API key as a connection token reads the hub's metrics channel, which
no token opens and no client publishes to."""

from __future__ import annotations

from typing import Any

from clarion.core.auth import mint_token

from ..conftest import RunningHub

SECRET = "operator-test-secret-0123456789abcdef"
KEY = "operator-key"


async def secured(hub_factory: Any, **kw: Any) -> RunningHub:
    hub: RunningHub = await hub_factory(
        api_key=KEY, token_secret=SECRET, allowed_origins=["http://127.0.0.1:*"], **kw
    )
    return hub


async def test_the_api_key_reads_the_metrics_channel(hub_factory: Any) -> None:
    hub = await secured(hub_factory, admin=True)
    async with hub.ws() as operator, hub.ws() as user, hub.http() as http:
        assert "ok" in await operator.call("connect", token=KEY)
        assert "ok" in await operator.subscribe("_clarion:metrics")
        token = mint_token(SECRET, "alice", ["*"])
        assert "ok" in await user.call("connect", token=token)
        sample = await operator.recv(wait=10)
        node = (await http.get("/api/info", headers={"authorization": f"apikey {KEY}"})).json()
        assert sample["channel"] == "_clarion:metrics"
        assert sample["data"]["node"] == node["node"]
        assert {"connections", "deliveries_per_second", "p99_ms"} <= set(sample["data"])
        # The operator's own session is apart from the connections it watches.
        mine = node["nodes"][0]
        assert mine["connections"]["ws"] == 1 and mine["operators"] == 1
        # A token that allows every channel still does not open the hub's own.
        refused = await user.subscribe("_clarion:metrics")
        assert refused["error"]["code"] == "forbidden"
        refused = await user.call("publish", channel="_clarion:metrics", data={})
        assert refused["error"]["code"] == "forbidden"


async def test_a_wrong_key_is_no_token(hub_factory: Any) -> None:
    hub = await secured(hub_factory, admin=True)
    async with hub.ws() as ws:
        reply = await ws.call("connect", token=KEY + "x")
        assert reply["error"]["code"] == "unauthorized"


async def test_without_admin_the_key_is_no_token(hub_factory: Any) -> None:
    hub = await secured(hub_factory)
    async with hub.ws() as ws:
        reply = await ws.call("connect", token=KEY)
        assert reply["error"]["code"] == "unauthorized"
