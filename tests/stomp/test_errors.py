"""``/stomp`` refusing things: bad frames, bad tokens, permissions, timeouts, dead peers.

Every refusal is an ``ERROR`` frame with the documented ``message``, then a close with the
documented code; none of them disturbs another session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from clarion import Settings, mint_token

from ..conftest import RunningHub, timeout
from .client import Received, StompClient, stomp

SECRET = "a-stomp-test-secret-of-32-bytes-or-more"


@asynccontextmanager
async def observer(hub: RunningHub, channel: str = "watch") -> AsyncIterator[StompClient]:
    """A healthy session that must keep receiving whatever happens to the others."""
    async with stomp(hub) as watcher:
        await watcher.connect(**({"passcode": _token()} if hub.hub.settings.token_secret else {}))
        await watcher.send("SUBSCRIBE", id="w", destination=f"/topic/{channel}", receipt="ready")
        await watcher.expect("RECEIPT")
        yield watcher
        published = await hub.publish(channel, "still here")
        message = await watcher.expect("MESSAGE")
        assert message.headers["message-id"] == published["cursor"]


def _token(**kw: Any) -> str:
    kw.setdefault("channels", ["watch", "chat:*"])
    kw.setdefault("publish", ["chat:*"])
    user = kw.pop("user", "u1")
    return mint_token(SECRET, user, kw.pop("channels"), **kw)


async def refused(client: StompClient) -> tuple[Received, int | None]:
    error = await client.expect("ERROR")
    return error, await client.closed()


CONNECT = "CONNECT\naccept-version:1.2\nhost:h\n\n\0"

BAD_INPUT = [
    ("SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\0",
     "the first frame must be CONNECT or STOMP, not SUBSCRIBE", 4507),
    ("CONNECT\naccept-version:9.9\n\n\0", "Supported protocol versions are 1.0 1.1 1.2", 4507),
    (CONNECT + "FOO\n\n\0", "unknown command FOO", 4507),
    (CONNECT + "MESSAGE\n\n\0", "MESSAGE is a server frame", 4507),
    (CONNECT + CONNECT, "already connected", 4507),
    (CONNECT + "COMMIT\ntransaction:t\n\n\0", "no open transaction 't'", 4507),
    (CONNECT + "SEND\ndestination:/topic/a\ncontent-length:1\n\n{}\0",
     "frame body is not followed by NUL after content-length octets", 4507),
    (CONNECT + "SEND\ndestination:/topic/a\nx:" + "v" * 9000 + "\n\n{}\0",
     "frame headers are over 8192 bytes", 1009),
    (CONNECT + "SEND\ndestination:/topic/a\n" + "x:y\n" * 65 + "\n{}\0",
     "frame has over 64 headers", 1009),
    (CONNECT + "SEND\ndestination:/topic/a\n\n[" + "1," * 600 + "1]\0",
     "frame is over 1024 bytes", 1009),
    (CONNECT + "SEND\ndestination:/topic/a\ncontent-type:application/json\n\n{nope}\0",
     "SEND body is not valid JSON", 4507),
    # Read (orjson reads 1,024 levels), but too deep to write to any subscriber (254).
    (CONNECT + "SEND\ndestination:/topic/a\ncontent-type:application/json\n\n"
     + "[" * 300 + "]" * 300 + "\0", "SEND body is JSON nested too deep (over 254 levels)", 4507),
    (CONNECT + "SEND\ndestination:/topic/a\ncontent-type:application/x+json\n\n"
     + "[" * 255 + "]" * 255 + "\0",
     "SEND body is JSON nested too deep (over 254 levels)", 4507),
    (CONNECT + "SEND\ndestination:/queue/a\n\n{}\0",
     "destination must be /topic/<channel>, not '/queue/a'", 4507),
    (CONNECT + "SEND\ndestination:/topic/a\\tb\n\n{}\0",
     "undefined escape sequence '\\\\t' in a header", 4507),
    (CONNECT + "SEND\ndestination:/topic/a\nbad header\n\n{}\0",
     "header line without a colon: 'bad header'", 4507),
    (CONNECT + "SUBSCRIBE\nid:1\ndestination:/topic/a\nx-since:AAAA\n\n\0",
     "x-since: cursor is truncated", 4507),
    (CONNECT + "SEND\ndestination:/topic/a\n\n{}",
     "incomplete frame: no NUL octet within 0.5 seconds", 4507),
]  # fmt: skip


@pytest.mark.parametrize(("wire", "message", "code"), BAD_INPUT)
async def test_bad_input_is_an_error_then_a_close(
    hub_factory: Callable[..., Any], wire: str, message: str, code: int
) -> None:
    hub: RunningHub = await hub_factory(
        Settings(limits={"max_message_bytes": 1024, "pong_timeout": 0.5})
    )
    async with observer(hub), stomp(hub) as client:
        # Frames may span WebSocket messages: send pieces below the WebSocket message limit, so
        # that the STOMP limits are the ones that answer.
        for i in range(0, len(wire), 500):
            await client.send_raw(wire[i : i + 500])
        if wire.startswith(CONNECT):
            await client.expect("CONNECTED")
        error, closed = await refused(client)
        assert error.headers["message"] == message
        assert error.body.decode().strip() == message
        assert error.headers["x-close-code"] == str(code) and closed == code
        assert error.headers["x-reconnect"] == "false"
    if "9.9" in wire:
        assert error.headers["version"] == "1.0,1.1,1.2"


async def test_frames_streamed_across_messages_for_longer_than_the_deadline(
    hub_factory: Callable[..., Any],
) -> None:
    # Every message ends inside a frame, for longer than the deadline of one unfinished frame:
    # each frame ends in time, so nothing is wrong.
    hub: RunningHub = await hub_factory(Settings(limits={"pong_timeout": 0.5}))
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="s", destination="/topic/stream")
        frames = "".join(f'SEND\ndestination:/topic/stream\n\n"{n}"\0' for n in range(8))
        pieces = [frames[i : i + 30] for i in range(0, len(frames), 30)]
        started = time.monotonic()
        for piece in pieces:
            await client.send_raw(piece)
            await asyncio.sleep(0.1)
        assert time.monotonic() - started > 1.0
        bodies = [(await client.expect("MESSAGE")).json() for _ in range(8)]
        assert bodies == [str(n) for n in range(8)]


async def test_a_websocket_message_over_the_limit_is_closed_by_the_websocket_layer(
    hub_factory: Callable[..., Any],
) -> None:
    hub: RunningHub = await hub_factory(Settings(limits={"max_message_bytes": 1024}))
    async with observer(hub), stomp(hub) as client:
        await client.connect()
        await client.send_raw("SEND\ndestination:/topic/a\n\n" + "x" * 2000 + "\0")
        assert await client.closed() == 1009


async def test_invalid_utf8_in_headers(hub: RunningHub) -> None:
    async with observer(hub), stomp(hub) as client:
        await client.connect()
        await client.send_raw(b"SEND\ndestination:/topic/\xff\n\n{}\0")
        error, closed = await refused(client)
        assert error.headers["message"] == "frame headers are not valid UTF-8" and closed == 4507


async def test_the_error_names_the_receipt_of_the_failing_frame(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SEND", "{oops", destination="/topic/a", receipt="mine-1",
                          content_type="application/json")  # fmt: skip
        error, _ = await refused(client)
        assert error.headers["receipt-id"] == "mine-1"
        assert error.headers["x-code"] == "bad_json"


async def test_no_connect_in_time(hub_factory: Callable[..., Any]) -> None:
    hub: RunningHub = await hub_factory(Settings(limits={"handshake_timeout": 0.5}))
    async with stomp(hub) as client:
        error, closed = await refused(client)
        assert error.headers["message"] == "no CONNECT frame within 0.5 seconds"
        assert closed == 4506


# ---- tokens and permissions ----------------------------------------------------------------------


@pytest.fixture
async def secure(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(Settings(token_secret=SECRET, api_key="k"))
    return running


@pytest.mark.parametrize("where", ["Authorization", "passcode", "token", "query"])
async def test_token_in_every_documented_place(secure: RunningHub, where: str) -> None:
    token = _token(user="alice")
    headers = {"passcode": token, "token": token, "Authorization": f"Bearer {token}"}
    query = f"?token={token}" if where == "query" else ""
    async with stomp(secure, query=query) as client:
        given = {where: headers[where]} if where in headers else {}
        connected = await client.connect(login="ignored", **given)
        assert connected.headers["user-name"] == "alice"
        await client.send("SUBSCRIBE", id="1", destination="/topic/chat\\cx", receipt="r")
        await client.expect("RECEIPT")


@pytest.mark.parametrize(
    ("token", "message", "code"),
    [
        (
            "not-a-jwt",
            "invalid token: not a JWT (three base64url parts, the first two JSON): "
            "Not enough segments",
            4500,
        ),
        (
            mint_token("wrong-secret-of-a-decent-length-32", "u", ["*"]),
            "invalid token: Signature verification failed",
            4500,
        ),
        (mint_token(SECRET, "u", ["*"], ttl=-60), "token expired", 4004),
    ],
)  # fmt: skip
async def test_bad_tokens(secure: RunningHub, token: str, message: str, code: int) -> None:
    async with observer(secure), stomp(secure) as client:
        await client.send("CONNECT", accept_version="1.2", passcode=token)
        error, closed = await refused(client)
        assert error.headers["message"] == message
        assert error.headers["x-close-code"] == str(code) and closed == code
        assert error.headers["x-reconnect"] == ("true" if code == 4004 else "false")
    assert len(secure.hub.sessions) == 0


async def test_subscribe_needs_permission(secure: RunningHub) -> None:
    async with observer(secure), stomp(secure) as client:
        await client.connect(passcode=_token())
        await client.send("SUBSCRIBE", id="1", destination="/topic/secret", receipt="s")
        error, closed = await refused(client)
        assert error.headers["message"] == (
            "not allowed to subscribe to 'secret': the token's channels claim does not cover it"
        )
        assert (error.headers["receipt-id"], closed) == ("s", 4502)


async def test_anonymous_subscribe_needs_a_token(secure: RunningHub) -> None:
    async with stomp(secure) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="1", destination="/topic/chat\\cx")
        error, closed = await refused(client)
        assert error.headers["message"] == "a token is needed to subscribe to 'chat:x'"
        assert closed == 4500


async def test_send_to_a_forbidden_channel(secure: RunningHub) -> None:
    async with observer(secure), stomp(secure) as client:
        await client.connect(passcode=_token())
        await client.send("SEND", "{}", destination="/topic/watch", receipt="p1")
        error, closed = await refused(client)
        assert error.headers["message"] == (
            "not allowed to publish to 'watch': the token's publish claim does not cover it"
        )
        assert (error.headers["receipt-id"], error.headers["x-code"]) == ("p1", "forbidden")
        assert closed == 4502


async def test_the_server_api_can_disconnect_a_user(secure: RunningHub) -> None:
    async with stomp(secure) as client:
        await client.connect(passcode=_token(user="mallory"))
        async with secure.http() as http:
            r = await http.post(
                "/api/disconnect", json={"user": "mallory"}, headers={"Authorization": "apikey k"}
            )
            r.raise_for_status()
        error, closed = await refused(client)
        assert (error.headers["x-close-code"], error.headers["x-reconnect"]) == ("4501", "false")
        assert closed == 4501


async def test_shutdown_tells_clients_to_reconnect(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await hub.hub.close()
        error, closed = await refused(client)
        assert error.headers["message"] == "shutdown"
        assert (error.headers["x-close-code"], error.headers["x-reconnect"]) == ("4000", "true")
        assert closed == 4000


# ---- heart-beats and dead peers ------------------------------------------------------------------


@pytest.fixture
async def quick(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(
        Settings(limits={"ping_interval": 0.3, "pong_timeout": 0.8, "stomp_min_heart_beat": 0.3})
    )
    return running


async def test_heart_beats_both_ways(quick: RunningHub) -> None:
    async with stomp(quick) as client:
        connected = await client.connect(heart_beat="100,100")
        assert connected.headers["heart-beat"] == "300,300"
        started = time.monotonic()
        beats = 0
        while beats < 3:
            await client.send_raw("\n")  # the client's heart-beats: accepted silently
            if (await client.recv(heart_beats=True)).command == "HEARTBEAT":
                beats += 1
        assert time.monotonic() - started < timeout(3)
        # Beating on both sides keeps the session through several of the hub's sweeps.
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            await client.send_raw("\n")
            await client.recv(heart_beats=True)
        assert len(quick.hub.sessions) == 1


async def test_no_heart_beats_when_the_client_wants_none(quick: RunningHub) -> None:
    async with stomp(quick) as client:
        assert (await client.connect(heart_beat="0,0")).headers["heart-beat"] == "0,0"
        with pytest.raises(TimeoutError):
            await client.recv(0.8, heart_beats=True)


async def test_a_silent_peer_is_removed(quick: RunningHub) -> None:
    async with stomp(quick, ping_interval=None) as client:
        await client.connect(heart_beat="300,300")
        assert len(quick.hub.sessions) == 1
        # Stop reading: no heart-beat, and no pong for the hub's WebSocket pings either.
        client.conn.transport.pause_reading()
        deadline = time.monotonic() + timeout(4)
        while quick.hub.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not quick.hub.sessions, "a silent peer was not removed"


@pytest.mark.parametrize("twice", ["query", "header"])
async def test_an_upgrade_token_given_twice_is_refused_at_connect(
    secure: RunningHub, twice: str
) -> None:
    alice, bob = _token(user="alice"), _token(user="bob")
    query = f"?token={alice}&token={bob}" if twice == "query" else ""
    headers = [("Authorization", f"Bearer {alice}"), ("Authorization", f"Bearer {bob}")]
    extra = {"additional_headers": headers} if twice == "header" else {}
    async with observer(secure), stomp(secure, query=query, **extra) as client:
        await client.send("CONNECT", accept_version="1.2")
        error, closed = await refused(client)
        assert "more than once" in error.headers["message"]
        assert error.headers["x-close-code"] == "4500" and closed == 4500
    # A CONNECT that brings its own token does not read the upgrade's.
    async with stomp(secure, query=query, **extra) as client:
        connected = await client.connect(passcode=_token(user="carol"))
        assert connected.headers["user-name"] == "carol"
