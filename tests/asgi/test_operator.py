"""Operator sessions: the API key as a connection token reads the hub's metrics channel, which
no token opens and no client publishes to."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

import pytest
import websockets
from websockets import Subprotocol

from clarion.core.auth import mint_token
from clarion.core.operator import METRICS_CHANNEL
from clarion.protocol.codes import CloseCode

from ..conftest import RunningHub, timeout
from ..stomp.client import stomp

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


async def test_the_api_key_does_not_publish_to_the_hubs_own_channels(hub_factory: Any) -> None:
    """The admin page's figures come from the hub alone: a backend's publish, batch or
    broadcast there is refused, and nothing is stored."""
    hub = await secured(hub_factory, admin=True)
    key = {"authorization": f"apikey {KEY}"}
    async with hub.http(headers=key) as http:
        r = await http.post("/api/publish", json={"channel": METRICS_CHANNEL, "data": {"x": 1}})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
        r = await http.post(
            "/api/publish_batch",
            json={
                "publications": [
                    {"channel": METRICS_CHANNEL, "data": 1},
                    {"channel": "a", "data": 2},
                ]
            },
        )
        results = r.json()["results"]
        assert results[0]["error"]["code"] == "forbidden" and results[1]["offset"] == 1, results
        r = await http.post(
            "/api/broadcast", json={"channels": ["b", "_clarion:other"], "data": {"x": 1}}
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
        assert (await http.get("/api/history", params={"channel": "b"})).json()[
            "publications"
        ] == []
    history, _ = await hub.hub.history(METRICS_CHANNEL)
    assert all("x" not in p.data for p in history.publications)


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


# Every way a token comes with the HTTP request rather than in the connection's own messages.
REQUEST_SOURCES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "query": ({"token": KEY}, {}),
    "bearer header": ({}, {"authorization": f"Bearer {KEY}"}),
    # The cookie counts only from an allowed page.
    "cookie": ({}, {"cookie": f"clarion_token={KEY}", "origin": "http://127.0.0.1:1"}),
}


@pytest.mark.parametrize("source", REQUEST_SOURCES)
async def test_the_key_with_the_request_opens_no_operator_session(
    hub_factory: Any, source: str
) -> None:
    """A key in a URL lands in access logs and proxies: with the WebSocket upgrade, SSE, a poll
    or STOMP's upgrade it is refused as a token, and the hub's channel stays closed."""
    params, headers = REQUEST_SOURCES[source]
    hub = await secured(hub_factory, admin=True)
    query = "?" + urlencode(params) if params else ""
    async with websockets.connect(
        hub.ws_url + query, subprotocols=[Subprotocol("clarion.v1")], additional_headers=headers
    ) as conn:
        told = json.loads(await asyncio.wait_for(conn.recv(), timeout(5)))["disconnect"]
        assert told["code"] == CloseCode.UNAUTHORIZED and "connect message" in told["reason"]
    async with hub.http() as http:
        for path in ("/sse", "/poll"):
            response = await http.get(
                path, params={"channel": METRICS_CHANNEL, **params}, headers=headers
            )
            assert response.status_code == 401, (path, response.text)
            assert "connect message" in response.json()["error"]["message"]
    async with stomp(hub, query=query, additional_headers=headers) as client:
        await client.send("CONNECT", accept_version="1.2", host="clarion")
        assert "connect message" in (await client.expect("ERROR")).headers["message"]
    # In the connection's own connect message the same key is the operator's.
    async with hub.ws() as ws:
        assert "ok" in await ws.call("connect", token=KEY)
        assert "ok" in await ws.subscribe(METRICS_CHANNEL)
    async with stomp(hub) as client:
        await client.connect(token=KEY)
        await client.send("SUBSCRIBE", id="0", destination="/topic/_clarion\\cmetrics", receipt="r")
        await client.expect("RECEIPT")


@pytest.mark.parametrize("admin", [True, False], ids=["admin", "no admin"])
async def test_no_token_reads_or_writes_the_hubs_own_namespace(
    hub_factory: Any, admin: bool
) -> None:
    """Whatever a token's patterns (all of them "*"), the `_clarion` namespace is closed to it
    on every read — subscribe, history, presence and its counts, over WebSocket and the client
    API — and to every publish; with or without the admin page."""
    hub = await secured(hub_factory, admin=admin)
    token = mint_token(SECRET, "mallory", ["*"], publish=["*"], presence=["*"])
    bearer = {"authorization": f"Bearer {token}"}
    async with hub.ws() as operator, hub.ws() as user, hub.http() as http:
        if admin:  # someone is there to be seen
            assert "ok" in await operator.call("connect", token=KEY)
            assert "ok" in await operator.subscribe(METRICS_CHANNEL)
        assert "ok" in await user.call("connect", token=token)
        assert "ok" in await user.subscribe("chat:a")  # the token works elsewhere
        for op, fields in (
            ("subscribe", {}),
            ("history", {}),
            ("presence", {}),
            ("presence_stats", {}),
            ("publish", {"data": {"forged": True}}),
        ):
            reply = await user.call(op, channel=METRICS_CHANNEL, **fields)
            assert reply.get("error", {}).get("code") == "forbidden", (op, reply)
        for path in ("/client/presence", "/client/presence_stats", "/client/history"):
            r = await http.get(path, params={"channel": METRICS_CHANNEL}, headers=bearer)
            assert r.status_code == 403, (path, r.text)
        r = await http.post(
            "/client/publish", json={"channel": METRICS_CHANNEL, "data": 1}, headers=bearer
        )
        assert r.status_code == 403, r.text


async def test_the_hubs_own_channel_is_not_in_the_nodes_figures(hub_factory: Any) -> None:
    # An idle hub with the admin page open shows no traffic: the page's own feed (a sample a
    # second per node, delivered to the page) is not the application's.
    hub = await secured(hub_factory, admin=True)
    async with hub.ws() as operator, hub.http() as http:
        assert "ok" in await operator.call("connect", token=KEY)
        assert "ok" in await operator.subscribe(METRICS_CHANNEL)
        samples = [(await operator.recv(wait=10))["data"] for _ in range(3)]
        assert [s["publications_per_second"] for s in samples[1:]] == [0, 0]
        assert [s["deliveries_per_second"] for s in samples[1:]] == [0, 0]
        headers = {"authorization": f"apikey {KEY}"}
        (node,) = (await http.get("/api/info", headers=headers)).json()["nodes"]
        assert (node["publications_per_second"], node["deliveries_per_second"]) == (0, 0)
        stats = hub.hub.stats
        assert stats.publications == 0 and sum(stats.deliveries.values()) == 0
        assert not +stats.activity.publications and not +stats.activity.deliveries  # namespaces
        # The application's publications count, and the hub's channel keeps its own rate.
        await http.post("/api/publish", json={"channel": "c", "data": 1}, headers=headers)
        assert stats.publications == 1
        channels = (await http.get("/api/channels", headers=headers)).json()
        assert METRICS_CHANNEL in json.dumps(channels)
