"""The server API over real HTTP: success paths, API keys, and errors that are never tracebacks."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from clarion.protocol.errors import ErrorCode

from ..conftest import RunningHub, until
from ..stomp.client import stomp
from ..transports.streams import sse


async def test_publish_and_history(hub: RunningHub) -> None:
    async with hub.http() as http:
        first = (await http.post("/api/publish", json={"channel": "c", "data": {"n": 1}})).json()
        assert first["offset"] == 1 and first["epoch"] and first["cursor"]
        await http.post("/api/publish", json={"channel": "c", "data": {"n": 2}})
        body = (await http.get("/api/history", params={"channel": "c"})).json()
        assert [p["data"] for p in body["publications"]] == [{"n": 1}, {"n": 2}]
        assert body["more"] is False and "reset" not in body
        since = (
            await http.get("/api/history", params={"channel": "c", "since": first["cursor"]})
        ).json()
        assert [p["offset"] for p in since["publications"]] == [2]
        page = (await http.get("/api/history", params={"channel": "c", "limit": "1"})).json()
        assert len(page["publications"]) == 1 and page["more"] is True


async def test_idempotent_publish(hub: RunningHub) -> None:
    async with hub.http() as http:
        a = (await http.post("/api/publish", json={"channel": "c", "data": 1, "id": "k"})).json()
        b = (await http.post("/api/publish", json={"channel": "c", "data": 2, "id": "k"})).json()
        assert a["offset"] == b["offset"] == 1


async def test_publish_answers_alike_whatever_the_body_framing(hub: RunningHub) -> None:
    """A body sent whole is answered by clarion's server without ASGI; chunked, it goes
    through the app: the same answers either way, errors included."""

    async def chunked(body: bytes) -> AsyncIterator[bytes]:
        yield body[:5]
        yield body[5:]

    async with hub.ws() as ws, hub.http() as http:
        await ws.subscribe("f")
        for n, framing in enumerate((lambda b: b, chunked), start=1):
            body = b'{"channel": "f", "data": %d, "id": "k%d"}' % (n, n)
            r = await http.post("/api/publish", content=framing(body))
            assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
            assert r.json()["offset"] == n and (await ws.recv())["data"] == n
            again = await http.post("/api/publish", content=framing(body))
            assert again.json() == r.json()
            bad = await http.post("/api/publish", content=framing(b'{"channel": "f"}   '))
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


async def test_broadcast_presence_channels(hub: RunningHub) -> None:
    async with hub.ws() as ws, hub.http() as http:
        await ws.subscribe("a")
        r = await http.post("/api/broadcast", json={"channels": ["a", "b"], "data": "x"})
        assert [(x["channel"], x["offset"]) for x in r.json()["results"]] == [("a", 1), ("b", 1)]
        assert (await ws.recv())["data"] == "x"
        presence = (await http.get("/api/presence", params={"channel": "a"})).json()
        assert [c["transport"] for c in presence["clients"]] == ["ws"]
        node = (await http.get("/api/info")).json()["node"]
        channels = (await http.get("/api/channels")).json()
        assert channels["channels"] == [
            {"channel": "a", "subscribers": 1, "publication_rate": 0.0, "nodes": [node]}
        ]
        assert channels["complete"] is True and channels["total"] == 1


async def test_healthz_metrics_openapi(hub: RunningHub) -> None:
    async with hub.ws() as ws, hub.http() as http:
        await ws.subscribe("m")
        await hub.publish("m", 1)
        await ws.recv()
        health = await http.get("/healthz", headers={"origin": "http://elsewhere.example"})
        assert health.json() == {"status": "ok", "engine": "memory"}
        assert health.headers["access-control-allow-origin"] == "*"  # any page may read it
        metrics = (await http.get("/metrics")).text
        assert 'clarion_connections{transport="ws"} 1.0' in metrics
        assert 'clarion_deliveries_total{transport="ws"} 1.0' in metrics
        assert "clarion_publications_total 1.0" in metrics
        spec = (await http.get("/api/openapi.json")).json()
        assert spec["openapi"].startswith("3.") and "/api/publish" in spec["paths"]


async def test_metrics_count_sessions_and_subscriptions_as_they_come_and_go(
    hub: RunningHub,
) -> None:
    """The gauges are kept as sessions and subscriptions come and go (a scrape walks no
    session): after subscriptions made, refused, ended by the client and by the backend, and
    sessions closed, on WebSocket, STOMP and SSE, they are what a walk over the sessions finds.
    """

    def walked() -> dict[tuple[str, str], float]:
        sessions = list(hub.hub.sessions.values())
        counts: dict[tuple[str, str], float] = {}
        for kind in ("ws", "sse", "poll", "stomp"):
            held = [s for s in sessions if s.transport.kind == kind]
            counts["clarion_connections", kind] = len(held)
            counts["clarion_subscriptions", kind] = sum(len(s.subscriptions) for s in held)
        return counts

    async def scraped(http: httpx.AsyncClient) -> dict[tuple[str, str], float]:
        text = (await http.get("/metrics")).text
        found = re.findall(
            r'^(clarion_(?:connections|subscriptions))\{transport="(\w+)"\} (\S+)$', text, re.M
        )
        return {(name, kind): float(n) for name, kind, n in found}

    async with hub.http() as http:
        async with hub.ws() as a, hub.ws() as b, stomp(hub) as client:
            for channel in ("x", "y", "z"):
                await a.subscribe(channel)
            await b.subscribe("x")
            assert (await b.call("subscribe", channel="x"))["error"]["code"] == "already_subscribed"
            assert (await b.call("subscribe", channel="bad name"))["error"]["code"] == "bad_channel"
            await a.call("unsubscribe", channel="y")
            ended = next(s.id for s in hub.hub.sessions.values() if "z" in s.subscriptions)
            await http.post("/api/unsubscribe", json={"client": ended, "channel": "z"})
            assert (await a.recv())["unsubscribe"] == {"channel": "z", "reason": "server"}
            await client.connect()
            await client.send("SUBSCRIBE", id="1", destination="/topic/x", receipt="r")
            await client.expect("RECEIPT")
            async with sse(hub, "x", "y") as stream:
                await stream.opening()
                now = await scraped(http)
                assert now == walked()
                assert now["clarion_connections", "ws"] == 2
                assert now["clarion_subscriptions", "ws"] == 2
                assert now["clarion_subscriptions", "sse"] == 2
                assert now["clarion_subscriptions", "stomp"] == 1
        await until(lambda: not hub.hub.sessions)
        assert set((await scraped(http)).values()) == {0.0}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/publish", "POST"),
        ("GET", "/api/publish_batch", "POST"),
        ("PUT", "/api/history", "GET, HEAD"),
        ("POST", "/sse", "GET, OPTIONS"),
        ("PUT", "/poll", "GET, DELETE, OPTIONS"),
        ("GET", "/client/publish", "POST, OPTIONS"),
    ],
)
async def test_a_405_says_what_the_endpoint_takes(
    hub: RunningHub, method: str, path: str, allow: str
) -> None:
    async with hub.http() as http:
        r = await http.request(method, path)
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
        assert set(r.headers["allow"].split(", ")) == set(allow.split(", "))


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("POST", "/api/publish", {"content": b"{nope"}, 400, "bad_request"),
        ("POST", "/api/publish", {"json": [1]}, 400, "bad_request"),
        ("POST", "/api/publish", {"json": {"data": 1}}, 400, "bad_channel"),
        ("POST", "/api/publish", {"json": {"channel": "a b", "data": 1}}, 400, "bad_channel"),
        ("POST", "/api/publish", {"json": {"channel": "c"}}, 400, "bad_request"),
        (
            "POST",
            "/api/publish",
            {"json": {"channel": "c", "data": 1, "id": 5}},
            400,
            "bad_request",
        ),
        ("POST", "/api/broadcast", {"json": {"channels": [], "data": 1}}, 400, "bad_request"),
        ("GET", "/api/history", {}, 400, "bad_request"),
        ("GET", "/api/history", {"params": {"channel": "c", "since": "zz"}}, 400, "bad_cursor"),
        ("GET", "/api/history", {"params": {"channel": "c", "limit": "-1"}}, 400, "bad_request"),
        ("GET", "/api/presence", {"params": {"channel": ""}}, 400, "bad_channel"),
        ("POST", "/api/disconnect", {"json": {}}, 400, "bad_request"),
        ("GET", "/api/publish", {}, 405, "method_not_allowed"),
        ("GET", "/nowhere", {}, 404, "not_found"),
        # The router's refusals, a raw endpoint's and a path refused before routing.
        ("PUT", "/api/history", {}, 405, "method_not_allowed"),
        ("POST", "/sse", {}, 405, "method_not_allowed"),
        ("GET", "/poll", {"params": {"channel": "c", "cursor": "zz"}}, 400, "bad_cursor"),
        ("GET", "/%61pi/history", {}, 404, "not_found"),
    ],
)
async def test_errors_are_json(
    hub: RunningHub, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    async with hub.http() as http:
        r = await http.request(method, path, **kwargs)
        # One writer for every HTTP error: the status is the code's, from the error table.
        assert r.status_code == status == ErrorCode(code).status
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
        error = r.json()["error"]
        assert error["code"] == code and error["message"]
        assert "Traceback" not in r.text


async def test_the_hub_s_address_says_what_is_served(hub: RunningHub) -> None:
    """Someone opens the hub's address in a browser: a 404 that points at the endpoints."""
    async with hub.http() as http:
        r = await http.get("/")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert r.json()["error"]["message"].startswith("this is a clarion hub: nothing is served at /")
    assert "/healthz" in r.text and "/clarion.js" in r.text


async def test_api_key_required_when_configured(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(api_key=["new-key", "old-key"], token_secret="s" * 32)
    async with hub.http() as http:
        body = {"channel": "c", "data": 1}
        missing = await http.post("/api/publish", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        wrong = await http.post("/api/publish", json=body, headers={"Authorization": "apikey x"})
        assert wrong.status_code == 401
        bearer = await http.post(
            "/api/publish", json=body, headers={"Authorization": "Bearer new-key"}
        )
        assert bearer.status_code == 401
        assert "Bearer is for connection tokens" in bearer.json()["error"]["message"]
        for key in ("new-key", "old-key"):  # rotation: both work
            ok = await http.post(
                "/api/publish", json=body, headers={"Authorization": f"apikey {key}"}
            )
            assert ok.status_code == 200
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/healthz")).status_code == 200


async def test_disconnect_user(hub_factory) -> None:  # type: ignore[no-untyped-def]
    from clarion.core.auth import mint_token

    hub = await hub_factory(token_secret="secret-" * 5, api_key="k")
    token = mint_token("secret-" * 5, "u1", ["*"])
    async with hub.ws(additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert (await ws.subscribe("c"))["ok"]
        async with hub.http() as http:
            assert (
                await http.post(
                    "/api/disconnect", json={"user": "u1"}, headers={"Authorization": "apikey k"}
                )
            ).status_code == 200
        push = await ws.recv()
        assert push["disconnect"] == {"code": 4501, "reason": "disconnected", "reconnect": False}


async def test_openapi_documents_every_http_route(hub: RunningHub) -> None:
    from starlette.routing import Route

    app = hub.hub.asgi_app()
    async with hub.http() as http:
        spec = (await http.get("/api/openapi.json")).json()
    undocumented = {"/api/openapi.json", "/clarion.js"}
    for route in app.routes:
        if isinstance(route, Route) and route.path not in undocumented:
            assert route.path in spec["paths"], route.path
            for method in route.methods or {"GET"}:
                if method != "HEAD":
                    assert method.lower() in spec["paths"][route.path], (route.path, method)
