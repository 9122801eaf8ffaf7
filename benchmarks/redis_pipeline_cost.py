"""The Redis engine's CPU per pipeline: its own write and reads against the client library's.

The engine's batcher sends what queued meanwhile as one pipeline (``engines/redis/batch.py``):
on a plain Redis (or one behind Sentinel) as one write and its replies read in order on one
pooled connection; on a Redis Cluster, or without hiredis' ``pack_command``, through the client
library's pipeline. This sends the same pipelines both ways in turn (``--size`` script calls
and one plain command each) to a ``redis-server`` started for the run and prints this process's
CPU per pipeline for each, round after round::

    .venv/bin/python -m benchmarks.redis_pipeline_cost --pipelines 3000 --size 8

Both ways run in one process, alternately, so the machine's load blurs them alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import uvloop
from redis.asyncio import Redis

from benchmarks.servers import temporary_redis
from clarion.engines.redis import batch


async def measure(port: int, pipelines: int, size: int, rounds: int) -> list[dict[str, float]]:
    client = Redis(port=port, protocol=2)
    script = client.register_script("return redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])")
    await script(keys=["cost"], args=[0, "m"])  # loaded: no reload within the rounds

    def calls() -> list[batch.Call]:
        out = [batch.Call(script, ["cost"], [i, f"m{i}"]) for i in range(size)]
        return [*out, batch.Call(None, [], ["ZREM", "cost", "m0", "m1"])]

    async def per_pipeline(direct: bool) -> float:
        packer = batch.pack_command
        if not direct:
            batch.pack_command = None  # the client library's pipeline, as on a cluster
        try:
            start = time.process_time()
            for _ in range(pipelines):
                await batch._pipeline(client, calls())
            return (time.process_time() - start) / pipelines * 1e6
        finally:
            batch.pack_command = packer

    out = []
    for _ in range(rounds):
        library = await per_pipeline(False)
        direct = await per_pipeline(True)
        out.append({"library_us": round(library, 1), "direct_us": round(direct, 1)})
    await client.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipelines", type=int, default=3000)
    p.add_argument("--size", type=int, default=8, help="script calls per pipeline")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    if batch.pack_command is None:
        raise SystemExit("hiredis has no pack_command here: the engine uses the library's way")
    with temporary_redis("clarion-pipeline-") as (_, redis):
        rounds: Any = uvloop.run(measure(redis.port, a.pipelines, a.size, a.rounds))
    sys.stdout.write(json.dumps({"size": a.size, "rounds": rounds}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
