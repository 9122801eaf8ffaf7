"""``/client/publish``, ``/client/history``, ``/client/presence``: the WebSocket ops' rules for
clients on SSE and polling, with the connection token, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from clarion.core.auth import mint_token

from ..conftest import RunningHub, timeout

SECRET = "client-api-secret-0123456789abcdef"
ORIGIN = "https://app.example.com"


def token(user: str = "alice", **kw: Any) -> str:
    kw.setdefault("publish", ["chat:*"])
    return mint_token(SECRET, user, kw.pop("channels", ["chat:*"]), **kw)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


@pytest.fixture
async def secured(hub_factory: Any) -> RunningHub:
    hub: RunningHub = await hub_factory(
        token_secret=SECRET,
        api_key="backend-key",
        allowed_origins=[ORIGIN],
        limits={"client_publish_rate": 0.5, "client_publish_burst": 3},
    )
    return hub


async def test_publish_history_and_presence_with_the_users_token(secured: RunningHub) -> None:
    alice = token()
    async with secured.http() as http:
        r = await http.post(
            "/client/publish", json={"channel": "chat:a", "data": {"t": 1}}, headers=bearer(alice)
        )
        assert r.status_code == 200, r.text
        assert r.json()["offset"] == 1 and r.json()["cursor"]
        await http.post(
            "/client/publish", json={"channel": "chat:a", "data": {"t": 2}}, headers=bearer(alice)
        )
        r = await http.get("/client/history", params={"channel": "chat:a"}, headers=bearer(alice))
        pubs = r.json()["publications"]
        assert [p["data"] for p in pubs] == [{"t": 1}, {"t": 2}]
        assert pubs[0]["info"]["user"] == "alice"  # who published, as over WebSocket
        r = await http.get(
            "/client/history",
            params={"channel": "chat:a", "reverse": "1", "limit": "1"},
            headers=bearer(alice),
        )
        assert [p["data"] for p in r.json()["publications"]] == [{"t": 2}]
        async with secured.ws() as ws:
            assert "ok" in await ws.call("connect", token=token("bob"))
            await ws.subscribe("chat:a")
            r = await http.get(
                "/client/presence", params={"channel": "chat:a"}, headers=bearer(alice)
            )
            assert r.status_code == 200, r.text
            assert [c["user"] for c in r.json()["clients"]] == ["bob"]
            r = await http.get(
                "/client/presence_stats", params={"channel": "chat:a"}, headers=bearer(alice)
            )
            assert r.json() == {"clients": 1, "users": 1}
            # Presence of a channel the token may not read is not the user's to see.
            r = await http.get(
                "/client/presence_stats", params={"channel": "news:a"}, headers=bearer(alice)
            )
            assert r.status_code == 403
    # Nothing stays behind: each request was a session only while it ran.
    assert not secured.hub.sessions


async def test_the_token_rules_apply_and_the_api_key_grants_nothing(secured: RunningHub) -> None:
    async with secured.http() as http:

        async def publish(channel: str, headers: dict[str, str]) -> httpx.Response:
            return await http.post(
                "/client/publish", json={"channel": channel, "data": 1}, headers=headers
            )

        # Anonymous, as over WebSocket; the backend's key makes no one a client.
        r = await publish("chat:a", {})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await publish("chat:a", {"authorization": "apikey backend-key"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await publish("news:a", bearer(token()))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await publish("chat:a", bearer(token(publish=["other:*"])))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await publish("chat:a", bearer(token(ttl=-10)))
        assert (r.status_code, r.json()["error"]["code"]) == (401, "token_expired")
        r = await publish("chat:a", bearer("not-a-token"))
        assert r.status_code == 401
        for path in ("/client/history", "/client/presence", "/client/presence_stats"):
            r = await http.get(path, params={"channel": "news:a"}, headers=bearer(token()))
            assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden"), path
            r = await http.get(path, params={"channel": "chat:a"})
            assert r.status_code == 401, path
        # The token may also come as ?token=, as on /sse and /poll.
        r = await http.get("/client/history", params={"channel": "chat:a", "token": token()})
        assert r.status_code == 200
    assert secured.hub.stats.errors["forbidden"] >= 4


async def test_publishing_is_held_to_the_client_rate_across_requests(secured: RunningHub) -> None:
    alice = bearer(token())
    async with secured.http() as http:
        codes = []
        for n in range(5):
            r = await http.post(
                "/client/publish", json={"channel": "chat:r", "data": n}, headers=alice
            )
            codes.append(r.status_code)
        assert codes[:3] == [200, 200, 200]  # the burst
        assert 429 in codes[3:]
        r = await http.post("/client/publish", json={"channel": "chat:r", "data": 9}, headers=alice)
        assert r.json()["error"]["code"] == "rate_limited"
        # Another user has a bucket of their own.
        r = await http.post(
            "/client/publish", json={"channel": "chat:r", "data": 1}, headers=bearer(token("bob"))
        )
        assert r.status_code == 200


async def test_history_and_presence_reads_are_held_to_the_command_rate(
    hub_factory: Any,
) -> None:
    """A loop of reads over HTTP spends the command budget of one connection, per user (per
    address without one) across requests: over it, 429 ``rate_limited``."""
    hub: RunningHub = await hub_factory(
        token_secret=SECRET,
        api_key="backend-key",
        allowed_origins=[ORIGIN],
        # A token every 100 s: however slow the machine, none comes back during the test.
        limits={"client_command_rate": 0.01, "max_subscriptions_per_connection": 1},
    )
    burst = hub.hub.settings.limits.command_burst
    alice = bearer(token())
    async with hub.http() as http:
        for path in ["/client/history", "/client/presence"] * (burst // 2):
            r = await http.get(path, params={"channel": "chat:r"}, headers=alice)
            assert r.status_code == 200, r.text
        for path in ("/client/history", "/client/presence", "/client/presence_stats"):
            r = await http.get(path, params={"channel": "chat:r"}, headers=alice)
            assert (r.status_code, r.json()["error"]["code"]) == (429, "rate_limited")
        # Another user has a budget of their own.
        r = await http.get(
            "/client/history", params={"channel": "chat:r"}, headers=bearer(token("bob"))
        )
        assert r.status_code == 200


async def test_a_client_that_may_publish_nowhere_is_answered_before_its_body(
    secured: RunningHub,
) -> None:
    """Credentials come from the request's head: without a `publish` claim (anonymous, or a
    token without one) the refusal comes at once, with most of a declared body unsent — the
    hub holds none of it (it held up to the body cap per connection until the body's
    timeout)."""
    for auth in ("", f"Authorization: Bearer {token(publish=[])}\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", secured.port)
        try:
            writer.write(
                (
                    "POST /client/publish HTTP/1.1\r\nHost: x\r\n"
                    f"{auth}Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                    '{"channel": "chat:a", "data": "'
                ).encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(10))
            assert head.startswith(b"HTTP/1.1 403"), head
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("method", "path", "kw", "status", "code"),
    [
        ("POST", "/client/publish", {"content": b"not json"}, 400, "bad_request"),
        ("POST", "/client/publish", {"json": [1]}, 400, "bad_request"),
        ("POST", "/client/publish", {"json": {"channel": "chat:a"}}, 400, "bad_request"),
        (
            "POST",
            "/client/publish",
            {"json": {"channel": "bad channel", "data": 1}},
            400,
            "bad_channel",
        ),
        (
            "POST",
            "/client/publish",
            {"json": {"channel": "chat:a", "data": 1, "pub_id": 5}},
            400,
            "bad_request",
        ),
        (
            "POST",
            "/client/publish",
            {"json": {"channel": "chat:a", "data": "x" * 70_000}},
            413,
            "too_large",
        ),
        # Read (orjson reads 1,024 levels), but too deep to write back (254).
        (
            "POST",
            "/client/publish",
            {"content": b'{"channel":"chat:a","data":' + b"[" * 300 + b"]" * 300 + b"}"},
            400,
            "bad_request",
        ),
        (
            "POST",
            "/client/publish",
            {"content": b'{"channel":"chat:a","data":1,"x":' + b'{"":' * 260 + b"1" + b"}" * 261},
            400,
            "bad_request",
        ),
        ("GET", "/client/publish", {}, 405, "method_not_allowed"),
        ("POST", "/client/history", {"json": {}}, 405, "method_not_allowed"),
        ("GET", "/client/history", {}, 400, "bad_channel"),
        (
            "GET",
            "/client/history",
            {"params": {"channel": "chat:a", "since": "garbage"}},
            400,
            "bad_cursor",
        ),
        (
            "GET",
            "/client/history",
            {"params": {"channel": "chat:a", "limit": "-1"}},
            400,
            "bad_request",
        ),
        (
            "GET",
            "/client/history",
            {"params": {"channel": "chat:a", "limit": "5000"}},
            400,
            "bad_request",
        ),
        (
            "GET",
            "/client/history",
            {"params": {"channel": "chat:a", "reverse": "maybe"}},
            400,
            "bad_request",
        ),
        (
            "GET",
            "/client/history",
            {"params": [("channel", "chat:a"), ("channel", "chat:b")]},
            400,
            "bad_request",
        ),
        (
            "GET",
            "/client/presence",
            {"params": {"channel": "chat:a", "other": "1"}},
            400,
            "bad_request",
        ),
    ],
)
async def test_bad_requests_get_documented_errors(
    secured: RunningHub, method: str, path: str, kw: dict[str, Any], status: int, code: str
) -> None:
    async with secured.http() as http:
        r = await http.request(method, path, headers=bearer(token()), **kw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert not secured.hub.sessions


async def test_browser_origins_and_preflight(secured: RunningHub) -> None:
    async with secured.http() as http:
        r = await http.options(
            "/client/publish",
            headers={"origin": ORIGIN, "access-control-request-method": "POST"},
        )
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"]
        r = await http.post(
            "/client/publish",
            json={"channel": "chat:a", "data": 1},
            headers={"origin": ORIGIN, **bearer(token())},
        )
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
        # Another site's page cannot use a visitor's cookie to publish.
        r = await http.post(
            "/client/publish",
            json={"channel": "chat:a", "data": 1},
            headers={"origin": "https://evil.example", "cookie": f"clarion_token={token()}"},
        )
        assert (r.status_code, r.json()["error"]["code"]) == (403, "origin_forbidden")
        r = await http.get("/client/history", params={"channel": "chat:a"}, headers=bearer(token()))
        assert [p["data"] for p in r.json()["publications"]] == [1]


async def test_many_requests_at_once_leave_no_session(secured: RunningHub) -> None:
    alice = bearer(token())
    async with secured.http() as http:
        replies = await asyncio.gather(
            *(
                http.get("/client/history", params={"channel": "chat:a"}, headers=alice)
                for _ in range(30)
            )
        )
    assert {r.status_code for r in replies} == {200}
    assert not secured.hub.sessions


async def test_a_client_s_presence_reply_is_bounded(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(
        token_secret=SECRET, api_key="backend-key", limits={"max_presence_clients": 3}
    )
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(hub.ws()) for _ in range(5)]
        for n, ws in enumerate(sockets):
            assert "ok" in await ws.call("connect", token=token(f"u{n}"))
            await ws.subscribe("chat:a")
        reply = (await sockets[0].call("presence", channel="chat:a"))["ok"]
        assert len(reply["clients"]) == 3 and reply["truncated"] is True
        assert len(reply["users"]) == 3 and reply["anonymous"] == 0
        async with hub.http() as http:
            params = {"channel": "chat:a"}
            r = await http.get("/client/presence", params=params, headers=bearer(token()))
            assert len(r.json()["clients"]) == 3 and r.json()["truncated"] is True
            stats = await http.get("/client/presence_stats", params=params, headers=bearer(token()))
            assert stats.json() == {"clients": 5, "users": 5}
            backend = {"authorization": "apikey backend-key"}
            r = await http.get("/api/presence", params=params, headers=backend)
            assert len(r.json()["clients"]) == 5 and "truncated" not in r.json()


async def test_data_over_the_size_cap_names_the_cap(secured: RunningHub) -> None:
    """A client that has not connected yet (the browser client's first publish goes over
    HTTP) learns the cap from the refusal, as a connected one knows it from its connect
    reply. (Over WebSocket such a command is a frame over the cap: 1009.)"""
    big = {"channel": "chat:a", "data": "x" * 70_000}
    async with secured.http(headers=bearer(token())) as http:
        client = await http.post("/client/publish", json=big)
    async with secured.http(headers={"authorization": "apikey backend-key"}) as http:
        server = await http.post("/api/publish", json=big)
    for error in (client.json()["error"], server.json()["error"]):
        assert (error["code"], error["limit"]) == ("too_large", 65536), error
