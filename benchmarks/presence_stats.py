"""What ``presence_stats`` costs on a crowded channel, against listing its presence.

One channel holds ``--clients`` present clients (two per user, so half as many users) on the
memory engine and on the Redis engine (a ``redis-server`` started by the benchmark on a free
loopback port, nothing saved). Reported per engine: microseconds per call of

* ``presence`` — the full listing (every entry decoded): the reference;
* ``presence_stats`` — the two counts alone;

and their ratio. On Redis both are one round trip; the listing's cost grows with the number of
clients, the counts' barely.

Run: ``.venv/bin/python -m benchmarks.presence_stats [--clients 10000] [--calls 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from clarion.engines.base import EngineSink, PresenceEntry
from clarion.engines.memory import MemoryEngine
from clarion.protocol.publication import Publication

CHANNEL = "room:big"


class _Sink(EngineSink):
    def on_publication(self, pub: Publication) -> None:
        return None

    def on_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        return None

    def on_control(self, command: str, payload: dict[str, Any]) -> None:
        return None


async def _per_call(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    await call()  # warm: scripts loaded, connections open
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls * 1e6


async def _measure(engine: Any, clients: int, calls: int) -> tuple[float, float]:
    await engine.start(_Sink())
    try:
        adds = [
            engine.presence_add(
                CHANNEL, PresenceEntry(f"c{i}", f"u{i // 2}", {"n": i}, "ws", "127.0.0.1")
            )
            for i in range(clients)
        ]
        for i in range(0, len(adds), 500):
            await asyncio.gather(*adds[i : i + 500])
        stats = await engine.presence_stats(CHANNEL)
        assert (stats.clients, stats.users) == (clients, (clients + 1) // 2), stats
        listing = await _per_call(lambda: engine.presence(CHANNEL), calls)
        counts = await _per_call(lambda: engine.presence_stats(CHANNEL), calls)
        return listing, counts
    finally:
        await engine.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    rows = [("memory", await _measure(MemoryEngine(), args.clients, args.calls))]
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server not found: the Redis engine is left out")
    else:
        from clarion.engines.redis import RedisEngine

        port = _free_port()
        workdir = tempfile.mkdtemp(prefix="clarion-bench-redis-")
        # fmt: off
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        # fmt: on
        try:
            time.sleep(0.3)
            engine = RedisEngine(f"redis://127.0.0.1:{port}/0?presence_ttl=600")
            rows.append(("redis", await _measure(engine, args.clients, args.calls)))
        finally:
            proc.kill()
            proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.clients} clients ({(args.clients + 1) // 2} users), {args.calls} calls each")
    print(f"{'engine':8} {'presence µs':>12} {'stats µs':>10} {'stats/presence':>15}")
    for name, (listing, counts) in rows:
        print(f"{name:8} {listing:12.1f} {counts:10.1f} {counts / listing:15.4f}")


if __name__ == "__main__":
    asyncio.run(main())
