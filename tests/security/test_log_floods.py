"""Log floods: what an anonymous peer can make the hub log per request, frame or connection is
rate-limited (a line per address a minute, 20 addresses a minute, then a count of the rest) and
never echoes its text beyond a short, escaped prefix."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from ..conftest import RunningHub, clarion_server, timeout

pytestmark = clarion_server("the log lines of clarion's own HTTP and WebSocket server")

KEY = "A" * 15_000


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; what the hub answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout(10))
    finally:
        writer.close()


def handshake(key: str) -> bytes:
    return (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ).encode("latin-1")


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_malformed_requests_are_logged_once_a_minute_per_address(
    hub_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clarion.server")
    running: RunningHub = await hub_factory()
    for _ in range(50):
        answer = await exchange(running.port, b"GARBAGE\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
    assert len(lines(caplog, "HTTP 400 to")) == 1
    errors = running.server.registry.errors
    errors.started -= errors.every  # a minute on, without waiting for it
    await exchange(running.port, b"GARBAGE\r\n\r\n")
    *_, last = lines(caplog, "HTTP 400 to")
    assert "and 49 more like it" in last, last


async def test_a_refused_handshake_shows_a_short_escaped_prefix_once(
    hub_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A 15,000-character key refused 30 times: one line, of a few hundred characters."""
    caplog.set_level(logging.INFO, logger="clarion.server")
    running: RunningHub = await hub_factory()
    for _ in range(30):
        answer = await exchange(running.port, handshake(KEY))
        assert answer.startswith(b"HTTP/1.1 400")
    refused = lines(caplog, "websocket handshake refused")
    assert len(refused) == 1, refused
    assert len(refused[0]) < 400 and "characters)" in refused[0], refused[0]
    assert sum(len(r.getMessage()) for r in caplog.records) < 20_000


async def test_a_peers_control_characters_reach_the_log_escaped(
    hub_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clarion.server")
    running: RunningHub = await hub_factory()
    # Bytes over 0x7f pass HTTP's parser: 0x85 is a line break (NEL), 0x9b a terminal's CSI.
    await exchange(running.port, handshake("\x85forged line\x9b2J"))
    (refused,) = lines(caplog, "websocket handshake refused")
    assert "\x85" not in refused and "\x9b" not in refused, refused
    assert "\\x85forged line\\x9b2J" in refused, refused


async def test_endless_addresses_are_logged_twenty_a_minute(
    hub_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Many addresses (a botnet, or IPv6 privacy addresses): 20 lines a minute in all, and the
    table of addresses seen stays that small."""
    caplog.set_level(logging.INFO, logger="clarion.server")
    running: RunningHub = await hub_factory()
    errors = running.server.registry.errors
    for n in range(60):
        errors.log(logging.INFO, f"192.0.2.{n}", "HTTP %d to %s", 400, (f"192.0.2.{n}", 1))
    assert len(lines(caplog, "HTTP 400 to")) == errors.keys == 20
    assert len(errors.logged) == 20


async def test_stalled_requests_are_logged_once_a_minute_per_address(
    hub_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clarion.server")
    running: RunningHub = await hub_factory(limits={"handshake_timeout": 0.2})
    for _ in range(5):
        await exchange(running.port, b"GET / HTTP/1.1\r\n")  # a head that never ends
    assert len(lines(caplog, "request head not received in time")) == 1
