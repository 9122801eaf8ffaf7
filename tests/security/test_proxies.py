"""Client addresses behind trusted proxies, on every transport and both servers: the right-most
untrusted hop of the one configured header; spoofed headers from anyone else change nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from clarion import Settings

from ..conftest import RunningHub, timeout
from ..redis_fixture import RedisServer, redis_server  # noqa: F401  (a fixture)
from ..stomp.client import frame
from .servers import SERVERS, SUITE, serve

Headers = list[tuple[str, str]]

XFF = "X-Forwarded-For"
# The test client connects from 127.0.0.1: it plays the nearest proxy; 10/8 is a farther one.
TRUSTED = ["127.0.0.0/8", "10.0.0.0/8"]

X_FORWARDED_FOR_CASES: list[tuple[Headers, str]] = [
    ([], "127.0.0.1"),  # the proxy's own request (a health check)
    ([(XFF, "203.0.113.7")], "203.0.113.7"),
    ([(XFF, "198.51.100.1, 203.0.113.7")], "203.0.113.7"),  # the client's claim is ignored
    ([(XFF, "198.51.100.1, 203.0.113.7, 10.1.2.3")], "203.0.113.7"),  # two trusted hops
    ([(XFF, "10.0.0.9, 10.1.2.3")], "10.0.0.9"),  # every hop trusted: the left-most
    ([(XFF, "198.51.100.1"), (XFF, "203.0.113.7")], "203.0.113.7"),  # repeated header lines
    ([(XFF, "203.0.113.7, garbage")], "127.0.0.1"),  # malformed: the proxy that wrote it
    ([(XFF, "203.0.113.7, unknown, 10.1.2.3")], "10.1.2.3"),
    ([(XFF, "")], "127.0.0.1"),
    ([(XFF, "203.0.113.7:51000")], "203.0.113.7"),
    ([(XFF, "[2001:db8::7]:4711")], "2001:db8::7"),
    ([(XFF, "2001:DB8:0:0::7")], "2001:db8::7"),
    ([(XFF, "::ffff:203.0.113.7")], "203.0.113.7"),
    ([(XFF, "fe80::1%eth0")], "127.0.0.1"),
    ([("Forwarded", "for=198.51.100.1")], "127.0.0.1"),  # not the configured header
    ([("X-Real-IP", "198.51.100.1")], "127.0.0.1"),
]

FORWARDED_CASES: list[tuple[Headers, str]] = [
    ([("Forwarded", "for=203.0.113.7;proto=https;host=rt.example.com")], "203.0.113.7"),
    ([("Forwarded", 'for="[2001:db8::7]:4711", for=10.1.2.3')], "2001:db8::7"),
    ([("Forwarded", "for=198.51.100.1, for=203.0.113.7")], "203.0.113.7"),
    ([("Forwarded", "For=198.51.100.1"), ("Forwarded", "for=203.0.113.7")], "203.0.113.7"),
    ([("Forwarded", "for=_hidden")], "127.0.0.1"),
    ([("Forwarded", 'for="203.0.113.7')], "127.0.0.1"),
    ([("Forwarded", "for=203.0.113.7;by")], "127.0.0.1"),
    ([("Forwarded", 'for=203.0.113.7, for="a,b"')], "127.0.0.1"),
    ([(XFF, "198.51.100.1")], "127.0.0.1"),
]

REAL_IP_CASES: list[tuple[Headers, str]] = [
    ([("X-Real-IP", "203.0.113.7")], "203.0.113.7"),
    ([("X-Real-IP", "2001:db8::7")], "2001:db8::7"),
    ([("X-Real-IP", "203.0.113.7"), ("X-Real-IP", "198.51.100.1")], "127.0.0.1"),
    ([("X-Real-IP", "nonsense")], "127.0.0.1"),
    ([(XFF, "198.51.100.1")], "127.0.0.1"),
]

# Everything a client could send: none of it counts from a peer that is not a trusted proxy.
SPOOFED: list[tuple[Headers, str]] = [
    (headers, "127.0.0.1")
    for headers, _ in X_FORWARDED_FOR_CASES + FORWARDED_CASES + REAL_IP_CASES
    if headers
]


async def _single_session(running: RunningHub) -> Any:
    deadline = time.monotonic() + timeout(5)
    while len(running.hub.sessions) != 1:
        assert time.monotonic() < deadline, len(running.hub.sessions)
        await asyncio.sleep(0.005)
    return next(iter(running.hub.sessions.values()))


async def _no_sessions(running: RunningHub) -> None:
    deadline = time.monotonic() + timeout(5)
    while running.hub.sessions:
        assert time.monotonic() < deadline, "a session outlived its client"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def opened(running: RunningHub, transport: str, headers: Headers) -> AsyncIterator[None]:
    """A session on ``transport`` opened with ``headers``, held open inside the block."""
    base = f"ws://127.0.0.1:{running.port}"
    if transport in ("ws", "stomp"):
        path, proto = ("/ws", "clarion.v1") if transport == "ws" else ("/stomp", "v12.stomp")
        async with websockets.connect(
            base + path,
            subprotocols=[proto],
            additional_headers=headers,  # type: ignore[list-item]
        ) as conn:
            if transport == "stomp":
                await conn.send(frame("CONNECT", accept_version="1.2", host="h"))
                reply = await asyncio.wait_for(conn.recv(), timeout(5))
                assert str(reply).startswith("CONNECTED"), reply
            yield
        return
    async with httpx.AsyncClient(base_url=running.http_url, timeout=timeout(10)) as client:
        params = {"channel": "news", **({"timeout": "30"} if transport == "poll" else {})}
        path = "/" + transport
        request = client.build_request("GET", path, params=params, headers=headers)
        if transport == "sse":
            response = await client.send(request, stream=True)
            assert response.status_code == 200
            try:
                yield
            finally:
                await response.aclose()
            return
        waiting = asyncio.create_task(client.send(request))
        try:
            yield
        finally:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await waiting


TRANSPORTS = ["ws", "stomp", "sse", "poll"]


async def _check(running: RunningHub, transport: str, cases: list[tuple[Headers, str]]) -> None:
    wrong = []
    for headers, expected in cases:
        async with opened(running, transport, headers):
            session = await _single_session(running)
            if session.client_ip != expected:
                wrong.append((headers, session.client_ip, expected))
        await _no_sessions(running)
    assert not wrong, wrong


ANON = {"namespaces": {"default": {"anonymous": True}}}


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_x_forwarded_for_from_trusted_proxies(server: str, transport: str) -> None:
    async with serve(server, Settings(trusted_proxies=TRUSTED, **ANON)) as running:
        await _check(running, transport, X_FORWARDED_FOR_CASES)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_forwarded_and_x_real_ip_when_configured(transport: str) -> None:
    settings = Settings(trusted_proxies=TRUSTED, forwarded_header="forwarded", **ANON)
    async with serve(SUITE, settings) as running:
        await _check(running, transport, FORWARDED_CASES)
    settings = Settings(trusted_proxies=TRUSTED, forwarded_header="x-real-ip", **ANON)
    async with serve("uvicorn", settings) as running:
        await _check(running, transport, REAL_IP_CASES)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
async def test_spoofed_headers_from_an_untrusted_peer_change_nothing(
    server: str, transport: str, header: str
) -> None:
    settings = Settings(trusted_proxies=["10.0.0.0/8"], forwarded_header=header, **ANON)
    async with serve(server, settings) as running:
        await _check(running, transport, SPOOFED)
    async with serve(server, Settings(forwarded_header=header, **ANON)) as running:
        await _check(running, transport, SPOOFED[:3])


async def _close_code(conn: Any) -> int | None:
    try:
        while True:
            await asyncio.wait_for(conn.recv(), timeout(5))
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


@pytest.mark.parametrize("server", SERVERS)
async def test_per_ip_caps_count_the_client_behind_the_proxy(server: str) -> None:
    """Two clients behind one proxy are two addresses; one IPv6 client is its /64."""
    settings = Settings(trusted_proxies=TRUSTED, limits={"max_connections_per_ip": 1}, **ANON)
    async with serve(server, settings) as running:
        url = f"ws://127.0.0.1:{running.port}/ws"

        def connect(client: str) -> Any:
            return websockets.connect(
                url,
                subprotocols=["clarion.v1"],
                additional_headers={XFF: client},  # type: ignore[list-item]
            )

        async with (
            connect("203.0.113.7") as first,
            connect("203.0.113.8") as second,
            connect("2001:db8:0:1::1") as v6,
            connect("2001:db8:0:2::1") as other_net,
        ):
            for conn in (first, second, v6, other_net):
                await conn.send(json.dumps({"id": 1, "op": "ping"}))
                assert json.loads(await asyncio.wait_for(conn.recv(), timeout(5)))["ok"] == {}
            for over in ("203.0.113.7", "2001:db8:0:1:ffff::9"):
                async with connect(over) as refused:
                    assert await _close_code(refused) == 4503
    settings = Settings(
        trusted_proxies=TRUSTED,
        limits={"max_connections_per_ip": 1, "ipv6_prefix": 128},
        **ANON,
    )
    async with serve(server, settings) as running:
        url = f"ws://127.0.0.1:{running.port}/ws"
        async with connect("2001:db8::1") as a, connect("2001:db8::2") as b:
            for conn in (a, b):
                await conn.send(json.dumps({"id": 1, "op": "ping"}))
                assert json.loads(await asyncio.wait_for(conn.recv(), timeout(5)))["ok"] == {}


async def test_per_ip_caps_behind_proxies_hold_across_nodes(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Two nodes on one Redis behind one proxy: the shared cap counts clients, not the proxy."""
    settings = Settings(
        engine=redis_server.url,
        trusted_proxies=TRUSTED,
        limits={"max_connections_per_ip": 1},
        **ANON,
    )
    async with serve(SUITE, settings) as a, serve("uvicorn", settings) as b:

        def connect(node: RunningHub, client: str) -> Any:
            return websockets.connect(
                f"ws://127.0.0.1:{node.port}/ws",
                subprotocols=["clarion.v1"],  # type: ignore[list-item]
                additional_headers={XFF: client},
            )

        async def admitted(conn: Any) -> bool:
            # The shared count is taken just after connecting: a client over the cap is closed
            # (4503) once the node holding the others has announced itself since (about a
            # second); one under it hears nothing more.
            try:
                while True:
                    msg = json.loads(await asyncio.wait_for(conn.recv(), timeout(4)))
                    assert "disconnect" in msg, msg
            except TimeoutError:
                return True
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 4503, exc
                return False

        async with connect(a, "203.0.113.7") as first, connect(a, "2001:db8:0:1::1") as v6:
            assert await admitted(first) and await admitted(v6)
            async with connect(b, "203.0.113.8") as other:
                assert await admitted(other)
            for client in ("203.0.113.7", "2001:db8:0:1::2"):
                async with connect(b, client) as over:
                    assert not await admitted(over)


def test_bad_trusted_proxies_refuse_to_start() -> None:
    for bad in ["10.0.0.0/33", "not-an-address", "10.0.0.1/8/8", ""]:
        with pytest.raises(ValueError, match="CIDR"):
            Settings(trusted_proxies=[bad])
