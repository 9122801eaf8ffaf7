"""HTTP hooks against a real backend on a loopback port: it allows, denies, amends, is slow and
is down; every transport asks it, and every request it gets is signed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import logging
import re
import shlex
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from pydantic import ValidationError
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.exceptions import ConnectionClosed

from clarion import Hub, Settings
from clarion.webhooks.signing import generate_secret

from ..conftest import RunningHub, both_servers, clarion_server, timeout, until
from ..redis_fixture import free_port
from ..stomp.client import stomp
from ..support.loopback import LoopbackServer

SECRET = "a-long-enough-test-secret-0123456789"
HOOK_SECRET = generate_secret()


def token(user: str = "alice", **claims: Any) -> str:
    body = {"sub": user, "channels": ["chat:*", "room:*"], "exp": int(time.time()) + 600}
    return jwt.encode({**body, **claims}, SECRET, algorithm="HS256")


def bearer(user: str = "alice", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, **claims)}"}


class Backend:
    """The application's backend: its answers depend on who asks for what."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self.verifier = Webhook(HOOK_SECRET)
        self.release = asyncio.Event()  # what holds the answers about room:held

    async def hook(self, request: Request) -> Response:
        raw = await request.body()
        self.verifier.verify(raw, dict(request.headers))  # raises if not signed with the secret
        body: dict[str, Any] = json.loads(raw)
        self.requests.append(body)
        event, user, channel = body["event"], body.get("user"), body.get("channel")
        if request.url.path == "/broken":
            return Response("oops", status_code=500)
        if request.url.path == "/grants" and event == "connect":
            return JSONResponse({"allow": True, "subs": ["pub:news"]})
        if request.url.path == "/members" and event == "connect" and user is None:
            return JSONResponse({"allow": False, "code": "login_required", "reason": "log in"})
        if event == "connect" and user == "mallory":
            return JSONResponse({"allow": False, "code": "banned", "reason": "you are banned"})
        if event == "connect" and user == "verbose":
            return JSONResponse({"allow": False, "code": "banned", "reason": "é" * 190})
        if event == "connect" and user == "amy":
            return JSONResponse(
                {"allow": True, "info": {"name": "Amy"}, "channels": ["team:*"], "subs": ["team:7"]}
            )
        if event == "connect" and user == "deep":  # read by the hub, too deep to write back
            info: dict[str, Any] = {}
            for _ in range(300):
                info = {"a": info}
            return JSONResponse({"allow": True, "info": info})
        if channel is not None and channel.startswith("room:denied_"):  # a new code each time
            return JSONResponse({"allow": False, "code": channel.removeprefix("room:")})
        if channel == "room:secret":
            return JSONResponse({"allow": False, "code": "not_a_member", "reason": "not yours"})
        if channel == "room:slow":
            await asyncio.sleep(5)
        if channel == "room:held":
            await self.release.wait()
        if channel == "room:censored":
            return JSONResponse({"allow": True, "data": {"text": "***"}})
        if channel == "room:readonly":
            return JSONResponse({"allow": False})
        if event == "publish" and "forbidden-word" in json.dumps(body.get("data")):
            return JSONResponse({"allow": False, "code": "moderated", "reason": "not that"})
        return JSONResponse({"allow": True})

    def count(self, event: str, channel: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if r["event"] == event and (channel is None or r.get("channel") == channel)
        )


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    app = Backend()
    paths = ("/hook", "/broken", "/members", "/grants")
    routes = [Route(path, app.hook, methods=["POST"]) for path in paths]
    config = uvicorn.Config(
        Starlette(routes=routes), host="127.0.0.1", port=app.port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield app
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout(5))


async def hooked(hub_factory: Any, url: str, **hooks: Any) -> RunningHub:
    options = {
        "connect_url": url,
        "subscribe_url": url,
        "publish_url": url,
        "secret": HOOK_SECRET,
        **hooks,
    }
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="k", hooks=options)
    return hub


async def closed_with(ws: Any) -> tuple[int | None, str]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.recv()
    rcvd = closed.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


async def test_connect_denied_on_every_transport(hub_factory: Any, backend: Backend) -> None:
    hub = await hooked(hub_factory, backend.url + "/hook")
    async with hub.ws(additional_headers=bearer("mallory")) as ws:
        code, reason = await closed_with(ws)
        assert code == 4502 and reason == "banned: you are banned"
    async with hub.http(headers=bearer("mallory")) as http:
        for path in ("/sse", "/poll"):
            r = await http.get(path, params={"channel": "chat:a", "timeout": 0})
            assert r.status_code == 403, r.text
            assert r.json()["error"] == {"code": "banned", "message": "you are banned"}
    async with stomp(hub) as client:
        await client.send("CONNECT", accept_version="1.2", host="x", passcode=token("mallory"))
        error = await client.expect("ERROR")
        assert error.headers["x-code"] == "banned" and error.headers["message"] == "you are banned"
    # The connect op of an open connection asks too: the error reply carries the code.
    async with hub.ws() as ws:
        reply = await ws.call("connect", token=token("mallory"))
        assert reply["error"] == {"code": "banned", "message": "you are banned"}
    async with hub.ws(additional_headers=bearer("alice")) as ws:
        assert "ok" in await ws.call("ping")


@both_servers
async def test_a_long_refusal_is_clipped_to_a_close_frame(
    hub_factory: Any, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A close reason holds 123 bytes: the application's reason (up to 200 characters, two
    bytes each here) is cut to fit, not sent as a frame no peer may accept (which failed the
    send under uvicorn, and left the connection open)."""
    hub = await hooked(hub_factory, backend.url + "/hook")
    async with hub.ws(additional_headers=bearer("verbose")) as ws:
        code, reason = await closed_with(ws)
    assert code == 4502
    assert reason == "banned: " + "é" * 57 and len(reason.encode()) == 122
    gc.collect()  # a task's exception nobody retrieved is reported as the task goes
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_a_token_in_the_connect_op_is_asked_about_once_as_its_user(
    hub_factory: Any, backend: Backend
) -> None:
    """A WebSocket that brings no token at the upgrade is asked about when it first acts: a
    backend that turns anonymous sessions away still lets in a client that sends its token in
    the ``connect`` op, as the browser and Python clients do."""
    hub = await hooked(hub_factory, backend.url + "/members")
    async with hub.ws() as ws:
        assert "ok" in await ws.call("ping")  # a ping asks nothing
        connected = await ws.call("connect", token=token("alice"))
        assert connected["ok"]["user"] == "alice"
        assert "ok" in await ws.subscribe("room:a")
    asked = [r["user"] for r in backend.requests if r["event"] == "connect"]
    assert asked == ["alice"]
    # Anonymous, the session's first op is what the backend is asked about, and refused.
    for first in ({"op": "subscribe", "channel": "room:a"}, {"op": "history", "channel": "x"}):
        async with hub.ws() as ws:
            await ws.send({"id": 1, **first})
            code, reason = await closed_with(ws)
            assert code == 4502 and reason == "login_required: log in"
    assert [r["user"] for r in backend.requests if r["event"] == "connect"] == [
        "alice",
        None,
        None,
    ]
    # A token at the upgrade is asked about there, once.
    async with hub.ws(additional_headers=bearer("bob")) as ws:
        assert "ok" in await ws.subscribe("room:a")
        assert (await ws.call("connect", token=token("bob")))["ok"]["user"] == "bob"
    later = [r["user"] for r in backend.requests if r["event"] == "connect"][3:]
    assert later[0] == "bob" and None not in later  # a repeat may come from the cache


async def test_the_hooks_subs_reach_a_connection_that_came_without_a_token(
    hub_factory: Any, backend: Backend
) -> None:
    # Asked when the session first acts — its connect op, or another op — the hook's grant
    # of subscriptions holds as it did when asked at the upgrade.
    hub: RunningHub = await hub_factory(
        token_secret=SECRET,
        api_key="k",
        namespaces={"pub": {"anonymous": True}},
        hooks={"connect_url": backend.url + "/grants", "secret": HOOK_SECRET},
    )
    for first in ({"op": "connect"}, {"op": "history", "channel": "pub:old"}):
        async with hub.ws() as ws:
            await ws.send({"id": 1, **first})
            told = [await ws.recv(), await ws.recv()]
            pushed = [m["subscribe"]["channel"] for m in told if "subscribe" in m]
            assert pushed == ["pub:news"], told


async def test_connect_amends_info_channels_and_subs(hub_factory: Any, backend: Backend) -> None:
    hub = await hooked(hub_factory, backend.url + "/hook")
    async with hub.ws(additional_headers=bearer("amy")) as ws:
        told = await ws.recv()
        assert told["subscribe"]["channel"] == "team:7"  # the amended subs
        assert "ok" in await ws.subscribe("team:8")  # the amended channels
        assert (await ws.subscribe("chat:a"))["error"]["code"] == "forbidden"  # replaced
    session_info = [r for r in backend.requests if r["event"] == "connect"]
    assert session_info[0]["channels"] == ["chat:*", "room:*"]  # what the token said


async def test_subscribe_and_history_denied_with_the_backends_code(
    hub_factory: Any, backend: Backend
) -> None:
    hub = await hooked(hub_factory, backend.url + "/hook")
    async with hub.ws(additional_headers=bearer()) as ws:
        reply = await ws.subscribe("room:secret")
        assert reply["error"] == {"code": "not_a_member", "message": "not yours"}
        reply = await ws.call("history", channel="room:secret")
        assert reply["error"]["code"] == "not_a_member"
        assert "ok" in await ws.subscribe("room:open")
    async with hub.http(headers=bearer()) as http:
        for path in ("/sse", "/poll"):
            r = await http.get(path, params={"channel": "room:secret", "timeout": 0})
            assert r.status_code == 403 and r.json()["error"]["code"] == "not_a_member"


async def test_application_codes_share_one_metrics_label(
    hub_factory: Any, backend: Backend
) -> None:
    """A backend may deny with any code of the grammar, a new one each time: the client is
    told its code, the metrics count it under ``application``, so the series stay few."""
    hub = await hooked(hub_factory, backend.url + "/hook")
    async with hub.ws(additional_headers=bearer()) as ws:
        for n in range(40):
            reply = await ws.subscribe(f"room:denied_{n}")
            assert reply["error"]["code"] == f"denied_{n}"
        assert (await ws.subscribe("room:secret"))["error"]["code"] == "not_a_member"
        assert "error" in await ws.call("nonsense")  # one of the hub's own codes
    async with hub.http(headers={"Authorization": "apikey k"}) as http:
        metrics = (await http.get("/metrics")).text
    series = [line for line in metrics.splitlines() if line.startswith("clarion_client_errors")]
    assert 'clarion_client_errors_total{code="application"} 41.0' in series, series
    assert not any("denied_" in line or "not_a_member" in line for line in series), series
    assert any('code="unknown_op"' in line for line in series), series


async def test_answers_are_cached_per_user_and_channel(hub_factory: Any, backend: Backend) -> None:
    hub = await hooked(hub_factory, backend.url + "/hook", cache_ttl=60)
    async with hub.ws(additional_headers=bearer()) as ws:
        for _ in range(3):
            assert "ok" in await ws.subscribe("room:a")
            assert "ok" in await ws.call("unsubscribe", channel="room:a")
        assert (await ws.subscribe("room:secret"))["error"]["code"] == "not_a_member"
        assert (await ws.subscribe("room:secret"))["error"]["code"] == "not_a_member"
    async with hub.ws(additional_headers=bearer("bob")) as ws:
        assert "ok" in await ws.subscribe("room:a")
    assert backend.count("subscribe", "room:a") == 2  # once for alice, once for bob
    assert backend.count("subscribe", "room:secret") == 1
    assert backend.count("connect") == 2


async def test_publish_is_allowed_replaced_or_denied(hub_factory: Any, backend: Backend) -> None:
    hub = await hooked(hub_factory, backend.url + "/hook")
    claims = {"publish": ["room:*"]}
    async with (
        hub.ws(additional_headers=bearer("alice", **claims)) as writer,
        hub.ws(additional_headers=bearer("bob")) as reader,
    ):
        assert "ok" in await reader.subscribe("room:censored")
        assert "ok" in await writer.call("publish", channel="room:censored", data={"text": "bad"})
        assert (await reader.recv())["data"] == {"text": "***"}
        denied = await writer.call("publish", channel="room:readonly", data=1)
        assert denied["error"]["code"] == "forbidden"
    published = [r for r in backend.requests if r["event"] == "publish"]
    assert published[0]["data"] == {"text": "bad"} and published[0]["user"] == "alice"


async def test_every_publication_is_asked_about_never_an_answer_cached(
    hub_factory: Any, backend: Backend
) -> None:
    """The publish hook judges the data it is sent: an allowed message does not let the next
    through unasked, nor does a denied one refuse the next, however long ``cache_ttl`` is, on
    every transport a client publishes over. Subscribe answers are still cached."""
    hub = await hooked(hub_factory, backend.url + "/hook", cache_ttl=600)
    claims = {"publish": ["room:*"]}
    sequence = [{"text": "hello"}, {"text": "forbidden-word"}, {"text": "hello again"}]
    results = []
    async with hub.ws(additional_headers=bearer("alice", **claims)) as ws:
        for data in sequence:
            reply = await ws.call("publish", channel="room:chat", data=data)
            results.append(reply["error"]["code"] if "error" in reply else "ok")
        for _ in range(2):
            assert "ok" in await ws.subscribe("room:chat")
            assert "ok" in await ws.call("unsubscribe", channel="room:chat")
    async with hub.http(headers=bearer("alice", **claims)) as http:
        for data in sequence:
            r = await http.post("/client/publish", json={"channel": "room:chat", "data": data})
            results.append(r.json()["error"]["code"] if r.status_code != 200 else "ok")
    for data in sequence:  # a refused SEND ends its STOMP connection: one each
        async with stomp(hub) as client:
            await client.connect(passcode=token("alice", **claims))
            body = json.dumps(data, separators=(",", ":"))  # compact: a JSON publication
            headers = {"content_type": "application/json", "receipt": "r"}
            await client.send("SEND", body, destination="/topic/room:chat", **headers)
            got = await client.recv()
            results.append("ok" if got.command == "RECEIPT" else got.headers["x-code"])
    assert results == ["ok", "moderated", "ok"] * 3
    asked = [r["data"] for r in backend.requests if r["event"] == "publish"]
    assert asked == sequence * 3
    assert backend.count("subscribe", "room:chat") == 1


async def test_an_answer_too_deep_to_write_back_is_a_failed_hook(
    hub_factory: Any, backend: Backend
) -> None:
    hub = await hooked(hub_factory, backend.url + "/hook")
    async with hub.ws(additional_headers=bearer("deep")) as ws:
        code, reason = await closed_with(ws)
        assert code == 4003 and reason.startswith("hook_unavailable")
    async with hub.ws(additional_headers=bearer()) as ws:  # everyone else goes on
        assert "ok" in await ws.subscribe("room:a")


@pytest.mark.parametrize("on_failure", ["deny", "allow"])
async def test_slow_broken_and_down_backends(
    hub_factory: Any, backend: Backend, on_failure: str
) -> None:
    slow = await hooked(hub_factory, backend.url + "/hook", timeout=1, on_failure=on_failure)
    async with slow.ws(additional_headers=bearer()) as ws:
        started = time.monotonic()
        reply = await ws.subscribe("room:slow")
        assert time.monotonic() - started < timeout(4)  # the timeout, not the backend, decided
        if on_failure == "deny":
            assert reply["error"]["code"] == "hook_unavailable"
        else:
            assert "ok" in reply
    broken = await hooked(hub_factory, backend.url + "/broken", on_failure=on_failure)
    down = await hooked(hub_factory, f"http://127.0.0.1:{free_port()}/hook", on_failure=on_failure)
    for hub in (broken, down):
        async with hub.ws(additional_headers=bearer()) as ws:
            if on_failure == "deny":
                code, reason = await closed_with(ws)
                assert code == 4003 and reason.startswith("hook_unavailable")
            else:
                assert "ok" in await ws.subscribe("room:a")
        async with hub.http(headers=bearer()) as http:
            r = await http.get("/poll", params={"channel": "room:a", "timeout": 0})
            assert r.status_code == (503 if on_failure == "deny" else 200), r.text


async def test_the_api_and_server_side_subscriptions_are_not_hooked(
    hub_factory: Any, backend: Backend
) -> None:
    hub = await hooked(hub_factory, backend.url + "/hook")
    async with hub.ws(additional_headers=bearer()) as ws:
        assert "ok" in await ws.call("ping")
        async with httpx.AsyncClient(base_url=hub.http_url) as http:
            r = await http.post(
                "/api/subscribe",
                json={"user": "alice", "channel": "room:secret"},
                headers={"Authorization": "apikey k"},
            )
            assert r.status_code == 200
        assert (await ws.recv())["subscribe"]["channel"] == "room:secret"
        await hub.publish("room:readonly", "from the backend")
    assert backend.count("subscribe") == 0 and backend.count("publish") == 0


@clarion_server("clarion's send raises for a client that has gone (ASGI 2.4); uvicorn's is silent")
async def test_a_client_gone_while_the_hook_decides_is_no_error(
    hub_factory: Any, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer to a client that left meets a closed connection: nothing to log as an error
    (a browser that navigates away, a health check that timed out)."""
    hub = await hooked(hub_factory, backend.url + "/hook", cache_ttl=0)
    caplog.set_level(logging.DEBUG, logger="clarion")
    for path in ("/sse?", "/poll?timeout=5&", "/client/history?"):
        backend.release.clear()
        asked = backend.count("subscribe", "room:held")
        _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(
            f"GET {path}channel=room:held HTTP/1.1\r\nhost: x\r\n"
            f"authorization: Bearer {token()}\r\n\r\n".encode()
        )
        await until(lambda n=asked: backend.count("subscribe", "room:held") > n)
        writer.transport.abort()
        await until(lambda: not hub.server.registry.connections)  # the server saw it go
        backend.release.set()
        await until(lambda: not hub.server.registry.tasks)  # and the request has ended
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == []
    assert "went away before the answer to GET '/sse'" in caplog.text
    assert "went away before the answer to GET '/client/history'" in caplog.text


async def test_a_missing_or_malformed_hook_secret_says_how_to_make_one() -> None:
    advice = ""
    for secret in (None, "my-secret"):
        hooks = {"connect_url": "http://x/", **({"secret": secret} if secret else {})}
        # Refused as the settings are read, before any hub starts.
        with pytest.raises(ValidationError, match="secret") as refused:
            Settings(token_secret=SECRET, api_key="k", hooks=hooks)
        found = re.search(r"make one with: (python3 -c '[^']*')", str(refused.value))
        assert found, refused.value
        advice = found.group(1)
    # The command the message gives makes a secret the hub takes.
    made = subprocess.run(shlex.split(advice), capture_output=True, text=True, check=True)
    hooks = {"connect_url": "http://x/", "secret": made.stdout.strip()}
    hub = Hub(Settings(token_secret=SECRET, api_key="k", hooks=hooks))
    await hub.start()
    await hub.close()


class RawBackend(LoopbackServer):
    """A hook backend written byte by byte, as a hostile one would be: every request gets
    ``answer``; the head of each request is kept."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer
        self.heads: list[dict[str, str]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                fields = dict(
                    (name.strip().lower(), value.strip())
                    for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
                    if name
                )
                self.heads.append(fields)
                await reader.readexactly(int(fields.get("content-length", "0")))
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def compressed_answer(body: bytes, encoding: str = "gzip") -> bytes:
    packed = gzip.compress(body, 9)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-encoding: %s\r\ncontent-length: %d\r\n\r\n"
        % (encoding.encode(), len(packed))
        + packed
    )


@pytest.mark.parametrize("on_failure", ["deny", "allow"])
async def test_a_compressed_answer_is_a_failed_hook_and_the_hub_asks_for_none(
    hub_factory: Any, on_failure: str
) -> None:
    """The hub asks for an answer as it is (``identity``); a compressed one is a failure like
    any answer it cannot use, never inflated and read."""
    denial = b'{"allow": false, "code": "inflated"}'
    async with RawBackend(compressed_answer(denial)) as backend:
        hub = await hooked(hub_factory, backend.url, on_failure=on_failure)
        async with hub.http(headers=bearer()) as http:
            r = await http.get("/poll", params={"channel": "room:a", "timeout": 0})
        if on_failure == "deny":
            assert r.status_code == 503 and r.json()["error"]["code"] == "hook_unavailable"
        else:
            assert r.status_code == 200, r.text
        assert backend.heads and all(h["accept-encoding"] == "identity" for h in backend.heads)


async def test_a_compression_bomb_from_the_backend_is_never_inflated(hub_factory: Any) -> None:
    """64 MiB of zeros in 64 KB of gzip, answered to anonymous polls: what the hub holds of the
    answers stays within the answer bound, not the inflated size."""
    bomb = compressed_answer(b"\0" * (64 << 20))
    async with RawBackend(bomb) as backend:
        hooks = {"subscribe_url": backend.url, "secret": HOOK_SECRET}
        hub = await hub_factory(
            token_secret=SECRET,
            api_key="k",
            namespaces={"default": {"anonymous": True}},
            hooks=hooks,
        )
        async with hub.http() as http:
            tracemalloc.start()
            try:
                for n in range(4):
                    r = await http.get("/poll", params={"channel": f"c{n}", "timeout": 0})
                    assert r.status_code == 503 and r.json()["error"]["code"] == "hook_unavailable"
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert len(backend.heads) == 4
    assert peak < 16 << 20, f"{peak >> 20} MiB held at once"


async def test_hooks_go_straight_to_the_backend_whatever_the_proxy_environment(
    hub_factory: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook URLs are the operator's, reached directly: an HTTP proxy named in the hub's
    environment is not asked to carry the hooks' requests (nor to see their signatures)."""
    proxied: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxied.append(await reader.read(4096))
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    try:
        address = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, address)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        hub = await hooked(hub_factory, backend.url + "/hook")
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name)  # the test's own clients go straight to the hub
        async with hub.ws(additional_headers=bearer()) as ws:
            assert "ok" in await ws.subscribe("room:a")
    finally:
        server.close()
    assert proxied == []
    assert backend.count("subscribe", "room:a") == 1
