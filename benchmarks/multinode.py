"""Deliveries per second through two Redis-engine nodes, against one memory-engine node.

Same run, same machine, same client::

    .venv/bin/python -m benchmarks.multinode --subscribers 400 --duration 8 --rounds 3

* **memory**: one ``clarion serve`` (memory engine); every subscriber and the publisher on it.
* **redis**: two ``clarion serve`` nodes on one ``redis-server`` (started here, on a free port,
  without persistence); subscribers split evenly between the nodes, publications alternate
  between the nodes' APIs, so half of them cross Redis twice (publish script, pub/sub).

Publishing is closed-loop: at most ``--window`` publications are in flight, counted against
a probe subscriber on each node, so neither setup is driven past what it delivers (queues
would grow and slow consumers be disconnected). Subscribers are raw asyncio WebSocket
clients in ``--client-processes`` processes that only walk frame headers to count messages,
so the client stays cheaper than the servers. The setups alternate for ``--rounds`` rounds;
prints one JSON line per measurement, then the medians and their ratio.
Every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

CHANNEL = "bench"
CLARION = str(Path(sys.executable).with_name("clarion"))
ENV = {
    "CLARION_LIMITS__MAX_CONNECTIONS_PER_IP": "100000",
    "CLARION_LIMITS__MAX_CONNECTIONS": "100000",
    "CLARION_NAMESPACES__DEFAULT__PRESENCE": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- a counting WebSocket subscriber ----------------------------------------------------------


def masked_text(payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + key + body


class Counter(asyncio.Protocol):
    """Counts server text frames by walking their headers; parses nothing else."""

    def __init__(self, port: int, ready: asyncio.Future[None], probe: bool = False) -> None:
        self.port = port
        self.ready = ready
        self.probe = probe
        self.frames = 0
        self.last_offset = 0
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: clarion.v1\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(bytes(buf[:200]).decode(errors="replace"))
            del buf[: end + 4]
            self.upgraded = True
            assert self.transport is not None
            op = {"id": 1, "op": "subscribe", "channel": CHANNEL}
            self.transport.write(masked_text(json.dumps(op).encode()))
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n - pos < head + length:
                break
            if buf[pos] & 0x0F == 1:
                self.frames += 1
                if self.frames == 1 and not self.ready.done():
                    self.ready.set_result(None)  # the subscribe reply
                elif self.probe:
                    payload = json.loads(bytes(buf[pos + head : pos + head + length]))
                    self.last_offset = payload.get("offset", self.last_offset)
            pos += head + length
        del buf[:pos]


async def _connect(port: int, probe: bool = False) -> Counter:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    _, proto = await loop.create_connection(lambda: Counter(port, ready, probe), "127.0.0.1", port)
    await asyncio.wait_for(ready, 30)
    return proto


def client_process(ports: Sequence[int], count: int, conn: Any) -> None:
    """Connect ``count`` subscribers across ``ports``; count frames in the window it is sent."""

    async def main() -> None:
        subs = await asyncio.gather(*(_connect(ports[i % len(ports)]) for i in range(count)))
        conn.send("ready")
        start_at, end_at = conn.recv()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        before = sum(s.frames for s in subs)
        await asyncio.sleep(max(0.0, end_at - time.time()))
        conn.send(sum(s.frames for s in subs) - before)

    asyncio.run(main())


# ---- processes --------------------------------------------------------------------------------


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix="clarion-bench-"))

    def spawn(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.dir / f"p{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_port(port: int, path: str | None = "/healthz", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing healthy on port {port}")


def start_node(procs: Processes, engine: str) -> int:
    port = free_port()
    procs.spawn([CLARION, "serve", "--engine", engine, "--port", str(port)], ENV)
    wait_port(port)
    return port


# ---- one measurement --------------------------------------------------------------------------


async def measure(
    name: str, sub_ports: list[int], pub_ports: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    per_process = [args.subscribers // args.client_processes] * args.client_processes
    per_process[0] += args.subscribers - sum(per_process)
    ctx = mp.get_context("spawn")
    pipes, workers = [], []
    for count in per_process:
        parent, child = ctx.Pipe()
        worker = ctx.Process(target=client_process, args=(sub_ports, count, child))
        worker.start()
        pipes.append(parent)
        workers.append(worker)
    probes = [await _connect(port, probe=True) for port in sub_ports]
    loop = asyncio.get_running_loop()
    for pipe in pipes:
        await loop.run_in_executor(None, pipe.recv)
    t_start = time.time() + args.warmup
    t_end = t_start + args.duration
    for pipe in pipes:
        pipe.send((t_start, t_end))

    published = 0
    acked = 0
    stop = False

    async def publisher(i: int) -> None:
        nonlocal published, acked
        async with httpx.AsyncClient(timeout=10) as client:
            while not stop:
                # Closed loop: wait while every node's probe lags too far behind.
                while acked - min(p.last_offset for p in probes) >= args.window and not stop:
                    await asyncio.sleep(0.0005)
                port = pub_ports[published % len(pub_ports)]
                published += 1
                r = await client.post(
                    f"http://127.0.0.1:{port}/api/publish",
                    json={"channel": CHANNEL, "data": {"n": published, "pad": "x" * 64}},
                )
                if r.status_code == 200:
                    acked = max(acked, r.json()["offset"])

    tasks = [asyncio.create_task(publisher(i)) for i in range(args.window)]
    await asyncio.sleep(max(0.0, t_end - time.time()))
    counts = [await loop.run_in_executor(None, pipe.recv) for pipe in pipes]
    stop = True
    await asyncio.gather(*tasks)
    for worker in workers:
        worker.join(timeout=10)
        if worker.is_alive():
            worker.kill()
    for probe in probes:
        assert probe.transport is not None
        probe.transport.close()
    deliveries = sum(counts)
    return {
        "setup": "memory, 1 node" if name == "memory" else "redis, 2 nodes",
        "subscribers": args.subscribers,
        "seconds": args.duration,
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / args.duration),
        "publications_per_s": round(deliveries / args.duration / args.subscribers, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=400)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per setup")
    args = parser.parse_args(argv)
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    procs = Processes()
    try:
        redis_port = free_port()
        # fmt: off
        procs.spawn([
            redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(procs.dir),
        ])
        # fmt: on
        wait_port(redis_port, None)
        engine = f"redis://127.0.0.1:{redis_port}/0"
        memory = start_node(procs, "memory")
        a, b = start_node(procs, engine), start_node(procs, engine)
        rates: dict[str, list[int]] = {"memory": [], "redis": []}
        # Interleaved rounds, so that a change in the machine's load hits both setups.
        for _ in range(args.rounds):
            for name, subs, pubs in (
                ("memory", [memory], [memory]),
                ("redis", [a, b], [a, b]),
            ):
                result = asyncio.run(measure(name, subs, pubs, args))
                rates[name].append(result["deliveries_per_s"])
                print(json.dumps(result), flush=True)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        print(
            json.dumps(
                {
                    "median_deliveries_per_s": medians,
                    "ratio_redis_2_nodes_to_memory_1_node": round(
                        medians["redis"] / max(1, medians["memory"]), 2
                    ),
                    "cpus": os.cpu_count(),
                    "loadavg": os.getloadavg(),
                }
            )
        )
    finally:
        procs.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
