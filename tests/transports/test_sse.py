"""GET /sse over real HTTP: events and ids, resume, reset, several channels, heartbeats, limits."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import orjson
import pytest

from clarion import Settings, mint_token
from clarion.core.auth import LEEWAY
from clarion.core.session import Session
from clarion.protocol.codes import CloseCode
from clarion.protocol.cursor import Cursor
from clarion.protocol.publication import StreamPosition

from ..conftest import RunningHub, both_servers, timeout, until
from .streams import Baseline, sse
from .test_sse_encoding import parse


def sse_sessions(hub: RunningHub) -> list[Session]:
    return [s for s in hub.hub.sessions.values() if s.transport.kind == "sse"]


async def stalled_reader(hub: RunningHub, channel: str, headers: str = "") -> socket.socket:
    """A socket that asked for ``/sse?channel=…`` and reads nothing until the test does, with a
    small receive buffer so that the hub's buffers fill, not the kernel's; once the hub has the
    stream."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    request = f"GET /sse?channel={channel} HTTP/1.1\r\nHost: x\r\n{headers}\r\n"
    try:
        await loop.sock_connect(sock, ("127.0.0.1", hub.port))
        await loop.sock_sendall(sock, request.encode())
        await until(lambda: len(sse_sessions(hub)) == 1)
    except BaseException:
        sock.close()
        raise
    return sock


async def cut(hub: RunningHub, code: int = CloseCode.SHUTDOWN) -> None:
    """The hub ends every SSE stream, as on shutdown or a server-side disconnect."""
    for session in sse_sessions(hub):
        session.close(code)


@both_servers
async def test_headers_opening_and_events_in_order(hub: RunningHub) -> None:
    await hub.publish("chat:lobby", "before")
    async with sse(hub, "chat:lobby") as stream:
        headers = stream.response.headers
        assert headers["content-type"] == "text/event-stream"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        opening = await stream.opening()
        assert opening.retry == 3000
        start = Cursor.decode(opening.id).get("chat:lobby")
        assert start is not None and start.offset == 1  # starts from now
        published = [await hub.publish("chat:lobby", {"n": n}) for n in range(3)]
        events = await stream.messages(3)
    for (event_id, pub), sent, n in zip(events, published, range(3), strict=True):
        assert pub["data"] == {"n": n} and pub["offset"] == n + 2
        assert event_id == pub["cursor"] == sent["cursor"]
        assert set(pub) == {"channel", "offset", "epoch", "data", "time", "cursor"}


@both_servers
async def test_resume_with_last_event_id_after_the_hub_cut_the_stream(hub: RunningHub) -> None:
    async with sse(hub, "chat:lobby") as stream:
        for n in range(2):
            await hub.publish("chat:lobby", f"seen {n}")
        await stream.messages(2)
        await cut(hub)
        (disconnect,) = await stream.rest()
        assert disconnect.event == "disconnect"
        assert disconnect.json() == {"code": 4000, "reason": "shutdown", "reconnect": True}
        last_id = stream.last_id
    for n in range(3):
        await hub.publish("chat:lobby", f"missed {n}")
    async with sse(hub, "chat:lobby", headers={"Last-Event-ID": last_id}) as stream:
        missed = await stream.messages(3)
        assert [p["data"] for _, p in missed] == ["missed 0", "missed 1", "missed 2"]
        assert [p["offset"] for _, p in missed] == [3, 4, 5]
        await hub.publish("chat:lobby", "live")
        ((_, live),) = await stream.messages(1)
        assert (live["data"], live["offset"]) == ("live", 6)
        with pytest.raises(asyncio.TimeoutError):
            await stream.next(wait=0.2)  # and nothing else: no duplicate


@both_servers
async def test_last_event_id_in_the_query(hub: RunningHub) -> None:
    """Where a client cannot set the header (an EventSource polyfill, a Mercure client), it
    sends the same in the query, as lastEventID or lastEventId: newer than the page's cursor=,
    older than a header."""
    for name in ("lastEventID", "lastEventId"):
        channel = f"chat:{name}"
        first, second, third = [(await hub.publish(channel, n))["cursor"] for n in range(3)]
        async with sse(hub, channel, **{name: second, "cursor": first}) as stream:
            ((_, pub),) = await stream.messages(1)
            assert (pub["offset"], pub["data"]) == (3, 2)
        async with sse(hub, channel, headers={"Last-Event-ID": third}, **{name: first}) as stream:
            await hub.publish(channel, "live")
            ((_, pub),) = await stream.messages(1)
            assert (pub["offset"], pub["data"]) == (4, "live")


@both_servers
async def test_cut_before_the_first_event_still_resumes(hub: RunningHub) -> None:
    """The opening id: gives a client its position before any event arrives."""
    async with sse(hub, "chat:quiet") as stream:
        opening_id = (await stream.opening()).id
        await cut(hub)
        await stream.rest()
    await hub.publish("chat:quiet", "while away")
    async with sse(hub, "chat:quiet", headers={"Last-Event-ID": opening_id}) as stream:
        ((_, pub),) = await stream.messages(1)
        assert pub["data"] == "while away"


async def test_cursor_query_parameter_on_first_connect(hub: RunningHub) -> None:
    first = await hub.publish("chat:lobby", "a")
    await hub.publish("chat:lobby", "b")
    async with sse(hub, "chat:lobby", cursor=first["cursor"]) as stream:
        ((_, pub),) = await stream.messages(1)
        assert pub["data"] == "b"


async def test_last_event_id_wins_over_the_query_cursor(hub: RunningHub) -> None:
    first = await hub.publish("chat:lobby", "a")
    second = await hub.publish("chat:lobby", "b")
    await hub.publish("chat:lobby", "c")
    headers = {"Last-Event-ID": second["cursor"]}
    async with sse(hub, "chat:lobby", cursor=first["cursor"], headers=headers) as stream:
        ((_, pub),) = await stream.messages(1)
        assert pub["data"] == "c"


async def test_reset_when_history_was_trimmed(hub_factory: Any) -> None:
    hub = await hub_factory(namespaces={"default": {"history_size": 3}})
    cursor = (await hub.publish("news", 0))["cursor"]
    for n in range(4):  # one more than history holds
        await hub.publish("news", n + 1)
    async with sse(hub, "news", headers={"Last-Event-ID": cursor}) as stream:
        reset = await stream.next()
        assert reset.event == "reset"
        body = reset.json()
        assert body["channel"] == "news" and body["reason"] == "trimmed"
        assert reset.id == body["cursor"]
        position = Cursor.decode(reset.id).get("news")
        assert position is not None and position.offset == 5
        await hub.publish("news", "live")
        ((event_id, live),) = await stream.messages(1)
        assert live["data"] == "live" and live["offset"] == 6 and event_id == live["cursor"]


async def test_foreign_epoch_cursor_is_not_malformed_it_resets(hub: RunningHub) -> None:
    await hub.publish("chat:lobby", "x")
    foreign = Cursor.single("chat:lobby", StreamPosition("0123456789ab", 1)).encode()
    async with sse(hub, "chat:lobby", cursor=foreign) as stream:
        reset = await stream.next()
        assert reset.event == "reset" and reset.json()["reason"] == "epoch"
        await hub.publish("chat:lobby", "live")
        ((_, live),) = await stream.messages(1)
        assert live["data"] == "live"


async def test_the_opening_names_each_channel_that_did_not_recover(hub: RunningHub) -> None:
    # Before any event of any channel: a client knows which of them recovered, however the
    # bytes after the opening (here a replay ahead of the reset) are split.
    since = (await hub.publish("chat:replayed", 0))["cursor"]
    await hub.publish("chat:replayed", 1)
    foreign = Cursor.single("chat:stale", StreamPosition("0123456789ab", 1)).encode()
    async with sse(hub, "chat:replayed", "chat:stale", cursor=[since, foreign]) as stream:
        head = b""
        async for chunk in stream.response.aiter_bytes():
            head += chunk
            if b"\n\n" in head:
                break
        opening = head.split(b"\n\n")[0].split(b"\n")
        assert opening[0].startswith(b"retry: ")
        assert opening[1:-1] == [b": reset chat:stale epoch"]
        assert opening[-1].startswith(b"id: ")
    async with sse(hub, "chat:replayed", cursor=since) as stream:
        head = b""
        async for chunk in stream.response.aiter_bytes():
            head += chunk
            if b"\n\n" in head:
                break
        assert [line[:4] for line in head.split(b"\n\n")[0].split(b"\n")] == [b"retr", b"id: "]


@both_servers
async def test_one_stream_several_channels_resumes_all_of_them(hub: RunningHub) -> None:
    async with sse(hub, "chat:a", "chat:b") as stream:
        await hub.publish("chat:a", "a1")
        await hub.publish("chat:b", "b1")
        await hub.publish("chat:a", "a2")
        events = await stream.messages(3)
        assert [p["data"] for _, p in events] == ["a1", "b1", "a2"]
        for event_id, pub in events:
            assert event_id != pub["cursor"]  # a combined cursor, not the publication's own
            position = Cursor.decode(event_id).get(pub["channel"])
            assert position is not None and position.offset == pub["offset"]
        after_a1 = events[0][0]
        assert Cursor.decode(after_a1).get("chat:b") == StreamPosition(events[1][1]["epoch"], 0)
        await cut(hub)
        await stream.rest()
        last_id = stream.last_id
    await hub.publish("chat:b", "b2")
    await hub.publish("chat:a", "a3")
    async with sse(hub, "chat:a", "chat:b", headers={"Last-Event-ID": last_id}) as stream:
        missed = await stream.messages(2)
        assert sorted(p["data"] for _, p in missed) == ["a3", "b2"]
        await hub.publish("chat:b", "b3")
        ((_, live),) = await stream.messages(1)
        assert live["data"] == "b3"
        with pytest.raises(asyncio.TimeoutError):
            await stream.next(wait=0.2)
    # Resuming from the id of the first event replays exactly what came after it, per channel.
    async with sse(hub, "chat:a", "chat:b", headers={"Last-Event-ID": after_a1}) as stream:
        replay = await stream.messages(5)
        by_channel: dict[str, list[str]] = {}
        for _, pub in replay:
            by_channel.setdefault(pub["channel"], []).append(pub["data"])
        assert by_channel == {"chat:a": ["a2", "a3"], "chat:b": ["b1", "b2", "b3"]}


async def _resume_round(port: int, channels: list[str], last_id: str) -> bytes:
    """One stream from ``last_id``, read until the hub ends it or it goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    query = "&".join(f"channel={c}" for c in channels)
    request = f"GET /sse?{query} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {last_id}\r\n\r\n"
    writer.write(request.encode())
    received = b""
    try:
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the end of the response
            async with asyncio.timeout(timeout(1)):
                piece = await reader.read(65536)
            if not piece:
                break
            received += piece
    except TimeoutError:
        pass
    finally:
        writer.close()
    return received


@both_servers
async def test_a_resume_cut_short_keeps_every_channel_in_its_ids(hub_factory: Any) -> None:
    """The first channel's backlog is more than the send budget takes: the stream is ended as
    slow before the second channel is subscribed. Each id written meanwhile still names the
    second channel at its cursor, so the reconnect resumes both: nothing skipped, no reset."""
    hub = await hub_factory(limits={"send_queue_bytes": 64 * 1024})
    a, b = "hist:a", "hist:b"
    await hub.publish(a, "init")
    await hub.publish(b, "init")
    async with hub.http() as http:
        r = await http.get("/poll", params=[("channel", a), ("channel", b), ("timeout", "0")])
    last_id = r.json()["cursor"]
    for n in range(60):
        for channel in (a, b):
            await hub.publish(channel, {"n": n, "pad": "y" * 2000})
    got: dict[str, list[int]] = {a: [], b: []}
    rounds, cut_short = 0, False
    while len(got[a]) < 60 or len(got[b]) < 60:
        rounds += 1
        assert rounds <= 10, {k: len(v) for k, v in got.items()}
        received = await _resume_round(hub.port, [a, b], last_id)
        cut_short = cut_short or b'"code":4001' in received  # ended as slow
        assert b"event: reset" not in received
        for line in received.split(b"\n"):
            if line.startswith(b"id: "):
                last_id = line[4:].decode()
            elif line.startswith(b'data: {"channel"'):
                pub = orjson.loads(line[6:])
                got[pub["channel"]].append(pub["offset"])
    assert cut_short  # the budget did end a stream: the case under test happened
    assert got == {a: list(range(2, 62)), b: list(range(2, 62))}


@pytest.mark.parametrize("channels", [["news"], ["news", "sport"]], ids=["one", "two"])
async def test_an_http10_client_gets_its_stream(hub: RunningHub, channels: list[str]) -> None:
    """HTTP/1.0 has no chunked bodies: the stream is the rest of the connection. One channel's
    stream once took the server's chunk stream anyway, and answered 500."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    query = "&".join(f"channel={c}" for c in channels)
    writer.write(f"GET /sse?{query} HTTP/1.0\r\n\r\n".encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
        assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")), head
        await until(lambda: len(sse_sessions(hub)) == 1)
        await hub.publish(channels[-1], "over 1.0")
        received = b""
        while b"over 1.0" not in received:
            received += await asyncio.wait_for(reader.read(4096), timeout(5))
    finally:
        writer.close()


async def test_a_cursor_missing_a_channel_starts_that_channel_from_now(hub: RunningHub) -> None:
    cursor = (await hub.publish("chat:a", "a1"))["cursor"]
    await hub.publish("chat:a", "a2")
    await hub.publish("chat:b", "old b")
    async with sse(hub, "chat:a", "chat:b", cursor=cursor) as stream:
        ((_, a2),) = await stream.messages(1)
        assert a2["data"] == "a2"
        await hub.publish("chat:b", "new b")
        ((_, b),) = await stream.messages(1)
        assert b["data"] == "new b"


async def test_a_channel_added_to_a_stream_resumes_from_its_own_cursor(hub: RunningHub) -> None:
    """A client that reads chat:a on one stream and adds chat:b gives the stream's cursor and
    chat:b's own: each channel resumes where its cursor says."""
    async with sse(hub, "chat:a") as stream:
        await hub.publish("chat:a", "a1")
        ((stream_id, _),) = await stream.messages(1)
    b_cursor = (await hub.publish("chat:b", "b1"))["cursor"]
    await hub.publish("chat:a", "a2")
    await hub.publish("chat:b", "b2")
    async with sse(hub, "chat:a", "chat:b", cursor=[stream_id, b_cursor]) as stream:
        missed = await stream.messages(2)
        assert sorted(p["data"] for _, p in missed) == ["a2", "b2"]
        with pytest.raises(asyncio.TimeoutError):
            await stream.next(wait=0.2)


@pytest.mark.parametrize("channels", [["chat:a"], ["chat:a", "chat:b"]])
async def test_with_latest_the_first_id_is_just_before_the_newest(
    hub: RunningHub, channels: list[str]
) -> None:
    """The newest publication comes after the opening: a stream cut between the two resumes
    from the opening's id and still gets it."""
    await hub.publish("chat:a", "older")
    await hub.publish("chat:a", "newest")
    async with sse(hub, *channels, latest="1") as stream:
        opening = (await stream.opening()).id
        ((_, first),) = await stream.messages(1)
        assert first["data"] == "newest"
    async with sse(hub, *channels, cursor=opening) as stream:
        ((_, again),) = await stream.messages(1)
        assert again["data"] == "newest"


@both_servers
async def test_heartbeat_comment_on_a_quiet_stream(hub_factory: Any) -> None:
    hub = await hub_factory(Settings(sse={"heartbeat": 0.2}))
    async with (
        hub.http() as client,
        client.stream("GET", "/sse", params={"channel": "chat:quiet"}) as response,
    ):
        seen = b""
        loop = asyncio.get_running_loop()
        started = loop.time()
        async for chunk in response.aiter_raw():
            seen += chunk
            if seen.count(b": ping\n") >= 2:
                break
            assert loop.time() - started < timeout(3)
        elapsed = loop.time() - started
    assert seen.startswith(b"retry: 3000\nid: ")
    assert 0.3 < elapsed < timeout(2)


async def test_presence_counts_sse_sessions_and_metrics_label_them(hub: RunningHub) -> None:
    async with sse(hub, "chat:lobby"):
        await until(lambda: len(hub.hub.sessions) == 1)
        async with hub.http() as client:
            presence = (await client.get("/api/presence", params={"channel": "chat:lobby"})).json()
            metrics = (await client.get("/metrics")).text
    assert [c["transport"] for c in presence["clients"]] == ["sse"]
    assert 'clarion_connections{transport="sse"} 1.0' in metrics


@both_servers
async def test_a_reader_that_stops_reading_is_disconnected_as_slow(hub_factory: Any) -> None:
    hub = await hub_factory(limits={"send_queue_bytes": 65536})
    baseline = Baseline(hub)
    sock = await stalled_reader(hub, "chat:big", "Connection: close\r\n")
    loop = asyncio.get_running_loop()
    big = "x" * 50_000
    sent = 0
    while hub.hub.sessions and sent < 2000:  # bounded: the policy must kick in well before
        await hub.hub.publish("chat:big", big)
        sent += 1
        await asyncio.sleep(0)
    print(f"slow reader disconnected after {sent} publications of 50 kB")
    assert not hub.hub.sessions and hub.hub.stats.slow_disconnects == 1
    received = bytearray()
    while True:  # the stream is bounded: reading it to its end must finish
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout(10))
        if not chunk:
            break
        received += chunk
    sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    events = parse(_unchunk(body))
    offsets = [orjson.loads(e.data)["offset"] for e in events if e.event == "message" and e.data]
    assert offsets == list(range(1, len(offsets) + 1)) and len(offsets) < sent
    # The reader came back within the grace period: it is told why the stream ended.
    assert events[-1].event == "disconnect"
    assert events[-1].json() == {"code": CloseCode.SLOW, "reason": "slow", "reconnect": True}
    await baseline.restored()


def _unchunk(body: bytes) -> bytes:
    """The payload of a chunked body, tolerating a cut at the end."""
    out = bytearray()
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


async def test_clients_that_drop_leave_nothing_behind(hub: RunningHub) -> None:
    baseline = Baseline(hub)
    streams = [
        sse(hub, "chat:a"),
        sse(hub, "chat:a", "chat:b"),
        sse(hub, "chat:c", cursor=(await hub.publish("chat:c", 1))["cursor"]),
    ]
    opened = [await s.__aenter__() for s in streams]
    await until(lambda: len(hub.hub.sessions) == 3)
    await hub.publish("chat:a", "x")
    for stream in opened[:2]:
        await stream.messages(1)
    for s in streams:
        await s.__aexit__(None, None, None)
    await baseline.restored()


@both_servers
async def test_a_reader_that_never_reads_again_is_cut_and_forgotten(hub_factory: Any) -> None:
    hub = await hub_factory(limits={"send_queue_bytes": 65536})
    baseline = Baseline(hub)
    sock = await stalled_reader(hub, "chat:big")
    try:
        for _ in range(2000):
            if not hub.hub.sessions:
                break
            await hub.hub.publish("chat:big", "x" * 50_000)
            await asyncio.sleep(0)
        assert not hub.hub.sessions
        # Its writer is stuck on a full socket: it is cancelled after the grace period.
        await baseline.restored(wait=5)
    finally:
        sock.close()


@both_servers
async def test_a_slow_reader_in_a_conflate_namespace_gets_the_latest(hub_factory: Any) -> None:
    hub = await hub_factory(
        limits={"send_queue_bytes": 65536}, namespaces={"default": {"slow_consumer": "conflate"}}
    )
    sock = await stalled_reader(hub, "prices")
    loop = asyncio.get_running_loop()
    try:
        sent = 0
        while hub.hub.stats.conflations == 0 and sse_sessions(hub) and sent < 2000:
            await hub.hub.publish("prices", {"n": sent, "pad": "x" * 50_000})
            sent += 1
            await asyncio.sleep(0)
        assert hub.hub.stats.conflations >= 1, "the slow stream is conflated"
        for _ in range(20):  # the reader is away: these are conflated to the last one
            await hub.hub.publish("prices", {"n": sent, "pad": "x" * 50_000})
            sent += 1
        assert len(sse_sessions(hub)) == 1 and hub.hub.stats.slow_disconnects == 0
        received = bytearray()
        last = re.compile(rb'"n":%d,[^\n]*\n\n' % (sent - 1))
        while last.search(received) is None:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout(10))
            assert data, "the stream ended before the latest publication"
            received += data
        assert len(sse_sessions(hub)) == 1 and hub.hub.stats.slow_disconnects == 0
    finally:
        sock.close()
    events = parse(_unchunk(bytes(received).partition(b"\r\n\r\n")[2]))
    numbers = [orjson.loads(e.data)["data"]["n"] for e in events if e.data]
    assert numbers == sorted(numbers) and numbers[-1] == sent - 1 and len(numbers) < sent


@both_servers
async def test_an_expired_token_ends_the_stream_with_its_code(hub_factory: Any) -> None:
    secret = "test-secret-0123456789abcdef0123456789"
    hub = await hub_factory(token_secret=secret, api_key="k")
    token = mint_token(secret, "alice", ["chat:*"], ttl=1)
    async with sse(hub, "chat:lobby", token=token) as stream:
        # A session holds its token until its expiry is past the leeway as well.
        (disconnect,) = await stream.rest(wait=5 + LEEWAY)
    assert disconnect.event == "disconnect"
    assert disconnect.json() == {"code": 4004, "reason": "token expired", "reconnect": True}
    assert not hub.hub.sessions


async def test_join_and_leave_events(hub_factory: Any) -> None:
    hub = await hub_factory(namespaces={"room": {"join_leave": True}})
    async with sse(hub, "room:1") as stream:
        await stream.opening()
        async with hub.ws() as ws:
            await ws.subscribe("room:1")
            events = [await stream.next() for _ in range(2)]  # its own join, then the ws one
        leave = await stream.next()
    assert [e.event for e in events] == ["join", "join"]
    assert {e.json()["transport"] for e in events} == {"sse", "ws"}
    assert leave.event == "leave" and leave.json()["channel"] == "room:1"
