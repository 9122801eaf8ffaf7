"""The publish path's cost in one process: hub, server and client on one event loop.

``clarion serve``'s server and hub run in this process on loopback, with ``--subscribers``
WebSocket subscribers on each of ``--channels`` channels (one by default) and ``--connections``
keep-alive HTTP connections that each publish to the next channel in turn, one request in
flight. Every request is the whole publish path: HTTP parsing, the ASGI app, JSON, the history
append, the cursor, the frame, the reply and the writes to the subscribers.

It prints the process CPU per publication. That figure includes this file's client (the same
for every tree measured), and on a shared machine it varies from run to run; for a figure that
does not, count instructions, with callgrind counting only while publications are made::

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=cg.out \\
        .venv/bin/python -m benchmarks.publish_cost --requests 1000 --callgrind
    grep ^summary: cg.out    # instructions; divide by --requests

(user space only: the kernel's part of the syscalls is not counted.) With ``--channels 1
--subscribers 1000`` the same count is the fan-out's: one publication, a thousand deliveries.

``--batch N`` sends the publications ``N`` to a request, to ``POST /api/publish_batch``, each
to the next channel in turn (``--requests`` still counts publications, and every figure is per
publication).

``--client-process`` runs the client (publishers and subscribers) in a process of its own,
started with ``exec``, which valgrind does not follow: the count is then the server's alone —
the hub, its event loop and its reads and writes — without the client's share (about 15 % of
the in-process count).

``--bytecodes N`` counts the bytecodes the server runs per publication, by function (the
client in its own process), and prints the N functions that run most: exact, and as repeatable
as the instruction count, without valgrind::

    .venv/bin/python -m benchmarks.publish_cost --requests 3000 --channels 50 --bytecodes 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from benchmarks.loadgen import make_payload, mask_frame, subscribe_op, ws_upgrade_request


class _Reader(asyncio.Protocol):
    """A client connection: counts response ends (publisher) or bytes (subscriber)."""

    def __init__(self, done: Any = None) -> None:
        self.done = done
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.frames = 0
        self.replied = False
        self.opened = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.opened.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.done is None:
            if self.replied:  # a publication frame carries its offset once
                self.frames += data.count(b'"offset":')
            elif b'"id":1' in data:  # the subscribe reply: the subscription is live
                self.replied = True
        else:
            # One reply per request, its body as long as its Content-Length says.
            self.buf += data
            while (head := self.buf.find(b"\r\n\r\n")) >= 0:
                length = _CONTENT_LENGTH.search(self.buf, 0, head)
                assert length is not None, self.buf[:head]
                end = head + 4 + int(length[1])
                if len(self.buf) < end:
                    break
                reply, self.buf = self.buf[:end], self.buf[end:]
                self.done(self, reply)


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def _callgrind(state: str) -> None:
    """Turn callgrind's instrumentation of this process on or off (it waits for the answer)."""
    subprocess.run(
        ["callgrind_control", "-i", state, str(os.getpid())], check=True, capture_output=True
    )


class _Bytecodes:
    """Counts the bytecodes this thread runs, by function, while on (``sys.settrace`` with
    opcode events: slow, but exact and the same on a busy machine)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def on(self) -> None:
        sys.settrace(self._call)

    def off(self) -> None:
        sys.settrace(None)

    def _call(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self._op

    def _op(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            where = code.co_filename.rpartition("/clarion/")[2] or code.co_filename
            self.counts[f"{where}:{code.co_name}"] += 1
        return self._op


async def run(
    requests: int,
    channels: int,
    connections: int,
    callgrind: bool = False,
    subscribers: int = 1,
    client_process: bool = False,
    bytecodes: _Bytecodes | None = None,
    batch: int = 0,
) -> dict[str, Any]:
    from clarion.core.hub import Hub
    from clarion.settings import Limits, Settings
    from clarion.standalone import make_server

    # The subscribers answer no pings: however slow the run (under valgrind), none is sent.
    hub = Hub(Settings(limits=Limits(ping_interval=86400)))
    server = make_server(hub, port=0)
    await server.start()
    counting = [time.process_time(), time.monotonic()]
    faults = [0]  # the process's minor page faults (memory the kernel hands the allocator)

    async def start() -> None:
        if callgrind:
            _callgrind("on")
        counting[:] = [time.process_time(), time.monotonic()]
        faults[0] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if bytecodes is not None:
            bytecodes.on()

    async def stop() -> None:
        if bytecodes is not None:
            bytecodes.off()
        counting[:] = [time.process_time() - counting[0], time.monotonic() - counting[1]]
        faults[0] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults[0]
        if callgrind:
            _callgrind("off")

    # The same client either way; in its own process, valgrind does not count it.
    run = _client_process if client_process else client
    delivered = await run(
        server.port, requests, channels, connections, subscribers, start, stop, batch
    )
    await server.shutdown(5.0)
    cpu, wall = counting
    return {
        "requests": requests,
        "channels": channels,
        "connections": connections,
        "subscribers": subscribers,
        "batch": batch,
        "client_process": client_process,
        "cpu_us_per_publication": round(1e6 * cpu / requests, 1),
        "publications_per_s": round(requests / wall),
        "minor_faults_per_publication": round(faults[0] / requests, 3),
        "delivered": delivered,
    }


async def client(
    port: int,
    requests: int,
    channels: int,
    connections: int,
    subscribers: int,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    batch: int = 0,
) -> int:
    """Subscribe, then publish ``requests`` publications (``batch`` to a request, if given);
    ``start`` and ``stop`` are called around the publishing (until every frame reached its
    subscriber). The frames delivered."""
    loop = asyncio.get_running_loop()
    subs: list[_Reader] = []
    for k in range(channels * subscribers):
        _, sub = await loop.create_connection(_Reader, "127.0.0.1", port)
        assert sub.transport is not None
        sub.transport.write(ws_upgrade_request("127.0.0.1", port, "/ws", "clarion.v1"))
        sub.transport.write(mask_frame(subscribe_op(channel=f"bench{k % channels}")))
        subs.append(sub)
    while not all(s.replied for s in subs):
        await asyncio.sleep(0.01)

    sent = answered = 0
    finished = loop.create_future()

    per_request = batch or 1

    def item() -> bytes:
        nonlocal sent
        sent += 1
        return b'{"channel":"bench%d","data":%s}' % (sent % channels, make_payload(sent, 100))

    def post(conn: _Reader) -> None:
        if batch:
            path = b"/api/publish_batch"
            body = b'{"publications":[%s]}' % b",".join(item() for _ in range(batch))
        else:
            path, body = b"/api/publish", item()
        assert conn.transport is not None
        conn.transport.write(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
        )

    def done(conn: _Reader, reply: bytes) -> None:
        nonlocal answered
        if b'"error"' in reply:  # a refused publication would leave its subscriber waiting
            if not finished.done():
                finished.set_exception(RuntimeError(f"the hub refused: {reply[-300:]!r}"))
            return
        answered += per_request
        if sent < requests:
            post(conn)
        elif answered == requests and not finished.done():
            finished.set_result(None)

    pubs = []
    for _ in range(connections):
        _, pub = await loop.create_connection(lambda: _Reader(done), "127.0.0.1", port)
        pubs.append(pub)
    await start()
    for pub in pubs[: requests // per_request]:
        post(pub)
    await finished
    deadline = time.monotonic() + 600
    while sum(s.frames for s in subs) < requests * subscribers and time.monotonic() < deadline:
        await asyncio.sleep(0.005)  # every frame written reaches its subscriber
    await stop()
    for conn in pubs + subs:
        assert conn.transport is not None
        conn.transport.close()
    return sum(s.frames for s in subs)


async def _client_process(
    port: int,
    requests: int,
    channels: int,
    connections: int,
    subscribers: int,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    batch: int = 0,
) -> int:
    """:func:`client` in a process of its own (not traced by valgrind, which follows no
    ``exec``): what is counted in this one is then the server alone."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.publish_cost",
        "--client-of",
        str(port),
        "--requests",
        str(requests),
        "--channels",
        str(channels),
        "--connections",
        str(connections),
        "--subscribers",
        str(subscribers),
        "--batch",
        str(batch),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    await start()
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    assert await proc.stdout.readline() == b"done\n"
    await stop()
    # Only now may the client close its connections: their ends are not the publishing's.
    proc.stdin.write(b"stopped\n")
    await proc.stdin.drain()
    delivered = int(await proc.stdout.readline())
    await proc.wait()
    return delivered


async def _client_of(
    port: int, requests: int, channels: int, connections: int, subs: int, batch: int
) -> int:
    """The client process: says ``ready`` once subscribed, publishes on ``go``, says ``done``
    and closes its connections on ``stopped`` (once the server stopped counting)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def start() -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await reader.readline()

    async def stop() -> None:
        sys.stdout.write("done\n")
        sys.stdout.flush()
        await reader.readline()

    delivered = await client(port, requests, channels, connections, subs, start, stop, batch)
    sys.stdout.write(f"{delivered}\n")
    sys.stdout.flush()
    return delivered


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--subscribers", type=int, default=1, help="WebSocket subscribers per channel")
    p.add_argument("--connections", type=int, default=16, help="publishing HTTP connections")
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="under valgrind --tool=callgrind --instr-atstart=no: count only the publishing",
    )
    p.add_argument(
        "--client-process",
        action="store_true",
        help="run the client in a process of its own: what is counted is the server alone",
    )
    p.add_argument(
        "--bytecodes",
        type=int,
        metavar="N",
        help="count the bytecodes the server runs per publication, and print the N functions "
        "that run most (implies --client-process; the CPU figure is then meaningless)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=0,
        metavar="N",
        help="N publications per request, to POST /api/publish_batch (--requests a multiple of N)",
    )
    p.add_argument("--client-of", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.batch < 0 or a.batch > 1000 or (a.batch and a.requests % a.batch):
        p.error("--batch takes 1 to 1000, and --requests must be a multiple of it")
    if a.client_of is not None:
        work: Any = _client_of(
            a.client_of, a.requests, a.channels, a.connections, a.subscribers, a.batch
        )
    else:
        counter = _Bytecodes() if a.bytecodes else None
        work = run(
            a.requests,
            a.channels,
            a.connections,
            a.callgrind,
            a.subscribers,
            a.client_process or counter is not None,
            counter,
            a.batch,
        )
    try:
        import uvloop

        result = uvloop.run(work)
    except ImportError:  # pragma: no cover - uvloop is a clarion dependency on Linux
        result = asyncio.run(work)
    if a.client_of is None:
        sys.stdout.write(json.dumps(result) + "\n")
    if a.bytecodes and counter is not None:
        total = sum(counter.counts.values())
        sys.stdout.write(f"bytecodes per publication: {total / a.requests:.0f}\n")
        for where, count in counter.counts.most_common(a.bytecodes):
            sys.stdout.write(f"{count / a.requests:8.1f}  {where}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
