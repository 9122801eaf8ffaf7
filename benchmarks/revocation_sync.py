"""What a node's periodic read of the engine's revocations costs while many are in force.

Each node reads the engine's revocations every few seconds (``Sweeper``), to take in any it
missed while its pub/sub was down. An application that revokes a token at every logout keeps
one revocation per logout for a day (``revocation_ttl``), so the set can hold hundreds of
thousands. This stores ``--revocations`` of them in a ``redis-server`` started for the run
(and in the memory engine), then times the hub's reads of them: the first (a node starting)
and ``--reads`` more with nothing new, then after one more revocation::

    .venv/bin/python -m benchmarks.revocation_sync --revocations 100000 --reads 5

It prints, per engine, this process's CPU and the wall time of each kind of read, and the
bytes Redis sent for them (``INFO stats``: ``total_net_output_bytes``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis

from benchmarks.servers import start_redis
from clarion import Hub, Settings


async def _timed(hub: Hub, reads: int, redis: Redis | None) -> dict[str, float]:
    sent = 0
    if redis is not None:
        sent = (await redis.info("stats"))["total_net_output_bytes"]
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(reads):
        await hub.registry.sync_revocations()
    out = {
        "cpu_ms": round(1e3 * (time.process_time() - cpu) / reads, 3),
        "wall_ms": round(1e3 * (time.perf_counter() - wall) / reads, 3),
    }
    if redis is not None:
        # Less the INFO reply itself, a few kB: about the same each time.
        sent = (await redis.info("stats"))["total_net_output_bytes"] - sent
        out["redis_bytes"] = round(sent / reads)
    return out


async def measure(engine: str, revocations: int, reads: int, port: int | None) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix="clarion-rev-")
    hub = Hub(Settings(engine=engine, data_dir=data_dir))
    await hub.start()
    redis = Redis(port=port) if port is not None else None
    try:
        until = time.time() + 3600
        stored = time.perf_counter()
        for start in range(0, revocations, 1000):
            batch = range(start, min(start + 1000, revocations))
            await asyncio.gather(*(hub.engine.revoke("jti", f"token-{n}", until) for n in batch))
        stored = time.perf_counter() - stored
        # A node that starts: its registry has none of them yet.
        fresh = Hub(Settings(engine=engine, data_dir=data_dir))
        await fresh.engine.start(fresh)
        try:
            first = await _timed(fresh, 1, redis)
            again = await _timed(fresh, reads, redis)
            await hub.engine.revoke("jti", "one-more", until)
            after_one = await _timed(fresh, 1, redis)
            held = len(fresh.registry.revocations.tokens)
        finally:
            await fresh.engine.close()
    finally:
        if redis is not None:
            await redis.aclose()
        await hub.close()
    return {
        "engine": engine.split(":")[0],
        "revocations": revocations,
        "storing_them_s": round(stored, 2),
        "first_read": first,
        "read_with_nothing_new": again,
        "read_after_one_more": after_one,
        "held_by_the_node": held,
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="clarion-rev-redis-") as root:
        redis = start_redis(Path(root), core=None)
        try:
            urls = {"memory": ("memory", None)}
            urls["redis"] = (f"redis://127.0.0.1:{redis.port}/0", redis.port)
            for name in args.engines.split(","):
                engine, port = urls[name]
                result = await measure(engine, args.revocations, args.reads, port)
                print(json.dumps(result), flush=True)
        finally:
            redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revocations", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=5)
    parser.add_argument("--engines", default="memory,redis", help="memory, redis or both")
    args = parser.parse_args()
    if sys.platform == "win32":  # pragma: no cover
        asyncio.run(main(args))
    else:
        uvloop.run(main(args))
