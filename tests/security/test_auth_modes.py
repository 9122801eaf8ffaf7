"""Development mode is one explicit state (no api_key, no token key); every partial auth
configuration is secure as it stands and says at start what it leaves out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from clarion import Settings
from clarion.core.auth import auth_notes

from ..conftest import RunningHub, clarion_server
from ..stomp.client import stomp

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "backend-key"
PUBLIC = {"public": {"anonymous": True}}
# What a client might present to a hub that cannot verify tokens: none of it may be believed.
JUNK_TOKENS = [
    "junk",
    jwt.encode({"sub": "bob", "channels": ["*"], "exp": 2**31}, SECRET, algorithm="HS256"),
    jwt.encode({"sub": "bob", "channels": ["*"], "exp": 2**31}, None, algorithm="none"),
]


async def first_reply(hub: RunningHub, op: str, channel: str, **kw: Any) -> dict[str, Any]:
    """Connect (with a token if given) and send one op; return what the hub answers first."""
    token = kw.pop("token", None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with hub.ws(additional_headers=headers) as ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send({"id": 1, "op": op, "channel": channel, **kw})
        return await ws.recv()


async def api_status(hub: RunningHub, key: str | None) -> int:
    headers = {"Authorization": f"apikey {key}"} if key else {}
    async with hub.http() as http:
        r = await http.post(
            "/api/publish", json={"channel": "private:bob", "data": 1}, headers=headers
        )
    return r.status_code


async def test_development_mode_trusts_everyone(hub_factory: Callable[..., Any]) -> None:
    hub: RunningHub = await hub_factory(namespaces=PUBLIC)
    assert hub.hub.settings.development_mode
    (note,) = auth_notes(hub.hub.settings)  # said, and nothing else
    assert note.startswith("local development mode:"), note
    assert "ok" in await first_reply(hub, "subscribe", "private:bob")
    assert "ok" in await first_reply(hub, "publish", "private:bob", data=1)
    assert "ok" in await first_reply(hub, "subscribe", "private:bob", token="junk")
    assert await api_status(hub, None) == 200


async def test_api_key_alone_trusts_no_client(hub_factory: Callable[..., Any]) -> None:
    hub: RunningHub = await hub_factory(api_key=KEY, namespaces=PUBLIC)
    assert not hub.hub.settings.development_mode
    # No token: anonymous, so only namespaces with anonymous = true.
    reply = await first_reply(hub, "subscribe", "private:bob")
    assert reply["error"]["code"] == "unauthorized"
    assert "ok" in await first_reply(hub, "subscribe", "public:news")
    refused = await first_reply(hub, "publish", "public:news", data=1)
    assert refused["error"]["code"] == "forbidden"
    # Any token is refused, whatever it claims: nothing could verify it.
    for token in JUNK_TOKENS:
        push = await first_reply(hub, "subscribe", "private:bob", token=token)
        assert push["disconnect"]["code"] == 4500
        assert "token_secret" in push["disconnect"]["reason"]
        async with hub.ws() as ws:
            reply = await ws.call("connect", token=token)
            assert reply["error"]["code"] == "unauthorized"
            assert (await ws.subscribe("private:bob"))["error"]["code"] == "unauthorized"
    async with hub.http() as http:
        for path in ("/sse", "/poll"):
            r = await http.get(path, params={"channel": "private:bob", "timeout": "0"})
            assert r.status_code == 401
            r = await http.get(
                path, params={"channel": "public:news", "timeout": "0", "token": JUNK_TOKENS[1]}
            )
            assert r.status_code == 401
    async with stomp(hub) as client:
        await client.send("CONNECT", accept_version="1.2", host="h", passcode=JUNK_TOKENS[1])
        error = await client.expect("ERROR")
        assert "token_secret" in error.headers["message"]
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="1", destination="/topic/private\\cbob")
        assert (await client.expect("ERROR")).headers["x-close-code"] == "4500"
    # The backend still works, with its key only.
    assert await api_status(hub, None) == 401
    assert await api_status(hub, "wrong") == 401
    assert await api_status(hub, KEY) == 200


async def test_token_key_alone_serves_no_server_api(hub_factory: Callable[..., Any]) -> None:
    hub: RunningHub = await hub_factory(token_secret=SECRET, namespaces=PUBLIC)
    assert not hub.hub.settings.development_mode
    for key in (None, "anything"):
        assert await api_status(hub, key) == 403
    async with hub.http() as http:
        r = await http.get("/api/channels")
        assert r.status_code == 403 and "api_key" in r.json()["error"]["message"]
        assert (await http.get("/metrics")).status_code == 403
        assert (await http.get("/api/webhooks")).status_code == 403
        assert (await http.get("/healthz")).status_code == 200
    assert (await first_reply(hub, "subscribe", "private:bob"))["error"]["code"] == "unauthorized"
    token = jwt.encode(
        {"sub": "bob", "channels": ["private:bob"], "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
    )
    assert "ok" in await first_reply(hub, "subscribe", "private:bob", token=token)
    # The application publishes from Python instead.
    assert (await hub.hub.publish("private:bob", 1)).offset == 1


async def test_both_configured(hub_factory: Callable[..., Any]) -> None:
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key=KEY)
    assert auth_notes(hub.hub.settings) == []
    assert (await first_reply(hub, "subscribe", "private:bob"))["error"]["code"] == "unauthorized"
    assert (await first_reply(hub, "subscribe", "x", token="junk"))["disconnect"]["code"] == 4500
    assert await api_status(hub, None) == 401
    assert await api_status(hub, KEY) == 200


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({}, "development mode"),
        ({"CLARION_API_KEY": KEY}, "no token_secret or token_public_key_file"),
        ({"CLARION_TOKEN_SECRET": SECRET}, "no api_key: the server API"),
    ],
    ids=["none", "api-key-only", "token-secret-only"],
)
@clarion_server("the log lines of a `clarion serve` process at start")
async def test_the_mode_is_announced_at_start(
    hub_process: Callable[..., Any], env: dict[str, str], said: str
) -> None:
    running = await hub_process(env=env)
    assert any(said in line for line in running.log), running.log


@pytest.mark.parametrize(
    "given", [{"api_key": ""}, {"api_key": ["k", ""]}, {"api_key": []}, {"token_secret": ""}]
)
def test_an_empty_secret_is_refused_not_read_as_unset(given: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        Settings(**given)


def test_notes_name_the_missing_key() -> None:
    assert auth_notes(Settings(api_key=KEY, token_secret=SECRET)) == []
    (only_key,) = auth_notes(Settings(api_key=KEY))
    assert "token_secret" in only_key and "anonymous" in only_key
    (only_secret,) = auth_notes(Settings(token_secret=SECRET))
    assert "api_key" in only_secret


def test_notes_say_the_admin_page_needs_an_allowed_origin() -> None:
    full = {"api_key": KEY, "token_secret": SECRET, "admin": True}
    (note,) = auth_notes(Settings(**full))
    assert "public_url" in note and "admin" in note
    assert auth_notes(Settings(**full, public_url="http://127.0.0.1:8000")) == []
    assert auth_notes(Settings(**full, allowed_origins=["https://ops.example.com"])) == []
    # Development mode allows loopback pages: its own line is the only one.
    (note,) = auth_notes(Settings(admin=True))
    assert note.startswith("local development mode:"), note


async def test_an_embedded_hub_says_it_too(caplog: pytest.LogCaptureFixture) -> None:
    from clarion import Hub

    hub = Hub(Settings(token_secret=SECRET))
    with caplog.at_level("WARNING", logger="clarion.hub"):
        await hub.start()
        await hub.close()
    assert any("no api_key" in r.getMessage() for r in caplog.records), caplog.records


def test_notes_say_no_browser_page_may_connect_beyond_loopback() -> None:
    full = {"api_key": KEY, "token_secret": SECRET}
    (note,) = auth_notes(Settings(**full, host="0.0.0.0"))
    assert "allowed_origins" in note and "public_url" in note and "403" in note, note
    assert auth_notes(Settings(**full, host="0.0.0.0", allowed_origins=["https://a.example"])) == []
    assert auth_notes(Settings(**full, host="0.0.0.0", public_url="https://rt.example")) == []
    assert auth_notes(Settings(**full, host="127.0.0.1")) == []
    # The admin page's note names this hub's own address, when it is known before it listens.
    (note,) = auth_notes(Settings(**full, admin=True, port=18180))
    assert note.endswith("e.g. http://127.0.0.1:18180"), note
    (note,) = auth_notes(Settings(**full, admin=True, port=0))
    assert note.endswith("the address the page is opened at"), note


async def test_an_embedded_hub_beyond_loopback_warns_of_refused_pages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from clarion import Hub

    hub = Hub(Settings(api_key=KEY, token_secret=SECRET, host="::"))
    with caplog.at_level("WARNING", logger="clarion.hub"):
        await hub.start()
        await hub.close()
    assert any("no browser origin is allowed" in r.getMessage() for r in caplog.records)
