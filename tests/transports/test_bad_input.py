"""Bad requests to /sse and /poll: a clear JSON error before any stream starts, never a crash."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from clarion import Settings, mint_token
from clarion.protocol.cursor import Cursor, encode_single
from clarion.protocol.publication import StreamPosition

from ..conftest import RunningHub, clarion_server, timeout
from .streams import Baseline, error_code, sse

ENDPOINTS = ["/sse", "/poll"]
SECRET = "test-secret-0123456789abcdef0123456789"


async def get(
    hub: RunningHub, path: str, params: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    if path == "/poll":
        params = {"timeout": 0, **params}
    # A stream answers 200 and stays open: read only the status then, not the body.
    async with (
        hub.http() as client,
        client.stream("GET", path, params=params, headers=headers) as response,
    ):
        if response.status_code != 200 or path != "/sse":
            await response.aread()
        return response


def tampered(cursor: str) -> str:
    flipped = "A" if cursor[5] != "A" else "B"
    return cursor[:5] + flipped + cursor[6:]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "make_cursor",
    [
        lambda good: "not a cursor!",
        lambda good: "AAAA",
        tampered,
        lambda good: good[:-3],
        lambda good: encode_single("chat:other", "e1", 1),  # made for another channel
        lambda good: "A" * 10000,
    ],
    ids=["garbage", "short", "tampered", "truncated", "other-channel", "huge"],
)
async def test_bad_cursors_are_refused_before_the_stream(
    hub: RunningHub, path: str, make_cursor: Any
) -> None:
    good = (await hub.publish("chat:lobby", 1))["cursor"]
    baseline = Baseline(hub)
    response = await get(hub, path, {"channel": "chat:lobby", "cursor": make_cursor(good)})
    assert response.status_code == 400 and error_code(response) == "bad_cursor"
    assert response.headers["content-type"] == "application/json"
    await baseline.restored()


async def test_bad_last_event_id_is_refused(hub: RunningHub) -> None:
    """In the header or in the query (either name), and whatever cursor= says."""
    good = (await hub.publish("chat:lobby", 1))["cursor"]
    for bad in ("garbage", tampered(good)):
        response = await get(hub, "/sse", {"channel": "chat:lobby"}, {"Last-Event-ID": bad})
        assert response.status_code == 400 and error_code(response) == "bad_cursor"
        for name in ("lastEventID", "lastEventId"):
            query = {"channel": "chat:lobby", name: bad, "cursor": good}
            response = await get(hub, "/sse", query)
            assert response.status_code == 400 and error_code(response) == "bad_cursor"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_foreign_epoch_is_not_malformed(hub: RunningHub, path: str) -> None:
    foreign = Cursor.single("chat:lobby", StreamPosition("feedfacecafe", 3)).encode()
    if path == "/poll":
        response = await get(hub, path, {"channel": "chat:lobby", "cursor": foreign})
        assert response.status_code == 200 and response.json()["reset"]["reason"] == "epoch"
        return
    async with sse(hub, "chat:lobby", cursor=foreign) as stream:
        reset = await stream.next()
        assert reset.event == "reset" and reset.json()["reason"] == "epoch"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "bad_request"),
        ({"channel": ""}, "bad_channel"),
        ({"channel": "no spaces"}, "bad_channel"),
        ({"channel": "x" * 256}, "bad_channel"),
        ({"channel": ["a", "b", "c", "d"]}, "too_many_channels"),
        ({"channel": "a", "latest": ["1", "0"]}, "bad_request"),
        ({"channel": "a", "latest": ["a", "b"]}, "bad_request"),  # only channels of the request
        ({"channel": "a", "cursor": ["x", "y"]}, "bad_cursor"),  # several merge: each is read
        # The WebSocket op's name for a cursor: taken here, it would start from now unsaid.
        ({"channel": "a", "since": "x"}, "bad_request"),
        ({"channel": "a", "cursor": "x", "since": "x"}, "bad_request"),
        # A parameter given twice, but those a stream repeats: which one counts is no guess.
        ({"channel": "a", "token": ["t1", "t2"]}, "bad_request"),
        ({"channel": "a", "timeout": ["0", "1"]}, "bad_request"),
        ({"channel": "a", "lastEventID": ["x", "y"]}, "bad_request"),
        ({"channel": "a", "lastEventID": "x", "lastEventId": "y"}, "bad_request"),
        ({"channel": "a", "anything": ["1", "2"]}, "bad_request"),
    ],
)
async def test_bad_channels(hub_factory: Any, path: str, params: dict[str, Any], code: str) -> None:
    hub = await hub_factory(limits={"max_subscriptions_per_connection": 3})
    response = await get(hub, path, params)
    assert response.status_code == 400 and error_code(response) == code


async def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """``request`` on a connection of its own, the answer read to its end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), timeout(10))
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ", 2)[1]), headers, body


@clarion_server("errors clarion's own server answers before the app")
@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request"),
        (
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n{",
            413,
            "too_large",
        ),
        (
            b"POST /api/publish_batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % 140_000
            + b"x" * 140_000
            + b"\r\n0\r\n\r\n",
            413,
            "too_large",
        ),
        # No code of its own (431): plain text, and the clients go by the status.
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
            431,
            None,
        ),
    ],
    ids=["garbage", "bad-header", "declared-body", "chunked-body", "big-head"],
)
async def test_the_servers_own_refusals_are_the_apis_errors(
    hub: RunningHub, request_bytes: bytes, status: int, code: str | None
) -> None:
    """A request clarion's server refuses before the app sees it still gets the API's JSON
    error, with its code's status: a client of the hub reads it as any other."""
    got, headers, body = await raw_exchange(hub.port, request_bytes)
    assert got == status
    if code is None:
        assert headers["content-type"].startswith("text/plain")
    else:
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert orjson.loads(body)["error"]["code"] == code
    async with hub.http() as http:  # and the hub serves the others
        assert (await http.get("/healthz")).status_code == 200


async def test_poll_refuses_an_event_streams_last_event_id(hub: RunningHub) -> None:
    """``lastEventID`` is the event stream's: a poll would start from now without a word."""
    cursor = (await hub.publish("chat:lobby", 1))["cursor"]
    for name in ("lastEventID", "lastEventId"):
        response = await get(hub, "/poll", {"channel": "chat:lobby", name: cursor})
        assert response.status_code == 400 and error_code(response) == "bad_request"
        assert "cursor=" in response.json()["error"]["message"]
    response = await get(hub, "/poll", {"channel": "chat:lobby"}, {"Last-Event-ID": cursor})
    assert response.status_code == 400 and error_code(response) == "bad_request"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_huge_query_is_refused_as_too_many_channels(hub: RunningHub, path: str) -> None:
    async with hub.http() as client:
        response = await client.get(path + "?" + "&".join(f"channel=c{n}" for n in range(400)))
    assert response.status_code == 400 and error_code(response) == "too_many_channels"


@pytest.mark.parametrize("value", ["abc", "-1", "61", "1e3", "nan", "inf", "", "0x10", "1,5"])
async def test_poll_timeout_out_of_range_or_not_a_number(hub: RunningHub, value: str) -> None:
    response = await get(hub, "/poll", {"channel": "chat:lobby", "timeout": value})
    assert response.status_code == 400 and error_code(response) == "bad_timeout"


async def test_poll_timeout_limit_is_configurable(hub_factory: Any) -> None:
    hub = await hub_factory(Settings(poll={"timeout_max": 5}))
    response = await get(hub, "/poll", {"channel": "chat:lobby", "timeout": "6"})
    assert response.status_code == 400 and "from 0 to 5" in response.json()["error"]["message"]
    assert (await get(hub, "/poll", {"channel": "chat:lobby", "timeout": "0.5"})).status_code == 200


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_unknown_and_forbidden_channels_with_tokens(hub_factory: Any, path: str) -> None:
    hub = await hub_factory(
        token_secret=SECRET, namespaces={"public": {"anonymous": True}}, api_key="k"
    )
    token = mint_token(SECRET, "alice", ["chat:*"])
    anonymous = await get(hub, path, {"channel": "chat:lobby"})
    assert anonymous.status_code == 401 and error_code(anonymous) == "unauthorized"
    bad_token = await get(hub, path, {"channel": "chat:lobby", "token": "not.a.jwt"})
    assert bad_token.status_code == 401
    forbidden = await get(hub, path, {"channel": ["chat:lobby", "admin:x"], "token": token})
    assert forbidden.status_code == 403 and error_code(forbidden) == "forbidden"
    # Which of the request's channels was refused, for a client reading several on one stream.
    assert forbidden.json()["error"]["channel"] == "admin:x"
    misnamed = await get(hub, path, {"channel": ["chat:lobby", "chat:a b"], "token": token})
    assert misnamed.json()["error"] == {
        "code": "bad_channel",
        "message": misnamed.json()["error"]["message"],
        "channel": "chat:a b",
    }
    by_query = await get(hub, path, {"channel": "chat:lobby", "token": token})
    by_header = await get(
        hub, path, {"channel": "chat:lobby"}, {"Authorization": f"Bearer {token}"}
    )
    by_cookie = await get(
        hub, path, {"channel": "chat:lobby"}, {"Cookie": f"clarion_token={token}"}
    )
    public = await get(hub, path, {"channel": "public:news"})
    assert [r.status_code for r in (by_query, by_header, by_cookie, public)] == [200] * 4


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_origin_and_cors(hub_factory: Any, path: str) -> None:
    hub = await hub_factory(
        allowed_origins=["https://app.example.com"],
        token_secret=SECRET,
        api_key="k",
        namespaces={"default": {"anonymous": True}},
    )
    async with hub.http() as client:
        preflight = await client.options(
            path,
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, last-event-id",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "GET" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"]
        assert "authorization" in allowed and "last-event-id" in allowed
        refused = await client.options(path, headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403 and error_code(refused) == "origin_forbidden"
    evil = await get(hub, path, {"channel": "news"}, {"Origin": "https://evil.example"})
    assert evil.status_code == 403
    good = await get(hub, path, {"channel": "news"}, {"Origin": "https://app.example.com"})
    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == "https://app.example.com"
    assert good.headers["access-control-allow-credentials"] == "true"
    error = await get(hub, path, {"channel": "bad name"}, {"Origin": "https://app.example.com"})
    assert error.status_code == 400  # errors carry CORS headers too, so pages can read them
    assert error.headers["access-control-allow-origin"] == "https://app.example.com"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_other_methods_are_not_allowed(hub: RunningHub, path: str) -> None:
    async with hub.http() as client:
        response = await client.post(path, params={"channel": "chat:lobby"})
    assert response.status_code == 405 and error_code(response) == "method_not_allowed"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_connection_limits_answer_429_and_503(hub_factory: Any, path: str) -> None:
    hub = await hub_factory(
        token_secret=SECRET,
        api_key="k",
        limits={"max_connections": 2, "max_connections_per_user": 1},
    )
    token = mint_token(SECRET, "alice", ["chat:*"])
    async with sse(hub, "chat:lobby", token=token):
        per_user = await get(hub, path, {"channel": "chat:lobby", "token": token})
        assert per_user.status_code == 429 and error_code(per_user) == "too_many_connections"
        other = mint_token(SECRET, "bob", ["chat:*"])
        async with sse(hub, "chat:lobby", token=other):
            full = await get(
                hub,
                path,
                {"channel": "chat:lobby", "token": mint_token(SECRET, "carol", ["chat:*"])},
            )
            assert full.status_code == 503 and error_code(full) == "node_full"


# Numbers a client may write that are not the ASCII decimal the API reads: other scripts' digits
# (int() refuses the superscript and reads the others as 3), signs, blanks, underscores, hex,
# fractions, more digits than int() converts, nothing.
NOT_DECIMAL = [
    "\u00b2",
    "1\u00b9",
    "\u0663",
    "\uff13",
    "+1",
    "-1",
    " 1",
    "1 ",
    "1_0",
    "0x10",
    "1e3",
    "9" * 5000,
    "",
]
NUMBER_PARAMETERS = [
    ("/client/history", {"channel": "chat:lobby"}, "limit", "1"),
    ("/api/history", {"channel": "chat:lobby"}, "limit", "1"),
    ("/api/channels", {}, "limit", "1"),
    ("/api/webhooks/{id}/dead-letters", {}, "limit", "1"),
    ("/api/webhooks/{id}/dead-letters", {}, "after", "1"),
    ("/poll", {"channel": "chat:lobby"}, "timeout", "0"),
]


@pytest.mark.parametrize(
    ("path", "params", "name", "good"),
    NUMBER_PARAMETERS,
    ids=[f"{path}?{name}" for path, _, name, _ in NUMBER_PARAMETERS],
)
async def test_number_parameters_take_ascii_digits_only(
    hub_factory: Any, path: str, params: dict[str, str], name: str, good: str
) -> None:
    """Anything but ASCII digits is 400 with the parameter's error, never a 500 and never read
    as a number; the hub goes on serving."""
    hub = await hub_factory(webhook_allow_hosts=["127.0.0.1"])
    async with hub.http() as http:
        if "{id}" in path:
            r = await http.post(
                "/api/webhooks", json={"url": "http://127.0.0.1:9/hook", "channels": ["x"]}
            )
            path = path.format(id=r.json()["id"])
        wrong = []
        for value in NOT_DECIMAL:
            r = await http.get(path, params={**params, name: value})
            if r.status_code != 400 or name not in r.json()["error"]["message"]:
                wrong.append((value[:12], r.status_code, r.text[:80]))
        assert wrong == []
        assert (await http.get(path, params={**params, name: good})).status_code == 200


@pytest.mark.parametrize("path", ["/ws", "/stomp"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_plain_request_to_a_websocket_endpoint_is_told_to_upgrade(
    hub: RunningHub, path: str, method: str
) -> None:
    """What a browser opening the address, or a proxy that drops the upgrade's headers, gets:
    426 saying so, not a bare 404."""
    async with hub.http() as client:
        # An upgrade's Connection header without its Upgrade header: what such a proxy sends.
        response = await client.request(method, path, headers={"Connection": "Upgrade"})
    assert response.status_code == 426, response.text
    assert error_code(response) == "upgrade_required"
    assert response.headers["upgrade"] == "websocket"
    assert "proxy" in response.json()["error"]["message"]
