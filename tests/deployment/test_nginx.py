"""Every transport through nginx configured exactly as docs/deployment.md says, over TLS.

Clients connect from 127.0.0.2 and 127.0.0.3 (the whole of 127/8 is loopback on Linux) and nginx
reaches the hub from 127.0.0.1, the one trusted proxy: the hub must see the clients' own
addresses, whatever they claim in their headers.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from httpx_sse import EventSource
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clarion import Settings, mint_token
from clarion.cli import build_parser

from ..conftest import RunningHub, timeout
from ..stomp.client import StompClient
from .nginx import NGINX, Nginx, client_tls, fenced

needs_nginx = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (apt-get install nginx-light)"
)

ALICE, BOB = "127.0.0.2", "127.0.0.3"  # client source addresses; nginx is 127.0.0.1


def documented_settings(tmp_path: Path, **overrides: Any) -> Settings:
    (block,) = [b for b in fenced("toml") if "trusted_proxies" in b and "public_url" in b]
    values = tomllib.loads(block)
    values.pop("host"), values.pop("port")  # the test hub takes a free loopback port
    values["data_dir"] = str(tmp_path / "data")
    return Settings(**{**values, **overrides})


class Proxied:
    """A hub behind nginx, and clients that reach it from a chosen loopback address."""

    def __init__(self, hub: RunningHub, nginx: Nginx) -> None:
        self.hub = hub
        self.nginx = nginx
        self.tls = client_tls(nginx.cert)
        self.base = f"https://127.0.0.1:{nginx.port}"
        self.settings = hub.hub.settings
        self.secret = self.settings.token_secret or ""
        self.api_key = self.settings.api_keys[0]

    def token(self, user: str) -> str:
        return mint_token(self.secret, user, ["chat:*"], publish=["chat:*"])

    def http(self, source: str = ALICE) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(verify=self.tls, local_address=source)
        return httpx.AsyncClient(base_url=self.base, transport=transport, timeout=timeout(15))

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        async with self.http() as client:
            headers = {"Authorization": f"apikey {self.api_key}"}
            response = await client.request(method, path, headers=headers, **kw)
            assert response.status_code == 200, response.text
            return response.json()

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.api(
            "POST", "/api/publish", json={"channel": channel, "data": data}
        )
        return result

    def websocket(
        self, path: str, source: str = ALICE, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        protocol = "clarion.v1" if path.startswith("/ws") else "v12.stomp"
        kw.setdefault("origin", "https://app.example.com")
        return websockets.connect(
            f"wss://127.0.0.1:{self.nginx.port}{path}",
            ssl=self.tls,
            local_addr=(source, 0),
            subprotocols=[protocol],  # type: ignore[list-item]
            additional_headers=headers,
            open_timeout=timeout(10),
            **kw,
        )

    def client_ips(self, kind: str) -> list[str | None]:
        return sorted(
            s.client_ip for s in self.hub.hub.sessions.values() if s.transport.kind == kind
        )


@pytest.fixture
async def proxied(hub_factory: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Proxied]:
    hub = await hub_factory(documented_settings(tmp_path))
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    nginx = Nginx(prefix, hub.port)
    await nginx.start()
    try:
        yield Proxied(hub, nginx)
    finally:
        await nginx.stop()


async def _json(conn: Any, wait: float = 10) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await asyncio.wait_for(conn.recv(), timeout(wait)))
    return result


async def _reply(conn: Any, rid: int, **command: Any) -> dict[str, Any]:
    await conn.send(json.dumps({"id": rid, **command}))
    while True:
        msg = await _json(conn)
        if msg.get("id") == rid:
            return msg


async def _publication(conn: Any) -> dict[str, Any]:
    while True:
        msg = await _json(conn)
        if "channel" in msg and "offset" in msg:
            return msg


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + timeout(10)
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@asynccontextmanager
async def _sse(proxied: Proxied, params: dict[str, str], headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    async with (
        proxied.http() as client,
        client.stream("GET", "/sse", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventSource(response).aiter_sse()


async def _sse_message(events: Any) -> Any:
    while True:
        event = await asyncio.wait_for(anext(events), timeout(10))
        if event.event == "message" and event.data:
            return event


@needs_nginx
async def test_every_transport_through_nginx(proxied: Proxied) -> None:
    token = proxied.token("alice")
    # The API and the health check.
    async with proxied.http() as client:
        assert (await client.get("/healthz")).status_code == 200
        unauthorised = await client.post("/api/publish", json={"channel": "chat:a", "data": 1})
        assert unauthorised.status_code == 401
    # WebSocket (clarion protocol), with a spoofed X-Forwarded-For that must change nothing.
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}
    async with proxied.websocket(f"/ws?token={token}", headers=spoof) as ws:
        assert (await _reply(ws, 1, op="subscribe", channel="chat:a"))["ok"] is not None
        assert proxied.client_ips("ws") == [ALICE]
        # STOMP, from the other client address.
        async with proxied.websocket("/stomp", source=BOB) as raw:
            stomp = StompClient(raw)
            await stomp.connect(passcode=token)
            await stomp.send("SUBSCRIBE", id="0", destination="/topic/chat\\ca", receipt="r")
            await stomp.expect("RECEIPT")
            assert proxied.client_ips("stomp") == [BOB]
            # Server-Sent Events and a waiting long poll.
            async with _sse(proxied, {"channel": "chat:a", "token": token}) as events:
                await _until(lambda: len(proxied.client_ips("sse")) == 1, "no SSE session")
                assert proxied.client_ips("sse") == [ALICE]
                async with proxied.http(BOB) as poller:
                    poll = asyncio.create_task(
                        poller.get(
                            "/poll",
                            params={"channel": "chat:a", "token": token, "timeout": "30"},
                        )
                    )
                    await _until(lambda: len(proxied.client_ips("poll")) == 1, "no poll")
                    assert proxied.client_ips("poll") == [BOB]
                    sent = time.monotonic()
                    published = await proxied.publish("chat:a", {"n": 1})
                    # Each arrives at once: nothing between hub and client buffers it.
                    assert (await _publication(ws))["data"] == {"n": 1}
                    assert (await stomp.expect("MESSAGE")).json() == {"n": 1}
                    assert json.loads((await _sse_message(events)).data)["data"] == {"n": 1}
                    polled = (await asyncio.wait_for(poll, timeout(10))).json()
                    assert [p["data"] for p in polled["publications"]] == [{"n": 1}]
                    assert time.monotonic() - sent < timeout(5)
                    # Presence: the server API sees each client's own address; clients never.
                    presence = await proxied.api(
                        "GET", "/api/presence", params={"channel": "chat:a"}
                    )
                    addresses = {c["transport"]: c.get("address") for c in presence["clients"]}
                    assert addresses == {"ws": ALICE, "stomp": BOB, "sse": ALICE}
                    seen = await _reply(ws, 2, op="presence", channel="chat:a")
                    assert len(seen["ok"]["clients"]) == 3, seen
                    assert all("address" not in c for c in seen["ok"]["clients"])
    history = await proxied.api("GET", "/api/history", params={"channel": "chat:a"})
    assert history["publications"][-1]["offset"] == published["offset"]


@needs_nginx
async def test_origins_through_nginx(proxied: Proxied) -> None:
    token = proxied.token("alice")
    for origin in ("https://app.example.com", "https://rt.example.com"):
        async with proxied.websocket(f"/ws?token={token}", origin=origin) as ws:
            assert (await _reply(ws, 1, op="ping"))["ok"] == {}
    for origin in ("https://evil.example", "http://app.example.com", "https://127.0.0.1"):
        with pytest.raises(InvalidStatus) as refused:
            async with proxied.websocket(f"/ws?token={token}", origin=origin):
                pass
        assert refused.value.response.status_code == 403
    async with proxied.http() as client:
        preflight = await client.options(
            "/poll",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        rebinding = await client.get(
            "/poll",
            params={"channel": "chat:a", "token": token, "timeout": "0"},
            headers={"Origin": "https://evil.example", "Host": "evil.example"},
        )
        assert rebinding.status_code == 403
        assert "access-control-allow-origin" not in rebinding.headers


@needs_nginx
async def test_per_ip_caps_see_each_client_behind_nginx(
    hub_factory: Callable[..., Any], tmp_path: Path
) -> None:
    settings = documented_settings(tmp_path, limits={"max_connections_per_ip": 2})
    hub = await hub_factory(settings)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    nginx = Nginx(prefix, hub.port)
    await nginx.start()
    try:
        proxied = Proxied(hub, nginx)
        token = proxied.token("alice")
        url = f"/ws?token={token}"
        async with proxied.websocket(url) as first, proxied.websocket(url) as second:
            for conn in (first, second):
                assert (await _reply(conn, 1, op="ping"))["ok"] == {}
            # A third from the same address is over the cap, whatever it claims to be.
            for headers in (None, {"X-Forwarded-For": "203.0.113.10"}):
                async with proxied.websocket(url, headers=headers) as third:
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            await _json(third)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
            # Another client behind the same proxy is not.
            async with proxied.websocket(url, source=BOB) as other:
                assert (await _reply(other, 1, op="ping"))["ok"] == {}
                assert proxied.client_ips("ws") == [ALICE, ALICE, BOB]
    finally:
        await nginx.stop()


@needs_nginx
async def test_resume_on_every_transport_after_nginx_reloads(proxied: Proxied) -> None:
    token = proxied.token("alice")
    first = await proxied.publish("chat:r", 0)
    cursor = first["cursor"]
    async with proxied.websocket(f"/ws?token={token}") as open_before:
        await _reply(open_before, 1, op="subscribe", channel="chat:r")
        await proxied.nginx.reload()
        # Connections held by the old worker stay up after the reload.
        await proxied.publish("chat:r", 1)
        assert (await _publication(open_before))["data"] == 1
    missed = [1, 2, 3]
    for n in missed[1:]:
        await proxied.publish("chat:r", n)
    await proxied.nginx.reload()
    # Every transport resumes through the new workers from the position before the gap.
    async with proxied.websocket(f"/ws?token={token}") as ws:
        reply = await _reply(ws, 1, op="subscribe", channel="chat:r", since=cursor)
        assert "ok" in reply, reply
        assert [(await _publication(ws))["data"] for _ in missed] == missed
    async with proxied.websocket("/stomp") as raw:
        stomp = StompClient(raw)
        await stomp.connect(passcode=token)
        await stomp.send("SUBSCRIBE", id="0", destination="/topic/chat\\cr", x_since=cursor)
        assert [(await stomp.expect("MESSAGE")).json() for _ in missed] == missed
    resume = {"Last-Event-ID": cursor}
    async with _sse(proxied, {"channel": "chat:r", "token": token}, resume) as events:
        assert [json.loads((await _sse_message(events)).data)["data"] for _ in missed] == missed
    async with proxied.http() as client:
        polled = await client.get(
            "/poll", params={"channel": "chat:r", "token": token, "cursor": cursor, "timeout": "0"}
        )
        assert [p["data"] for p in polled.json()["publications"]] == missed


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


def test_documented_read_timeouts_outlast_the_hubs_silences() -> None:
    """nginx closes an upstream that is silent for proxy_read_timeout (60 s by default)."""
    (site,) = fenced("nginx")
    timeouts = {
        match.group(1): _seconds(match.group(2))
        for match in re.finditer(
            r"location\s+(?:=\s+|~\s+)?(\S+)\s*\{[^}]*?proxy_read_timeout\s+(\w+);", site
        )
    }
    defaults = Settings()
    limits = defaults.limits
    assert timeouts["^/(ws|stomp)$"] > limits.ping_interval + limits.pong_timeout
    assert timeouts["/sse"] > defaults.sse.heartbeat
    assert timeouts["/poll"] > defaults.poll.timeout_max
    buffered = re.search(r"location = /sse \{[^}]*\}", site)
    assert buffered is not None and "proxy_buffering off;" in buffered.group(0)


def test_nginx_lets_an_idle_connection_go_before_the_hub_does() -> None:
    """Were the hub the first to close an idle upstream connection, nginx could send a request
    on it as the close crossed, and answer that request 502."""
    (site,) = fenced("nginx")
    upstream = re.search(r"upstream clarion \{([^}]*)\}", site)
    assert upstream is not None
    idle = re.search(r"keepalive_timeout\s+(\w+);", upstream.group(1))
    assert idle is not None, "nginx keeps an idle upstream connection 60 s by default"
    assert _seconds(idle.group(1)) < Settings().limits.keepalive_timeout


def test_the_systemd_unit_runs_the_documented_command(tmp_path: Path) -> None:
    (unit,) = fenced("ini")
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit)
    service = parser["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/clarion")
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve" and args.config == "/etc/clarion/clarion.toml"
    # The hub drains for shutdown_timeout seconds on SIGTERM: systemd must wait longer.
    assert float(service["TimeoutStopSec"]) > Settings().shutdown_timeout
    assert service["KillSignal"] == "SIGTERM"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # systemd's own parser, on the unit with the command pointed at this install.
    venv_clarion = Path(__file__).parents[2] / ".venv" / "bin" / "clarion"
    local = unit.replace(command[0], str(venv_clarion) if venv_clarion.exists() else "/bin/true")
    path = tmp_path / "clarion.service"
    path.write_text(local)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "clarion.service" in line and "user" not in line.lower()
    ]
    assert not problems, result.stderr
