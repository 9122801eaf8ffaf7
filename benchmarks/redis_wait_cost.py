"""What ``wait_replicas=1`` costs a publication: latency and the node's CPU, with and without.

A primary and a replica, both ``redis-server`` processes started for the run on this machine,
and two Redis engines in this process on the same primary, one with ``wait_replicas=1`` (each
publication's pipeline ends with ``WAIT 1 <timeout>``). Round after round, each engine in turn
publishes ``--count`` publications one at a time (latency: every publication is its own round
trip, plus the replica's acknowledgement with WAIT), then ``--count`` more ``--burst`` at once
(one pipeline per burst, one WAIT for all of it). Prints per round and engine the median and
99th percentile latency of the lone publications and this process's CPU per publication, both
ways::

    .venv/bin/python -m benchmarks.redis_wait_cost --count 3000 --burst 64 --rounds 3

Both engines run in one process, alternately, so the machine's load blurs them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis

from benchmarks.servers import start_redis
from clarion.engines.redis import RedisEngine
from clarion.settings import NamespaceOptions, Settings

OPTS = NamespaceOptions(history_size=100)


class _Sink:
    def on_publication(self, pub: Any) -> None: ...
    def on_ephemeral(self, pub: Any) -> None: ...
    def on_event(self, channel: str, kind: str, event: Any) -> None: ...
    def on_control(self, command: str, payload: Any) -> None: ...


async def replicate(primary: int, replica: int) -> None:
    p, r = Redis(port=primary), Redis(port=replica)
    await p.config_set("repl-diskless-sync-delay", 0)
    await r.replicaof("127.0.0.1", primary)
    deadline = time.monotonic() + 30
    while (await p.info("replication")).get("slave0", {}).get("state") != "online":
        if time.monotonic() > deadline:
            raise SystemExit("the replica did not sync")
        await asyncio.sleep(0.05)
    await p.aclose()
    await r.aclose()


async def one_way(engine: RedisEngine, count: int, burst: int) -> dict[str, float]:
    latencies = []
    cpu = time.process_time()
    for i in range(count):
        start = time.perf_counter()
        await engine.publish(f"lone-{i % 16}", i, OPTS)
        latencies.append(time.perf_counter() - start)
    lone_cpu = (time.process_time() - cpu) / count
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(0, count, burst):
        await asyncio.gather(*(engine.publish(f"burst-{j % 16}", j, OPTS) for j in range(burst)))
    bursts = -(-count // burst) * burst
    latencies.sort()
    return {
        "lone_p50_us": round(statistics.median(latencies) * 1e6, 1),
        "lone_p99_us": round(latencies[int(len(latencies) * 0.99)] * 1e6, 1),
        "lone_cpu_us": round(lone_cpu * 1e6, 1),
        "burst_cpu_us": round((time.process_time() - cpu) / bursts * 1e6, 1),
        "burst_wall_us": round((time.perf_counter() - wall) / bursts * 1e6, 1),
    }


async def measure(port: int, count: int, burst: int, rounds: int) -> list[dict[str, Any]]:
    url = f"redis://127.0.0.1:{port}/0"
    plain, waiting = RedisEngine(url, Settings()), RedisEngine(f"{url}?wait_replicas=1", Settings())
    for engine in (plain, waiting):
        await engine.start(_Sink())  # type: ignore[arg-type]
        await one_way(engine, 200, burst)  # warm: scripts loaded, connections open
    out = []
    try:
        for _ in range(rounds):
            out.append(
                {
                    "without": await one_way(plain, count, burst),
                    "wait_replicas=1": await one_way(waiting, count, burst),
                }
            )
    finally:
        await plain.close()
        await waiting.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=3000, help="publications per way and round")
    p.add_argument("--burst", type=int, default=64, help="publications made at once")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="clarion-wait-"))
    primary = start_redis(root, core=None)
    replica = start_redis(root, core=None)
    try:
        uvloop.run(replicate(primary.port, replica.port))
        rounds: Any = uvloop.run(measure(primary.port, a.count, a.burst, a.rounds))
    finally:
        replica.stop()
        primary.stop()
    sys.stdout.write(json.dumps({"count": a.count, "burst": a.burst, "rounds": rounds}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
