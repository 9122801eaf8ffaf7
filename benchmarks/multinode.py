"""Deliveries per second through Redis-engine setups, against one memory-engine node.

Same run, same machine, same client::

    .venv/bin/python -m benchmarks.multinode --subscribers 400 --duration 8 --rounds 3

Setups (``--setups``, default ``memory,redis2``; the first is the reference of the ratios):

* **memory**: one ``clarion serve`` (memory engine); every subscriber and the publisher on it.
* **redis1**: one ``clarion serve`` on one ``redis-server`` (started here, on a free port,
  without persistence).
* **redis2**: two nodes on that Redis; subscribers split evenly between the nodes,
  publications alternate between the nodes' APIs, so half of them cross Redis twice.
* **workers2**: ``clarion serve --workers 2`` on that Redis: one port, the kernel spreads
  subscribers and publications over the two workers.
* **cluster**: two nodes on a Redis Cluster of three primaries (``redis+cluster://``).

Each measurement also reports the CPU time (user + system) the hub processes and Redis used in
the measured window: deliveries per hub CPU-second, and Redis CPU per publication.

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
    # Every client resumes from one address, which one address's allowance of history cannot
    # cover.
    "CLARION_LIMITS__CLIENT_HISTORY_BURST": str(1 << 40),
    # And every client subscribes from it: more subscriptions than one address may start.
    "CLARION_LIMITS__CLIENT_SUBSCRIBE_BURST": str(1 << 40),
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


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` and of their children (a supervisor's workers)."""
    total = 0.0
    for pid in pids:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        total += cpu_seconds([int(c) for c in children])
    return total


def redis_cpu(ports: Sequence[int]) -> float:
    """CPU seconds the Redis servers on ``ports`` have used (INFO cpu)."""
    import redis

    total = 0.0
    for port in ports:
        client = redis.Redis(port=port)
        info = client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        client.close()
    return total


class Setup:
    def __init__(self, name: str, sub_ports: list[int], pids: list[int], redis: list[int]) -> None:
        self.name = name
        self.label = LABELS[name]
        self.sub_ports = sub_ports
        self.pub_ports = sub_ports
        self.pids = pids  # hub processes (a supervisor counts with its workers)
        self.redis = redis  # ports of the Redis servers it uses


async def measure(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    sub_ports, pub_ports = setup.sub_ports, setup.pub_ports
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
    await asyncio.sleep(max(0.0, t_start - time.time()))
    hub_cpu, redis_cpu_before = cpu_seconds(setup.pids), redis_cpu(setup.redis)
    await asyncio.sleep(max(0.0, t_end - time.time()))
    hub_cpu = cpu_seconds(setup.pids) - hub_cpu
    redis_used = redis_cpu(setup.redis) - redis_cpu_before
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
    publications = deliveries / args.subscribers
    return {
        "setup": setup.label,
        "subscribers": args.subscribers,
        "seconds": args.duration,
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / args.duration),
        "publications_per_s": round(publications / args.duration, 1),
        "hub_cpu_s": round(hub_cpu, 2),
        "deliveries_per_hub_cpu_s": round(deliveries / max(hub_cpu, 1e-9)),
        "redis_cpu_us_per_publication": (
            round(redis_used / publications * 1e6) if setup.redis and publications else None
        ),
    }


SETUPS = ("memory", "redis1", "redis2", "workers2", "cluster")
LABELS = {
    "memory": "memory, 1 node",
    "redis1": "redis, 1 node",
    "redis2": "redis, 2 nodes",
    "workers2": "redis, --workers 2",
    "cluster": "redis cluster (3 primaries), 2 nodes",
}


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import random

    while True:
        port = random.randrange(20000, 55000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def start_redis(procs: Processes, *extra: str) -> int:
    redis_server = shutil.which("redis-server")
    assert redis_server is not None
    port = cluster_port() if "--cluster-enabled" in extra else free_port()
    folder = procs.dir / f"redis-{port}"
    folder.mkdir()
    # fmt: off
    procs.spawn([
        redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--daemonize", "no", "--dir", str(folder), *extra,
    ])
    # fmt: on
    wait_port(port, None)
    return port


def start_cluster(procs: Processes) -> list[int]:
    """Three primaries, no replicas: the benchmark measures the steady state."""
    import redis

    ports = [start_redis(procs, "--cluster-enabled", "yes") for _ in range(3)]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(redis.Redis(port=p).cluster("INFO").get("cluster_state") == "ok" for p in ports):
            return ports
        time.sleep(0.1)
    raise RuntimeError("the cluster did not come up")


def start_setup(procs: Processes, name: str, redis_port: int | None) -> Setup:
    if name == "memory":
        port = start_node(procs, "memory")
        return Setup(name, [port], [procs.procs[-1].pid], [])
    assert redis_port is not None
    engine = f"redis://127.0.0.1:{redis_port}/0"
    if name in ("redis1", "redis2"):
        ports = [start_node(procs, engine) for _ in range(1 if name == "redis1" else 2)]
        return Setup(name, ports, [p.pid for p in procs.procs[-len(ports) :]], [redis_port])
    if name == "workers2":
        port = free_port()
        args = [CLARION, "serve", "--engine", engine, "--port", str(port), "--workers", "2"]
        procs.spawn(args, ENV)
        wait_port(port, timeout=60)
        return Setup(name, [port], [procs.procs[-1].pid], [redis_port])
    cluster = start_cluster(procs)
    engine = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster)
    ports = [start_node(procs, engine) for _ in range(2)]
    return Setup(name, ports, [p.pid for p in procs.procs[-2:]], cluster)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=400)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per setup")
    parser.add_argument(
        "--setups", default="memory,redis2", help=f"comma-separated, of {', '.join(SETUPS)}"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.setups.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETUPS]
    if unknown or not names:
        parser.error(f"unknown setups {unknown}; choose from {', '.join(SETUPS)}")
    if shutil.which("redis-server") is None and names != ["memory"]:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    procs = Processes()
    try:
        redis_port = start_redis(procs) if names != ["memory"] else None
        setups = [start_setup(procs, name, redis_port) for name in names]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        # Interleaved rounds, so that a change in the machine's load hits every setup.
        for _ in range(args.rounds):
            for setup in setups:
                result = asyncio.run(measure(setup, args))
                results[setup.name].append(result)
                print(json.dumps(result), flush=True)
        keys = ("deliveries_per_s", "deliveries_per_hub_cpu_s", "redis_cpu_us_per_publication")
        summary: dict[str, dict[str, Any]] = {}
        for name, rows in results.items():
            summary[name] = {
                key: statistics.median(r[key] for r in rows)
                for key in keys
                if all(r[key] is not None for r in rows)
            }
        reference = summary[names[0]]["deliveries_per_s"]
        for row in summary.values():
            row["ratio"] = round(row["deliveries_per_s"] / max(1, reference), 2)
        print(
            json.dumps(
                {
                    "medians": summary,
                    "reference": names[0],
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
