"""The Redis engine's position check of a node with many rooms: CPU per channel checked.

Every ``check_interval`` (2 s by default) and after every pub/sub reconnect, a node compares
the stored position of each channel it is subscribed to with the last one it saw
(``engines/redis/positions.py``). This subscribes one engine to ``--channels`` channels of a
``redis-server`` started for the run, publishes once on each, then runs the check over all of
them, round after round, and prints this process's CPU per channel checked (and Redis' time), and
what a node holding that many channels spends on the checks per second of its life::

    .venv/bin/python -m benchmarks.position_check_cost --channels 100000

Run it with another tree's ``src`` first on ``PYTHONPATH`` to compare trees on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import uvloop
from redis.asyncio import Redis

from benchmarks.redis_session_cost import Sink
from benchmarks.servers import temporary_redis
from clarion.engines.redis import RedisEngine
from clarion.settings import NamespaceOptions, Settings

CHUNK = 2000  # channels subscribed or published to at once


async def _redis_command_seconds(client: Redis) -> float:
    """The time Redis spent running commands so far, by its own count (``INFO commandstats``,
    microseconds; a script's inner commands would count twice, and the check runs none)."""
    stats = await client.info("commandstats")
    return sum(float(row["usec"]) for row in stats.values()) / 1e6


async def measure(port: int, channels: int, rounds: int) -> dict[str, Any]:
    raw = Redis(port=port, protocol=2)
    engine = RedisEngine(f"redis://127.0.0.1:{port}/0?check_interval=3600", Settings())
    await engine.start(Sink())
    names = [f"room{i}" for i in range(channels)]
    options = NamespaceOptions()
    try:
        for i in range(0, channels, CHUNK):
            chunk = names[i : i + CHUNK]
            await asyncio.gather(*(engine.subscribe(c) for c in chunk))
            await asyncio.gather(*(engine.publish(c, "x", options) for c in chunk))
        seen = engine._positions.seen
        assert len(seen) == channels, "every channel is subscribed and seen"
        per_channel = []
        redis_per_channel = []
        for _ in range(rounds):
            redis_start = await _redis_command_seconds(raw)
            start = time.process_time()
            await engine._positions.resync(list(seen))
            per_channel.append((time.process_time() - start) / channels * 1e6)
            redis_spent = await _redis_command_seconds(raw) - redis_start
            redis_per_channel.append(redis_spent / channels * 1e6)
    finally:
        await engine.close()
        await raw.aclose()
    best = min(per_channel)
    return {
        "channels": channels,
        "us_per_channel": [round(us, 2) for us in per_channel],
        "redis_us_per_channel": [round(us, 2) for us in redis_per_channel],
        "ms_per_second_at_check_interval_2s": round(best * channels / 1000 / 2, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    with temporary_redis("clarion-positions-") as (_, redis):
        result = uvloop.run(measure(redis.port, a.channels, a.rounds))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
