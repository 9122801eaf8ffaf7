"""HTTP connections that wait on their client are timed and counted, in every state.

A request head, a declared body (length, chunked, ``Expect: 100-continue``), an idle keep-alive
connection, a pipelined request: each has a timer, each counts against the per-address and
per-node caps for connections without a session, and connections beyond a cap or beyond the
file descriptor budget are refused (503) and logged, while other addresses are still served.
Raw sockets on clarion's own server; the caps and timeouts are lowered for the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from clarion import mint_token
from clarion.webhooks.signing import generate_secret

from ..conftest import RunningHub, clarion_server, timeout
from .rawws import CLOSE, TEXT, masked, open_raw
from .servers import SERVERS
from .test_write_floods import STOMP_CONNECT, serve, small_send_buffers

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
SECRET = "a-long-enough-test-secret-0123456789"
QUICK = {"handshake_timeout": 0.5, "body_timeout": 0.5, "keepalive_timeout": 0.5}
# Under another ASGI server the HTTP connection is the host server's, with its own timeouts.
HTTP_TIMERS = clarion_server("the timers and caps of HTTP connections are clarion's server's")


@pytest.fixture
async def sockets() -> AsyncIterator[Callable[..., Any]]:
    """``await open_(port, source)`` → a raw connection from ``source``; all closed after."""
    writers: list[asyncio.StreamWriter] = []

    async def open_(port: int, source: str = "127.0.0.1") -> Stream:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout(5)
        )
        writers.append(writer)
        return reader, writer

    yield open_
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, wait: float = 5) -> bytes:
    """Everything the hub sends until it closes the connection (fails if it does not)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout(wait))
    except ConnectionResetError:
        return b""


def statuses(data: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    length = int(re.findall(rb"content-length: (\d+)", head.lower())[0])
    return head + await asyncio.wait_for(reader.readexactly(length), timeout(5))


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"
PUBLISH = b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"


@HTTP_TIMERS
@pytest.mark.parametrize(
    "sent, answers",
    [
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: h\r\n", [], id="slow-head"),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n",
            [200],
            id="declared-body-answered-without-it",
        ),
        pytest.param(
            PUBLISH + b"Content-Length: 1000\r\n\r\n" + b'{"channel": "c", ',
            [408],
            id="declared-body-awaited",
        ),
        pytest.param(
            PUBLISH + b"Transfer-Encoding: chunked\r\n\r\n5\r\n" + b'{"cha\r\n',
            [408],
            id="chunked-never-finished",
        ),
        pytest.param(
            PUBLISH + b"Content-Length: 40\r\nExpect: 100-continue\r\n\r\n",
            [100, 408],
            id="expect-100-continue",
        ),
        pytest.param(HEALTHZ, [200], id="idle-keep-alive"),
        pytest.param(
            HEALTHZ + PUBLISH + b"Content-Length: 100\r\n\r\n",
            [200, 408],
            id="pipelined-body-never-sent",
        ),
        pytest.param(
            HEALTHZ + b"GET /healthz HTTP/1.1\r\nHost: h\r\n",
            [200],
            id="pipelined-head-never-finished",
        ),
    ],
)
async def test_every_waiting_state_has_a_timer(
    hub_factory: Any, sockets: Any, sent: bytes, answers: list[int]
) -> None:
    hub: RunningHub = await hub_factory(limits=QUICK)
    reader, writer = await sockets(hub.port)
    started = time.monotonic()
    writer.write(sent)
    assert statuses(await until_closed(reader)) == answers
    assert time.monotonic() - started >= 0.4  # a timer ended it, not a refusal
    # The client closes its end, as one does at the hub's: an answer given before the body
    # came lingers until then (LINGER at most, which a wait of as long would race).
    writer.close()
    deadline = time.monotonic() + timeout(2)
    while hub.server.registry.pending.total:  # released once the hub's side is closed too
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


@HTTP_TIMERS
async def test_a_late_body_then_idle_is_closed(hub_factory: Any, sockets: Any) -> None:
    hub: RunningHub = await hub_factory(limits=QUICK)
    reader, writer = await sockets(hub.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
    assert statuses(await read_response(reader)) == [200]
    writer.write(b"0123456789")  # the body, after the answer, in time: then the connection idles
    assert await until_closed(reader) == b""


@HTTP_TIMERS
async def test_a_long_poll_outlives_the_body_and_idle_timers(
    hub_factory: Any, sockets: Any
) -> None:
    """Timers never run out on the app's time: a pipelined request waits for a long poll."""
    hub: RunningHub = await hub_factory(limits=QUICK)
    reader, writer = await sockets(hub.port)
    started = time.monotonic()
    writer.write(
        b"GET /poll?channel=c&timeout=1.5 HTTP/1.1\r\nHost: h\r\n\r\n"
        + PUBLISH
        + b"Content-Length: 36\r\n\r\n"
        + b'{"channel": "c", "data"'  # the rest never comes
    )
    # The poll answers after 1.5 s (three body timeouts) while the pipelined request waits;
    # then the server reads it, and its body's timer runs.
    assert statuses(await until_closed(reader)) == [200, 408]
    assert time.monotonic() - started >= 1.9


@HTTP_TIMERS
async def test_many_from_one_address_are_refused_others_are_served(
    hub_factory: Any, sockets: Any, caplog: Any
) -> None:
    cap = 20
    hub: RunningHub = await hub_factory(
        limits={
            "max_pending_connections_per_ip": cap,
            "handshake_timeout": 30,
            "body_timeout": 30,
        }
    )
    held = [await sockets(hub.port) for _ in range(cap)]
    for _, writer in held:  # each declares a body it never sends
        writer.write(PUBLISH + b"Content-Length: 500\r\n\r\n")
    caplog.set_level(logging.WARNING, logger="clarion.server")
    await asyncio.sleep(0.05)
    refused = [await sockets(hub.port) for _ in range(3 * cap)]
    for reader, _ in refused:
        assert statuses(await until_closed(reader)) == [503]
    # Another address is served meanwhile, and so are the held ones' sessions elsewhere.
    reader, writer = await sockets(hub.port, "127.0.0.2")
    writer.write(HEALTHZ)
    assert statuses(await read_response(reader)) == [200]
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == [
        f"refused 1 HTTP connection(s) since the last report: the last from 127.0.0.1, "
        f"which holds {cap} (its cap)"
    ]  # one line for the first refusal; the next 59 wait for the next report
    for _, writer in held:
        writer.close()
    # The held address's count only: the other address's keep-alive connection is counted
    # as waiting on its client until its own idle timer ends it.
    deadline = time.monotonic() + timeout(5)
    while "127.0.0.1" in hub.server.registry.pending.by_key:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    reader, writer = await sockets(hub.port)
    writer.write(HEALTHZ)
    assert statuses(await read_response(reader)) == [200]


@HTTP_TIMERS
async def test_node_cap_counts_every_address(hub_factory: Any, sockets: Any) -> None:
    hub: RunningHub = await hub_factory(
        limits={"max_pending_connections": 12, "handshake_timeout": 30}
    )
    for n in range(12):
        _, writer = await sockets(hub.port, f"127.0.0.{2 + n % 4}")
        writer.write(b"GET / HTTP/1.1\r\n")
    reader, _ = await sockets(hub.port, "127.0.0.9")
    assert statuses(await until_closed(reader)) == [503]


@HTTP_TIMERS
async def test_streams_and_long_polls_are_sessions_not_pending(
    hub_factory: Any, sockets: Any
) -> None:
    hub: RunningHub = await hub_factory(limits={"max_pending_connections_per_ip": 3})
    streams = []
    pending = hub.server.registry.pending
    for n in range(6):
        reader, writer = await sockets(hub.port)
        path = f"/sse?channel=c{n}" if n % 2 else f"/poll?channel=c{n}&timeout=30"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        streams.append(reader)
        deadline = time.monotonic() + timeout(5)
        while pending.total:  # being answered: no longer waiting on its client
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    await asyncio.wait_for(streams[1].readuntil(b"\r\n\r\n"), timeout(5))  # an SSE head
    reader, writer = await sockets(hub.port)
    writer.write(HEALTHZ)
    assert statuses(await read_response(reader)) == [200]


def _low_descriptor_limit() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@clarion_server("a `clarion serve` process with a low descriptor limit")
async def test_descriptor_limit_refuses_and_logs_instead_of_emfile(sockets: Any) -> None:
    """The attack, scaled to a process allowed 256 descriptors: 100 are kept in
    reserve, and one address may hold half of the other 156 waiting on their client. Its
    flood is refused beyond 78 while another address is served; a flood from many addresses
    is refused beyond 156; both are logged; once they end, everyone is served again."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clarion.cli",
        "serve",
        "--port",
        "0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_low_descriptor_limit,
        env={**os.environ, "CLARION_LIMITS__HANDSHAKE_TIMEOUT": "60"},
    )
    assert proc.stderr is not None
    log: list[str] = []

    async def log_line(text: str) -> None:
        while not any(text in line for line in log):
            log.append((await asyncio.wait_for(proc.stderr.readline(), timeout(5))).decode())

    async def flood(sources: list[str]) -> tuple[list[Stream], int]:
        held = [await sockets(port, source) for source in sources]

        async def answer(reader: asyncio.StreamReader) -> bytes:
            try:
                return await asyncio.wait_for(reader.read(64), timeout(1))
            except TimeoutError:
                return b""  # held: a head is awaited from it

        answers = await asyncio.gather(*(answer(reader) for reader, _ in held))
        return held, sum(a.startswith(b"HTTP/1.1 503") for a in answers)

    async def healthz(source: str) -> int:
        reader, writer = await sockets(port, source)
        writer.write(HEALTHZ)
        status = statuses(await read_response(reader))[0]
        writer.close()
        return status

    try:
        port = 0
        while not port:
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout(20))).decode()
            assert line, "".join(log)
            log.append(line)
            if "listening on http://" in line:
                port = int(line.rsplit(":", 1)[1])
        assert any("at most 78 per address" in line for line in log), log
        # Many addresses: refused beyond the descriptor budget, and said so.
        held, refused = await flood([f"127.0.0.{2 + n % 8}" for n in range(200)])
        assert refused == 200 - 156
        await log_line("near its file descriptor limit (156 connections)")
        for _, writer in held:
            writer.close()
        # A round trip after the closes: the hub has seen them by the time it answers.
        while await healthz("127.0.0.20") != 200:
            await asyncio.sleep(0.1)
        # One address: refused beyond its half, while another address is served.
        held, refused = await flood(["127.0.0.1"] * 200)
        assert refused == 200 - 78
        assert await healthz("127.0.0.2") == 200
        await log_line("the last from 127.0.0.1, which holds 78 (its cap)")
    finally:
        proc.kill()
        await proc.wait()


@HTTP_TIMERS
async def test_a_refused_connection_is_cheap(hub_factory: Any) -> None:
    """Refusals cost the hub one write and a close: a burst of them leaves nothing behind."""
    hub: RunningHub = await hub_factory(
        limits={"max_pending_connections_per_ip": 1, "handshake_timeout": 30}
    )
    registry = hub.server.registry
    keep = socket.create_connection(("127.0.0.1", hub.port))
    try:
        deadline = time.monotonic() + timeout(5)
        while not registry.pending.total:  # accepted: it holds the one slot
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            assert statuses(await until_closed(reader)) == [503]
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.05)
        assert registry.pending.total == 1
        assert len(registry.connections) == 1
    finally:
        keep.close()


@HTTP_TIMERS
async def test_responses_nobody_reads_count_under_their_address_s_cap(
    hub_factory: Any, sockets: Any
) -> None:
    """A connection whose client reads nothing of its response waits on that client, like one
    that sends nothing: it counts under the address's cap. Uncounted, one address held 8,000
    of them (and their buffers) until send_timeout."""
    cap = 5
    hub: RunningHub = await hub_factory(limits={"max_pending_connections_per_ip": cap})
    small_send_buffers(hub.server.sockets[0])
    loop = asyncio.get_running_loop()
    stalled: list[socket.socket] = []
    try:
        for _ in range(cap):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            stalled.append(sock)
            await loop.sock_connect(sock, ("127.0.0.1", hub.port))
            await loop.sock_sendall(sock, b"GET /clarion.js HTTP/1.1\r\nHost: h\r\n\r\n" * 50)
        pending = hub.server.registry.pending
        deadline = time.monotonic() + timeout(10)
        while pending.by_key.get("127.0.0.1", 0) < cap:
            assert time.monotonic() < deadline, pending.by_key
            await asyncio.sleep(0.02)
        reader, _ = await sockets(hub.port)
        assert statuses(await until_closed(reader)) == [503]
        reader, writer = await sockets(hub.port, "127.0.0.2")
        writer.write(HEALTHZ)
        assert statuses(await read_response(reader)) == [200]
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("kind", SERVERS)
async def test_stomp_sockets_before_connect_count_per_address(kind: str) -> None:
    async with serve(kind, limits={"max_pending_connections_per_ip": 3}) as running:
        hub = running.hub
        held = [await open_raw(running.port, "/stomp", "v12.stomp") for _ in range(3)]
        try:
            refused = await open_raw(running.port, "/stomp", "v12.stomp")
            opcode, frame = await asyncio.wait_for(refused.read_frame(), timeout(5))
            assert frame.startswith(b"ERROR\n") and b"x-close-code:4503" in frame
            opcode, payload = await asyncio.wait_for(refused.read_frame(), timeout(5))
            assert (opcode, int.from_bytes(payload[:2], "big")) == (CLOSE, 4503)
            refused.close()
            # Another address is not affected.
            other = await open_raw(running.port, "/stomp", "v12.stomp", "127.0.0.2")
            other.close()
            # CONNECT turns a pending socket into a session (counted as such): a slot frees.
            held[0].writer.write(masked(TEXT, STOMP_CONNECT))
            opcode, frame = await asyncio.wait_for(held[0].read_frame(), timeout(5))
            assert frame.startswith(b"CONNECTED\n")
            assert hub.pending.by_key == {"127.0.0.1": 2}
            fresh = await open_raw(running.port, "/stomp", "v12.stomp")
            fresh.writer.write(masked(TEXT, STOMP_CONNECT))
            opcode, frame = await asyncio.wait_for(fresh.read_frame(), timeout(5))
            assert frame.startswith(b"CONNECTED\n")
            fresh.close()
        finally:
            for ws in held:
                ws.close()
        deadline = time.monotonic() + timeout(5)
        while hub.pending.total:  # every socket gone: nothing left counted
            assert time.monotonic() < deadline, hub.pending.by_key
            await asyncio.sleep(0.02)


@HTTP_TIMERS
async def test_a_response_nobody_reads_is_cut(hub_factory: Any) -> None:
    """Pipelined requests whose responses are never read: once the buffers are full the
    connection waits on its client again, and send_timeout ends it."""
    hub: RunningHub = await hub_factory(limits={"send_timeout": 0.5})
    small_send_buffers(hub.server.sockets[0])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", hub.port))
    try:
        await loop.sock_sendall(sock, b"GET /clarion.js HTTP/1.1\r\nHost: h\r\n\r\n" * 100)
        registry = hub.server.registry
        deadline = time.monotonic() + timeout(10)
        while registry.connections:
            assert time.monotonic() < deadline, "the stalled response was not cut"
            await asyncio.sleep(0.05)
        assert not registry.tasks or all(task.done() for task in registry.tasks)
    finally:
        sock.close()


@pytest.mark.parametrize("kind", SERVERS)
async def test_ws_sockets_before_their_session_count_per_address(kind: str) -> None:
    """A connect hook that takes its time: the /ws sockets waiting for it have no session
    yet, and count against the same per-address cap as STOMP sockets before CONNECT."""
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(  # a backend that accepts and never answers
        lambda reader, writer: accepted.append(writer), "127.0.0.1", 0
    )
    url = f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}/hook"
    settings: dict[str, Any] = {
        "token_secret": SECRET,
        "api_key": "k",
        "hooks": {"connect_url": url, "secret": generate_secret(), "timeout": 30},
        "limits": {"max_pending_connections_per_ip": 2},
    }
    path = "/ws?token=" + mint_token(SECRET, "u", ["chat:*"])
    try:
        async with serve(kind, **settings) as running:
            hub = running.hub
            held = [await open_raw(running.port, path, "clarion.v1") for _ in range(2)]
            deadline = time.monotonic() + timeout(5)
            while hub.pending.total < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            refused = await open_raw(running.port, path, "clarion.v1")
            while True:
                opcode, payload = await asyncio.wait_for(refused.read_frame(), timeout(5))
                if opcode == CLOSE:
                    break
            assert int.from_bytes(payload[:2], "big") == 4503
            refused.close()
            assert hub.pending.by_key == {"127.0.0.1": 2}
            for ws in held:
                ws.close()
            for writer in accepted:  # the hook fails: the hub gives up on those sockets
                writer.close()
            deadline = time.monotonic() + timeout(5)
            while hub.pending.total:  # nothing left counted
                assert time.monotonic() < deadline, hub.pending.by_key
                await asyncio.sleep(0.02)
    finally:
        for writer in accepted:
            writer.close()
        silent.close()


# What a client sends before the hub stalls, and what it sends during the stall: a request
# whose head, body or arrival on a kept-alive connection is due when the hub runs again.
BODY = b'{"channel": "chat:x", "data": 1}'
STALLED = {
    "idle": (HEALTHZ, HEALTHZ, "KEEPALIVE"),
    "head": (b"GET /healthz HTTP/1.1\r\n", b"Host: h\r\n\r\n", "HANDSHAKE"),
    "body": (
        PUBLISH + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY[:10]),
        BODY[10:],
        "BODY",
    ),
}


@clarion_server("a `clarion serve` process, stopped and resumed")
@pytest.mark.parametrize("state", list(STALLED))
async def test_what_came_while_the_hub_was_stalled_is_read_before_its_timer_decides(
    hub_process: Any, sockets: Any, state: str
) -> None:
    """A connection's timer ran out while the hub's process could not run (stopped, or starved
    of CPU on a busy machine), and its client had sent what the timer waited for meanwhile.
    The event loop runs due timers before it reads: the connection was closed with the bytes
    unread, and its client saw a reset, as if the hub had dropped a request sent in time."""
    before, during, timer = STALLED[state]
    hub = await hub_process(env={f"CLARION_LIMITS__{timer}_TIMEOUT": "1"})
    reader, writer = await sockets(hub.port)
    if state == "idle":
        writer.write(HEALTHZ)
        assert statuses(await read_response(reader)) == [200]
    else:
        writer.write(before)
        await asyncio.sleep(0.05)
    os.kill(hub.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.3)
        writer.write(during)  # well within the timer
        await asyncio.sleep(1.5)  # the timer is due when the hub runs again
    finally:
        os.kill(hub.proc.pid, signal.SIGCONT)
    assert statuses(await read_response(reader)) == [200]


@clarion_server("a `clarion serve` process, stopped and resumed")
async def test_a_response_read_while_the_hub_was_stalled_is_not_cut(hub_process: Any) -> None:
    """The send timer of a response its client did not read ran out while the hub's process
    could not run, and the client had read meanwhile. The event loop runs due timers before it
    looks at its sockets: the connection was reset as one whose client reads nothing."""
    hub = await hub_process(env={"CLARION_LIMITS__SEND_TIMEOUT": "1"})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", hub.port))
    count = 100
    got = bytearray()

    async def read_for(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while chunk := await loop.sock_recv(sock, 65536):
                    got.extend(chunk)

    try:
        await loop.sock_sendall(sock, b"GET /clarion.js HTTP/1.1\r\nHost: h\r\n\r\n" * count)
        await asyncio.sleep(0.3)  # the buffers are full: the hub waits on its client
        os.kill(hub.proc.pid, signal.SIGSTOP)
        try:
            await read_for(2.0)  # the client reads, past the send timer, while the hub is out
        finally:
            os.kill(hub.proc.pid, signal.SIGCONT)
        await read_for(timeout(10))
        assert got.count(b"HTTP/1.1 200 ") == count
    finally:
        sock.close()


@HTTP_TIMERS
async def test_bytes_left_unread_for_good_buy_a_timer_no_more_time(hub_factory: Any) -> None:
    """A timer that finds its client's bytes unread looks again once the loop has read them
    (they may have come while the hub could not run). Bytes that stay unread for good (a
    malformed request pipelined behind a stream: reading stops there) made it look again every
    50 ms for as long as the stream lasted, and never close the connection: work for nothing,
    a core's worth from a few addresses. It looks once, then decides."""
    hub: RunningHub = await hub_factory(limits={"handshake_timeout": 1.0})
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", hub.port))
    sock.setblocking(False)
    try:
        stream = b"GET /sse?channel=chat:a HTTP/1.1\r\nHost: h\r\n\r\n"
        await loop.sock_sendall(sock, stream + b"GET /x HTTP/1.1\r\nHost: h\r\n")
        await asyncio.sleep(0.2)
        await loop.sock_sendall(sock, b"\x00\x01 bad\r\n\r\n")  # fails to parse: reading stops
        await asyncio.sleep(0.2)
        await loop.sock_sendall(sock, b"more bytes")  # unread for good
        # Closed at the head's deadline (reset: what it sent is still unread), not kept.
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(timeout(5)):
                while await loop.sock_recv(sock, 65536):
                    pass
        assert not hub.server.registry.connections
    finally:
        sock.close()
