"""What a drop of every connection leaves for the garbage collector: objects in reference cycles.

    .venv/bin/python -m benchmarks.drop_garbage --connections 2000 [--engine redis] [--top 20]
        [--transport ws|sse|stomp|poll]

Starts ``clarion serve`` in a child process, opens ``--connections`` sessions of one transport
that each subscribe to one channel — WebSocket connections or event streams from
``benchmarks.loadgen``, STOMP connections, long polls waiting — then turns the hub's collector
off and drops every connection at once (RST), as P5 does. After the connections are open, and
again once the hub has ended the sessions, one ``gc.collect()`` in the hub counts the objects
that reference counting could not free in that phase (the collector is off from the warm-up
on) — those kept only by cycles, which the collector's passes otherwise find, at the cost of a
walk over every object the hub holds — and lists them by type, with how long that full
collection held the hub's loop. Zero per connection is the goal: what a connection's handshake
or a dead connection left is then freed the moment the hub lets go of it.

With ``--engine redis`` the hub runs on a ``redis-server`` started for the run (the release of
connection counts and presence entries is then on the drop's path too). Loopback only; every
process it starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets
from websockets.typing import Subprotocol

from benchmarks import servers as srv
from benchmarks.loadgen import LoadConfig, LoadGen, channel_name

_CHILD = r"""
import collections, gc, json, signal, sys, time
out = sys.argv[1]
count = 0
def dump(*_):
    global count
    count += 1
    started = time.perf_counter()
    found = gc.collect()
    pause_ms = (time.perf_counter() - started) * 1000
    kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    # Kept by DEBUG_SAVEALL, the cycles are still cycles: freed by a collection without it.
    debug = gc.get_debug()
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()
    gc.set_debug(debug)
    report = {"found": found, "objects": len(gc.get_objects()), "kinds": kinds.most_common(40),
              "pause_ms": pause_ms}
    if count == 1:  # warmed up: from here each phase's cycles are kept for its count
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
    elif count == 3:
        gc.set_debug(0)
        gc.enable()
    with open(f"{out}.{count}.json", "w") as f:
        json.dump(report, f)
signal.signal(signal.SIGUSR1, dump)
from clarion.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _signal(proc: subprocess.Popen[bytes], out: str, n: int, timeout: float = 120.0) -> dict:
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    path = Path(f"{out}.{n}.json")
    while not path.exists() or not path.stat().st_size:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the server did not count its garbage")
        time.sleep(0.1)
    time.sleep(0.05)
    return dict(json.loads(path.read_text()))


class _Sockets:
    """STOMP connections, or long polls left waiting: what ``LoadGen`` does for the others."""

    def __init__(self, port: int, transport: str, n: int) -> None:
        self.port, self.transport, self.n = port, transport, n
        self.aborts: list[asyncio.Transport] = []
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect_all(self, timeout: float) -> None:
        sem = asyncio.Semaphore(200)
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(self._one(i, sem) for i in range(self.n)))

    async def _one(self, i: int, sem: asyncio.Semaphore) -> None:
        async with sem:
            if self.transport == "stomp":
                conn = await websockets.connect(
                    f"ws://127.0.0.1:{self.port}/stomp", subprotocols=[Subprotocol("v12.stomp")]
                )
                await conn.send("CONNECT\naccept-version:1.2\nhost:hub\n\n\x00")
                await conn.recv()
                await conn.send(
                    f"SUBSCRIBE\nid:1\ndestination:/topic/{channel_name(i, 100)}\nreceipt:r\n\n\x00"
                )
                await conn.recv()
                self.aborts.append(conn.transport)
                return
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.streams.append((reader, writer))  # a stream writer let go closes its socket
            query = f"channel={channel_name(i, 100)}&timeout=60"
            writer.write(f"GET /poll?{query} HTTP/1.1\r\nhost: hub\r\n\r\n".encode())
            await writer.drain()
            self.aborts.append(writer.transport)  # type: ignore[arg-type]

    def close_all(self) -> None:
        for transport in self.aborts:
            transport.abort()


def _sessions(port: int) -> int:
    status, body = srv.http_get(port, "/metrics", timeout=5.0)
    if status != 200:
        return -1
    return sum(
        int(float(line.rpartition(" ")[2]))
        for line in body.decode().splitlines()
        if line.startswith("clarion_connections{")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--engine", choices=("memory", "redis"), default="memory")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--transport", choices=("ws", "sse", "stomp", "poll"), default="ws")
    a = p.parse_args(argv)
    srv.raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="clarion-drop-"))
    out = str(work / "gc")
    port = srv.free_port()
    # Every long poll checks its channel's position under one address's allowance.
    env = dict(os.environ, **srv.CLARION_ENV, CLARION_LIMITS__CLIENT_POLL_CHECK_BURST=str(1 << 40))
    redis = None
    if a.engine == "redis":
        redis = srv.start_redis(work, core=None)
        env["CLARION_ENGINE"] = f"redis://127.0.0.1:{redis.port}/0"
    cmd = [sys.executable, "-c", _CHILD, out]
    cmd += ["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    try:
        srv.wait_healthy(port, proc, 120)

        async def run() -> list[dict]:
            n = a.connections
            cfg = LoadConfig(port=port, mode="idle", subscribers=50, sample=0)
            warm = LoadGen(cfg)
            await warm.connect_all(60.0)
            warm.close_all()
            await asyncio.sleep(1.0)
            counts = [_signal(proc, out, 1)]
            gen: LoadGen | _Sockets
            if a.transport in ("ws", "sse"):
                cfg = LoadConfig(
                    port=port, mode="idle", subscribers=n, sample=0, transport=a.transport
                )
                gen = LoadGen(cfg)
            else:
                gen = _Sockets(port, a.transport, n)
            await gen.connect_all(120.0)
            end = time.monotonic() + 60
            while (opened := _sessions(port)) < n:
                if time.monotonic() > end:  # the long polls, until each waits
                    raise RuntimeError(f"{opened} of {n} sessions opened")
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            counts.append(_signal(proc, out, 2))
            gen.close_all()
            end = time.monotonic() + 60
            while _sessions(port) > 0 and time.monotonic() < end:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # the releases on Redis, after the sessions ended
            counts.append(_signal(proc, out, 3))
            return counts

        counts = asyncio.run(run())
        n = a.connections
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"connections: {n} ({a.transport}), engine {a.engine}, load average {load}")
        print(
            f"objects in the hub: {counts[1]['objects']:,} connected, "
            f"{counts[2]['objects']:,} after the drop and a collection "
            f"(before connecting: {counts[0]['objects']:,})"
        )
        for phase, count in (("the connections", counts[1]), ("the drop", counts[2])):
            print(
                f"freed only by the collector after {phase}: {count['found']:,} objects, "
                f"{count['found'] / n:.2f} per connection; that full collection took "
                f"{count['pause_ms']:.1f} ms"
            )
            for kind, k in count["kinds"][: a.top]:
                print(f"{k / n:8.2f}  {kind}")
    finally:
        srv.stop_process(proc)
        if redis is not None:
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
