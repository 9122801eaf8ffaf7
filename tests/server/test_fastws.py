"""The ``clarion.fast_websocket`` extension: pushed frames, coalesced writes, the send limit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import ssl
import struct
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from clarion.core.limits import LogLimit
from clarion.protocol.frames import text_frame
from clarion.server import FAST_WEBSOCKET_EXTENSION, Server, fastws, flusher
from clarion.server.fastws import Outbox

from ..conftest import until
from .conftest import BUILT, LOOPS, RING, on_both_loops
from .helpers import TIMEOUT
from .test_websocket import closed, open_ws, recv


@pytest.fixture(params=LOOPS)
def start_server(request: Any, start_server: Any) -> Any:
    """Every test here runs on the compiled loops, with their sends batched through io_uring
    (where the kernel allows it) and one by one, and on the Python ones they fall back to."""
    return on_both_loops(request, start_server, "the compiled loops")


class CountingTransport:
    """Wraps a connection's transport to count the writes the server makes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def fast(scope: Any) -> Any:
    return scope["extensions"][FAST_WEBSOCKET_EXTENSION]["connection"]


async def accept(scope: Any, receive: Any, send: Any) -> Any:
    if scope["type"] != "websocket":
        raise RuntimeError("websocket only")
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    return fast(scope)


async def drain_until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_frames_pushed_in_one_iteration_go_out_in_one_write(start_server: Any) -> None:
    counted: list[CountingTransport] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        await asyncio.sleep(0.01)  # let the handshake response go out on its own
        conn.transport = counting = CountingTransport(conn.transport)
        counted.append(counting)
        for i in range(1000):  # no await in between: one loop iteration
            conn.push(text_frame(b"%d" % i))
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with open_ws(server.port) as ws:
        got = [await recv(ws) for _ in range(1000)]
        writes = list(counted[0].writes)
    assert got == [str(i) for i in range(1000)]
    # A thousand frames, one coalesced write.
    assert writes == [sum(len(text_frame(b"%d" % i)) for i in range(1000))]


async def test_push_and_websocket_send_keep_their_order(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        await send({"type": "websocket.send", "text": "1"})
        conn.push_text(b"2")
        await send({"type": "websocket.send", "text": "3"})
        conn.push(text_frame(b"4"))
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with open_ws(server.port) as ws:
        assert [await recv(ws) for _ in range(4)] == ["1", "2", "3", "4"]


async def test_close_sends_queued_frames_first(start_server: Any) -> None:
    states: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        states.append(conn.closed)
        conn.push_text(b"a")
        conn.push_text(b"b")
        conn.close(4001, "slow")
        states.append(conn.closed)
        conn.push_text(b"dropped")  # after close: ignored, never on the wire
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with open_ws(server.port) as ws:
        assert [await recv(ws), await recv(ws)] == ["a", "b"]
        assert await closed(ws) == (4001, "slow")
    assert states == [False, True]


async def test_ping_and_last_activity(start_server: Any) -> None:
    result: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        before = conn.last_activity
        assert before <= time.monotonic()
        await asyncio.sleep(0.05)
        conn.ping()  # the client's pong is activity
        for _ in range(100):
            if conn.last_activity > before:
                break
            await asyncio.sleep(0.01)
        result.set_result((before, conn.last_activity))
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with open_ws(server.port) as ws:
        before, after = await asyncio.wait_for(result, TIMEOUT)
        assert ws.state.name == "OPEN"
    assert after - before >= 0.04


async def test_buffered_bytes_counts_what_is_not_yet_written(start_server: Any) -> None:
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        await asyncio.sleep(0.01)
        frame = text_frame(b"x" * 100)
        conn.push(frame)
        seen.append(conn.buffered_bytes)
        await asyncio.sleep(0.01)  # flushed, and the client reads
        seen.append(conn.buffered_bytes)
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with open_ws(server.port) as ws:
        assert await recv(ws) == "x" * 100
        await asyncio.sleep(0.05)
    assert seen == [102, 0]


async def slow_reader(port: int, path: str = "/slow") -> socket.socket:
    """A client that completes the handshake and then never reads again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(
        sock,
        b"GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % path.encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 1), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


async def test_send_limit_overflow_closes_a_slow_reader_only(start_server: Any) -> None:
    overflows: list[str] = []
    slow_conns: list[Any] = []
    payload = text_frame(b"p" * 65536)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        if scope["path"] == "/slow":
            slow_conns.append(conn)

            def on_overflow() -> None:
                overflows.append(scope["path"])
                conn.close(4001, "slow")

            conn.set_send_limit(256 * 1024, on_overflow)
            deadline = time.monotonic() + 3
            while not conn.closed and time.monotonic() < deadline:
                for _ in range(4):
                    conn.push(payload)
                assert conn.buffered_bytes < 4 * 1024 * 1024 + 5 * len(payload)
                await asyncio.sleep(0.001)
        else:
            counter = 0
            while not conn.closed:
                conn.push_text(b"%d" % counter)
                counter += 1
                await asyncio.sleep(0.002)
        await drain_until_disconnect(receive)

    server = await start_server(app, close_timeout=0.2)
    async with open_ws(server.port, "/fast") as ws:
        sock = await slow_reader(server.port)
        try:
            received = await keep_receiving(ws, until=lambda got: bool(overflows))
            assert overflows == ["/slow"]
            # The slow one is closed (aborted after close_timeout: it never reads the close).
            for _ in range(100):
                if slow_conns[0].transport.is_closing():
                    break
                await asyncio.sleep(0.01)
            assert slow_conns[0].transport.is_closing()
            # ...while the other connection kept, and keeps, receiving in order (counted, not
            # timed: a loaded machine pushes fewer per second).
            after = await keep_receiving(ws, until=lambda got: len(got) >= 20)
            assert len(after) >= 20
            received += after
            # The slow reader's socket really ends (reset): nothing queued trickles on.
            assert await socket_ends(sock, within=2.0)
        finally:
            sock.close()
    numbers = [int(text) for text in received]
    assert numbers == list(range(len(numbers)))
    assert overflows == ["/slow"]  # exactly once


async def keep_receiving(ws: ClientConnection, until: Any, duration: float = TIMEOUT) -> list[str]:
    """Messages received until ``until(received)`` holds or ``duration`` ends."""
    received: list[str] = []
    deadline = asyncio.get_running_loop().time() + duration
    while not until(received) and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TimeoutError):
            received.append(await asyncio.wait_for(ws.recv(), 0.05))
    return received


async def test_overflow_is_re_armed_and_bounded(start_server: Any) -> None:
    events: list[str] = []
    peak = 0
    limit = 128 * 1024
    payload = text_frame(b"p" * 16384)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal peak
        conn = await accept(scope, receive, send)
        conn.set_send_limit(limit, lambda: events.append("overflow"))
        deadline = time.monotonic() + 3
        while not conn.closed and time.monotonic() < deadline:
            if events == ["overflow"]:
                # What the hub's "conflate" policy does: stop, then watch again.
                events.append("re-armed")
                conn.set_send_limit(limit, lambda: events.append("overflow"))
            conn.push(payload)
            peak = max(peak, conn.buffered_bytes)
            await asyncio.sleep(0.001)
        events.append("closed" if conn.closed else "still open")
        await drain_until_disconnect(receive)

    server = await start_server(app, close_timeout=0.2)
    sock = await slow_reader(server.port)
    try:
        for _ in range(300):
            if events[-1:] in (["closed"], ["still open"]):
                break
            await asyncio.sleep(0.01)
    finally:
        sock.close()
    # Told twice; the app kept pushing regardless, so the server closed it at twice the limit.
    assert events == ["overflow", "re-armed", "overflow", "closed"]
    assert peak <= 2 * limit + len(payload)


async def test_pushes_past_twice_the_limit_are_dropped_before_the_app_is_told(
    start_server: Any,
) -> None:
    """The overflow callback runs soon after the overflow, not inside it; meanwhile the fan-out
    goes on pushing, but past twice the limit nothing more is taken, even within that loop,
    and a connection its app does not close is closed by the server."""
    events: list[str] = []
    peaks: list[int] = []
    limit = 64 * 1024
    payload = text_frame(b"p" * (limit // 4))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        conn.set_send_limit(limit, lambda: events.append("overflow"))
        for _ in range(100):  # one iteration: the app cannot be told in between
            conn.push_many([conn], payload)
            conn.push(payload)
            peaks.append(conn.buffered_bytes)
        assert conn.cut
        await asyncio.sleep(0.05)
        events.append("closed" if conn.closed else "open")
        await drain_until_disconnect(receive)

    server = await start_server(app, close_timeout=0.2)
    sock = await slow_reader(server.port)
    try:
        for _ in range(300):
            if events[-1:] in (["closed"], ["open"]):
                break
            await asyncio.sleep(0.01)
    finally:
        sock.close()
    assert events == ["overflow", "closed"]
    assert max(peaks) <= 2 * limit


async def test_every_push_counts_against_the_limit_whatever_the_connections_state(
    start_server: Any,
) -> None:
    """One running count per connection, kept by push and by the fan-out's loop alike, whatever
    each connection holds already: in one iteration (nothing written meanwhile), each takes
    frames until the next would pass twice its limit, then nothing more."""
    limit = 64 * 1024
    conns: list[Any] = []
    ready = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        conn.set_send_limit(limit, lambda: None)
        conns.append(conn)
        if len(conns) == 4:
            ready.set()
        await drain_until_disconnect(receive)

    server = await start_server(app, close_timeout=0.2)
    socks = [await slow_reader(server.port) for _ in range(4)]
    try:
        await asyncio.wait_for(ready.wait(), TIMEOUT)
        await asyncio.sleep(0.05)  # the handshakes are written
        model = [0, 0, 0, 0]  # the last two alike until the third's own pushes

        def pushed(i: int, frame: bytes) -> None:
            if model[i] >= 0 and model[i] + len(frame) <= 2 * limit:
                model[i] += len(frame)
            elif model[i] >= 0:
                model[i] = -model[i]  # cut: nothing more

        big, small, shared, tiny = (text_frame(b"b" * 60_000), text_frame(b"s" * 1000),
                                    text_frame(b"p" * 2000), text_frame(b"t" * 100))  # fmt: skip
        conns[0].push(big)
        pushed(0, big)
        conns[1].push(small)
        pushed(1, small)
        for i in range(70):  # each is cut, at its own point
            conns[0].push_many(conns, shared)
            for j in range(4):
                pushed(j, shared)
            if i % 7 == 0:
                conns[2].push(tiny)
                pushed(2, tiny)
        counts = [conn.buffered_bytes for conn in conns]
        cuts = [conn.cut for conn in conns]
    finally:
        for sock in socks:
            sock.close()
    assert counts == [abs(queued) for queued in model]
    assert cuts == [queued < 0 for queued in model] == [True] * 4
    assert max(counts) <= 2 * limit


async def socket_ends(sock: socket.socket, within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        try:
            if not await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 0.5):
                return True
        except TimeoutError:
            continue
        except OSError:  # reset
            return True
    return False


class Listener:
    """An app that accepts, hands the connection a handler (``listen``) and returns."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.messages: list[Any] = []
        self.returned = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.fail_on = fail_on
        self.conn: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.conn = await accept(scope, receive, send)
        self.conn.listen(self.on_message)
        self.returned.set()

    async def on_message(self, message: Any) -> None:
        self.messages.append(message)
        if message["type"] == "websocket.disconnect":
            self.disconnected.set()
            return
        text = message.get("text")
        if text == self.fail_on:
            raise ValueError("the handler failed")
        await asyncio.sleep(0.01)  # a handler that awaits: the next message waits for it
        self.conn.push_text(f"echo {text}".encode())


async def test_a_listening_connection_outlives_its_app_and_holds_no_task(
    start_server: Any,
) -> None:
    app = Listener()
    server = await start_server(app)
    async with open_ws(server.port) as ws:
        await asyncio.wait_for(app.returned.wait(), TIMEOUT)
        # The app's coroutine is over, the connection is open, and nothing waits on it.
        await asyncio.sleep(0.05)
        names = [task.get_name() for task in asyncio.all_tasks()]
        assert not [name for name in names if name.startswith("clarion-websocket")], names
        for i in range(3):  # sent at once: handed over in order, one at a time
            await ws.send(str(i))
        assert [await recv(ws) for _ in range(3)] == ["echo 0", "echo 1", "echo 2"]
    await asyncio.wait_for(app.disconnected.wait(), TIMEOUT)
    assert [m["type"] for m in app.messages] == ["websocket.receive"] * 3 + ["websocket.disconnect"]
    assert app.messages[-1]["code"] == 1000


async def test_a_failing_listener_closes_with_1011_and_still_hears_the_disconnect(
    start_server: Any,
) -> None:
    app = Listener(fail_on="boom")
    server = await start_server(app)
    async with open_ws(server.port) as ws:
        await ws.send("fine")
        assert await recv(ws) == "echo fine"
        await ws.send("boom")
        code, _ = await closed(ws)
    assert code == 1011
    await asyncio.wait_for(app.disconnected.wait(), TIMEOUT)


async def test_one_frame_to_many_connections_each_iteration(start_server: Any) -> None:
    """The fan-out's loop: one shared frame per iteration to every connection, in order."""
    conns: list[Any] = []
    clients = 20

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conns.append(await accept(scope, receive, send))
        if len(conns) == clients:
            await asyncio.sleep(0.01)
            for i in range(50):
                conns[0].push_many(conns, text_frame(b"%d" % i))
                if i % 2:  # half of them alone in their iteration, half two to a write
                    await asyncio.sleep(0)
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with contextlib.AsyncExitStack() as stack:
        wss = [await stack.enter_async_context(open_ws(server.port)) for _ in range(clients)]
        for ws in wss:
            assert [await recv(ws) for _ in range(50)] == [str(i) for i in range(50)]


async def test_a_reader_behind_gets_every_frame_in_order(start_server: Any) -> None:
    """More than the kernel takes at once: each write's rest waits in the transport, and
    what is pushed meanwhile goes behind it, never ahead."""
    count, size = 600, 16 * 1024  # ~10 MB, more than loopback's socket buffers hold
    pushed: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        conn.set_send_limit(64 * 1024 * 1024, lambda: None)
        for i in range(count):
            conn.push_many([conn], text_frame(b"%06d" % i + b"x" * size))
            if i % 3 == 0:
                await asyncio.sleep(0)
        pushed.append(conn.buffered_bytes)
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with open_ws(server.port, max_queue=1, max_size=None) as ws:
        for _ in range(500):  # the client reads nothing until everything was pushed
            if pushed:
                break
            await asyncio.sleep(0.01)
        assert pushed and pushed[0] > 0  # the writes did not all go through at once
        got = [(await recv(ws))[:6] for _ in range(count)]
    assert got == [f"{i:06d}" for i in range(count)]


async def test_readers_behind_in_one_flush_each_get_every_frame_in_order(
    start_server: Any,
) -> None:
    """Several connections' sends in one flush (one system call through io_uring), until
    their sockets take no more: every connection's rest waits in its own transport, and every
    frame arrives, in order, on each."""
    clients, count, size = 4, 600, 16 * 1024  # ~10 MB each, more than loopback's buffers hold
    conns: list[Any] = []
    pushed: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        conn.set_send_limit(64 * 1024 * 1024, lambda: None)
        conns.append(conn)
        if len(conns) == clients:
            for i in range(count):  # one frame per connection and flush: the ring's case
                conn.push_many(conns, text_frame(b"%06d" % i + b"x" * size))
                await asyncio.sleep(0)
            pushed.extend(c.buffered_bytes for c in conns)
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with contextlib.AsyncExitStack() as stack:
        wss = [
            await stack.enter_async_context(open_ws(server.port, max_queue=1, max_size=None))
            for _ in range(clients)
        ]
        await until(lambda: pushed)
        assert all(held > 0 for held in pushed)  # no send went through whole
        for ws in wss:
            got = [(await recv(ws))[:6] for _ in range(count)]
            assert got == [f"{i:06d}" for i in range(count)]


# A server of plain outboxes over loopback, in a process of its own: `deliver()` pushes 200
# frames to 8 connections, each iteration's sends in one flush, and checks what each client
# read; `rings()` counts the process's io_uring file descriptors.
RING_SCRIPT = """
import asyncio, os, socket
from clarion.protocol.frames import text_frame
from clarion.server import fastws
from clarion.server.fastws import Outbox

boxes = []

class Box(Outbox, asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.init_outbox(asyncio.get_running_loop(), 1 << 20)
        self.allow_direct_writes()
        boxes.append(self)
    def on_eof_flushed(self): pass
    def on_overflow_default(self): pass
    def on_hard_overflow(self): pass

def rings():
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]"
        except OSError:
            pass
    return found

async def serve():
    boxes.clear()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Box, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    while len(boxes) < 8:
        await asyncio.sleep(0.01)
    frames = [text_frame(b"frame %d" % i) for i in range(200)]
    for frame in frames:
        boxes[0].push_many(boxes, frame)
        await asyncio.sleep(0)
    want = b"".join(frames)
    for client in clients:
        client.settimeout(10)
        got = b""
        while len(got) < len(want):
            got += client.recv(65536)
        assert got == want
        client.close()
    server.close()

def deliver():
    asyncio.run(serve())
"""


@pytest.mark.skipif(not BUILT or RING != "", reason=f"no io_uring sends here: {RING}")
def test_a_forked_child_sends_through_a_ring_of_its_own() -> None:
    """A ring is one process's: a child forked after its parent opened one drops its copy and
    opens its own at its first flush, and both deliver every frame side by side."""
    code = RING_SCRIPT + (
        "assert fastws.use_compiled(True) and fastws.NO_RING == ''\n"
        "before = rings()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    inherited = rings()\n"
        "    deliver()\n"
        "    print('child', inherited, rings(), flush=True)\n"
        "    os._exit(0)\n"
        "deliver()\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print('parent', before, rings(), os.waitstatus_to_exitcode(status))\n"
    )
    said = sorted(run_python(code).splitlines())
    assert said == ["child 0 1", "parent 1 1 0"]


# A seccomp filter that refuses io_uring_setup (425 on every architecture) with EPERM, as
# container runtimes' default profiles do.
REFUSE_RING = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
filters = [
    struct.pack("HBBI", 0x20, 0, 0, 0),             # load the call's number
    struct.pack("HBBI", 0x15, 0, 1, 425),           # io_uring_setup?
    struct.pack("HBBI", 0x06, 0, 0, 0x00050000 | 1),  # refused: EPERM
    struct.pack("HBBI", 0x06, 0, 0, 0x7FFF0000),    # anything else: allowed
]
program = ctypes.create_string_buffer(b"".join(filters))

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

prog = Prog(len(filters), ctypes.addressof(program))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # seccomp filter
"""


@pytest.mark.skipif(not BUILT or not sys.platform.startswith("linux"), reason="Linux, compiled")
def test_where_io_uring_is_refused_the_flush_sends_one_by_one() -> None:
    """A process the kernel refuses io_uring (a container's seccomp profile): the ring says
    why, and every frame still goes out, one send per connection."""
    code = (
        REFUSE_RING
        + RING_SCRIPT
        + (
            "fastws.use_compiled(True)\n"
            "print(fastws.NO_RING)\n"
            "deliver()\n"
            "print('delivered', rings())\n"
        )
    )
    assert run_python(code).splitlines() == [
        "not allowed here: Operation not permitted",
        "delivered 0",
    ]


@pytest.mark.skipif(not BUILT, reason="clarion.server._fastloop is not built")
async def test_the_server_says_how_its_flush_sends(caplog: Any) -> None:
    """At start the server logs which way its frames go out: batched through io_uring, or
    one send per connection and why."""
    caplog.set_level(logging.INFO, logger="clarion.server")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    said = []
    for io_uring in (True, False):
        server = Server(app, host="127.0.0.1", port=0, io_uring=io_uring)
        await server.start()
        await server.shutdown(timeout=1.0)
        said += [r.getMessage() for r in caplog.records if "fan-out loops" in r.getMessage()]
        caplog.clear()
    ring = (
        "compiled, sends batched through io_uring"
        if RING == ""
        else (f"compiled, one send per connection (io_uring {RING})")
    )
    assert said == [
        f"fan-out loops: {ring}",
        "fan-out loops: compiled, one send per connection (io_uring switched off)",
    ]


def run_python(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (what it imports is its own)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_without_the_compiled_loops_the_python_ones_run() -> None:
    """Installed without a C compiler, the module is missing: the server runs on the Python
    loops, and says so."""
    code = (
        "import sys\n"
        "class NotBuilt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'clarion.server._fastloop':\n"
        "            raise ImportError('not built')\n"
        "sys.meta_path.insert(0, NotBuilt())\n"
        "from clarion.server import fastws\n"
        "print(fastws.use_compiled(True), fastws.push_many is fastws._push_many)\n"
    )
    assert run_python(code).split() == ["False", "True"]


def test_a_compiled_module_from_an_older_source_is_not_used() -> None:
    """An editable install not rebuilt since _fastloop.c changed holds a module without what
    this code calls: it is left unused, for the Python loops, and the reason says so."""
    code = (
        "import sys, types\n"
        "class Old:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'clarion.server._fastloop':\n"
        "            import importlib.machinery as m\n"
        "            return m.ModuleSpec(name, self)\n"
        "    def create_module(self, spec):\n"
        "        old = types.ModuleType(spec.name)\n"
        "        old.VERSION = 1\n"
        "        return old\n"
        "    def exec_module(self, module):\n"
        "        pass\n"
        "sys.meta_path.insert(0, Old())\n"
        "from clarion.server import fastws\n"
        "print(fastws.use_compiled(True), fastws.push_many is fastws._push_many)\n"
        "print(fastws.NOT_COMPILED)\n"
    )
    first, reason = run_python(code).splitlines()
    assert first.split() == ["False", "True"]
    assert reason == "built from an older source: reinstall clarion to rebuild them"


async def test_an_upgrade_behind_a_response_still_buffered_goes_out_after_it(
    start_server: Any,
) -> None:
    """An upgrade pipelined behind a large response is handed over while the response's tail
    still waits in the transport: the handshake and frames go behind it, never ahead."""
    body = b"b" * (16 * 1024 * 1024)  # more than loopback's socket buffers hold
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        # The client takes a little of the body now: its socket has room again, while the
        # transport still holds most of the body (the loop does not run in between).
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        while len(data) < 256 * 1024:
            data.extend(sock.recv(256 * 1024 - len(data)))
        sock.setblocking(False)
        received.append(len(data))
        conn = await accept(scope, receive, send)
        conn.push_text(b"after the body")
        await drain_until_disconnect(receive)

    received: list[int] = []
    data = bytearray()
    server = await start_server(app, send_limit=64 * 1024 * 1024)  # the order, not the budget
    try:
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(
            sock,
            b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        for _ in range(500):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received
        want = b"\x81\x0eafter the body"
        # Until the frame came last, or came and the rest too (then out of order).
        while not data.endswith(want) and not (want in data and len(data) > len(body) + 200):
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), TIMEOUT)
            assert chunk, bytes(data[-200:])
            data += chunk
    finally:
        sock.close()
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    # The whole body, then the handshake, then the frame.
    assert rest[: len(body)] == body
    assert rest[len(body) :].startswith(b"HTTP/1.1 101")
    assert rest.endswith(want)


async def test_a_peer_that_resets_mid_stream_ends_its_connection_only(
    start_server: Any, caplog: Any
) -> None:
    """Peers reset (RST) while frames are being written to them, partly taken: each connection
    ends and its app hears the disconnect, nothing is logged as a failure, and a connection
    beside them keeps its frames in order."""
    ended: list[str] = []
    frame = text_frame(b"r" * 4000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await accept(scope, receive, send)
        conn.set_send_limit(64 * 1024 * 1024, lambda: None)
        task = asyncio.current_task()
        assert task is not None
        if scope["path"] != "/fast":
            # /full fills the peer's buffers (the transport holds the rest), /idle does not
            # (each flush's send goes straight to the socket).
            pause = 0.0 if scope["path"] == "/full" else 0.002
            while not conn.closed and not conn.transport.is_closing():
                conn.push_many([conn], frame)
                conn.push_many([conn], frame)
                await asyncio.sleep(pause)
        else:
            counter = 0
            while not conn.closed:
                conn.push_text(b"%d" % counter)
                counter += 1
                await asyncio.sleep(0.002)
        await drain_until_disconnect(receive)
        ended.append(scope["path"])

    caplog.set_level(logging.WARNING)
    server = await start_server(app)
    resets = 10
    async with open_ws(server.port, "/fast") as ws:
        for i in range(resets):
            sock = await slow_reader(server.port, "/full" if i % 2 else "/idle")
            await asyncio.sleep(0.01)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST
        await until(lambda: len(ended) == resets)
        received = await keep_receiving(ws, until=lambda got: len(got) >= 20)
    numbers = [int(text) for text in received]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


class WriteFailed(RuntimeError):
    pass


class FailingTransport(CountingTransport):
    """A transport whose writes raise: what a broken connection's flush meets."""

    raised: weakref.WeakSet[WriteFailed] = weakref.WeakSet()

    def write(self, data: bytes) -> None:
        exc = WriteFailed("write failed")
        FailingTransport.raised.add(exc)
        raise exc


async def test_a_flush_that_raises_is_logged_and_the_others_go_on(
    start_server: Any, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One connection's failing write is logged; the connections flushed in the same pass
    still get their frames, and nothing of the failure stays referenced."""
    # Such lines are rate-limited per process: this test's own limit, not an earlier one's.
    monkeypatch.setattr(flusher, "_failures", LogLimit(flusher.log))
    conns: list[Any] = []
    rounds = 200

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conns.append(await accept(scope, receive, send))
        await drain_until_disconnect(receive)

    server = await start_server(app)
    async with open_ws(server.port) as first, open_ws(server.port) as second:
        await until(lambda: len(conns) == 2)
        broken, working = conns
        broken.transport = FailingTransport(broken.transport)
        caplog.set_level(logging.ERROR, logger="clarion.server.fastws")
        broken.push_many([broken, working], text_frame(b"0"))
        await until(lambda: caplog.records)
        record = caplog.records[0]
        assert record.getMessage() == "flushing a websocket connection failed"
        assert record.exc_info and record.exc_info[0] is WriteFailed
        del record
        # From here on no records (each would hold its exception): what stays is a leak.
        caplog.set_level(logging.CRITICAL, logger="clarion.server.fastws")
        FailingTransport.raised = weakref.WeakSet()
        gc.collect()
        before = sys.getrefcount(broken), sys.getrefcount(working)
        for i in range(1, rounds):
            broken.push_many([broken, working], text_frame(b"%d" % i))
            await asyncio.sleep(0)
        got = [await recv(second) for _ in range(rounds)]
        assert got == [str(i) for i in range(rounds)]
        del got
        gc.collect()
        assert len(FailingTransport.raised) == 0
        assert (sys.getrefcount(broken), sys.getrefcount(working)) == before
        broken.transport = broken.transport.inner
        del first


class PlainOutbox(Outbox, asyncio.Protocol):
    """An outbox on whatever transport a server hands it, as WebSocketProtocol sets one up."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.init_outbox(asyncio.get_running_loop(), 1 << 20)
        self.allow_direct_writes()
        made.append(self)

    def on_eof_flushed(self) -> None:
        return None

    def on_overflow_default(self) -> None:
        return None

    def on_hard_overflow(self) -> None:
        return None


made: list[PlainOutbox] = []


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
async def test_an_outbox_on_a_tls_transport_writes_through_it(
    tmp_path: Path, compiled: bool
) -> None:
    """The socket under a TLS transport carries records, not frames: the compiled flush must
    never write to it itself."""
    if compiled and not BUILT:
        pytest.skip("clarion.server._fastloop is not built (no C compiler at install)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=t",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(PlainOutbox, "127.0.0.1", 0, ssl=server_tls)
    made.clear()
    fastws.use_compiled(compiled)
    try:
        port = server.sockets[0].getsockname()[1]
        client_tls = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls)
        await until(lambda: made)
        box = made[0]
        frames = [text_frame(b"over tls %d" % i) for i in range(100)]
        for frame in frames:
            box.push_many([box], frame)
            await asyncio.sleep(0)
        got = await asyncio.wait_for(reader.readexactly(sum(map(len, frames))), TIMEOUT)
        assert got == b"".join(frames)
        writer.close()
    finally:
        fastws.use_compiled(True)
        server.close()
        await server.wait_closed()
