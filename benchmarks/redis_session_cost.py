"""The Redis engine's own CPU per resumed session, without sockets to clients or the hub.

Two engines (two nodes) in this process share a ``redis-server`` started for the run. ``--sessions``
sessions are counted and present on node A; then, as in the reconnect storm (P5), every one
leaves A (its connection count released, its presence entry removed) and resumes on B (counted,
its history read after its cursor, its entry added), ``--per-tick`` sessions starting per loop
iteration, each step in its own task as the hub runs them. Printed: this process's CPU per
session (both nodes' engine work and the client library's), Redis' CPU, read events and
commands per session, and the cost of one periodic refresh of every entry::

    .venv/bin/python -m benchmarks.redis_session_cost --sessions 10000 --per-tick 8

CPU seconds of one process do not depend much on the machine's load, unlike the storm's
seconds: this is the figure to compare the engine's changes with, interleaving runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import RedisWork
from benchmarks.servers import start_redis
from clarion.engines.base import PresenceEntry
from clarion.engines.redis.engine import RedisEngine
from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import Settings

CHANNEL = "storm"


class Sink:
    def on_publication(self, pub: Publication) -> None:
        pass

    def on_ephemeral(self, pub: Publication) -> None:
        pass

    def on_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        pass

    def on_control(self, command: str, payload: dict[str, Any]) -> None:
        pass


def session_id(i: int) -> str:
    return f"{i:016x}-{i:08x}"


async def run(sessions: int, per_tick: int, port: int, rounds: int) -> dict[str, Any]:
    settings = Settings()
    url = f"redis://127.0.0.1:{port}/0"
    a, b = RedisEngine(url, settings), RedisEngine(url, settings)
    await a.start(Sink())
    await b.start(Sink())
    options = settings.namespace("")
    assert a.limits is not None and b.limits is not None
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def ip(i: int) -> str:
        return f"127.0.0.{1 + i // 500}"

    async def admit(engine: RedisEngine, i: int) -> None:
        assert engine.limits is not None
        await engine.limits.acquire_connection("ip", ip(i), session_id(i), 100_000)

    async def join(engine: RedisEngine, i: int) -> None:
        entry = PresenceEntry(session_id(i), None, None, "ws", ip(i))
        await engine.presence_add(CHANNEL, entry)

    async def resume(engine: RedisEngine, i: int, since: StreamPosition) -> None:
        spawn(admit(engine, i))
        await engine.history(CHANNEL, options, since=since)
        spawn(join(engine, i))

    async def release(engine: RedisEngine, i: int) -> None:
        assert engine.limits is not None
        await engine.limits.release_connection("ip", ip(i), session_id(i))

    async def leave(engine: RedisEngine, i: int) -> None:
        await engine.presence_remove(CHANNEL, session_id(i))

    async def drain() -> None:
        while tasks:
            await asyncio.gather(*list(tasks))

    out: dict[str, Any] = {"sessions": sessions, "per_tick": per_tick, "rounds": []}
    for _ in range(5):
        await a.publish(CHANNEL, {"n": 1}, options)
    since = (await a.history(CHANNEL, options, limit=0)).position
    for _ in range(20):
        await a.publish(CHANNEL, {"n": 2}, options)
    here, there = a, b
    for i in range(sessions):
        spawn(admit(here, i))
        spawn(join(here, i))
    await drain()
    for _ in range(rounds):
        work = RedisWork(port)
        cpu0, t0 = time.process_time(), time.monotonic()
        for start in range(0, sessions, per_tick):
            for i in range(start, min(sessions, start + per_tick)):
                spawn(release(here, i))
                spawn(leave(here, i))
                spawn(resume(there, i, since))
            await asyncio.sleep(0)
        await drain()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        redis = work.since()
        work = RedisWork(port)
        cpu1 = time.process_time()
        await there._refresh()
        refresh_cpu = time.process_time() - cpu1
        refresh_redis = work.since()
        out["rounds"].append(
            {
                "cpu_ms_per_session": round(1000 * cpu / sessions, 4),
                "wall_s": round(wall, 3),
                "redis_cpu_ms_per_session": round(1000 * redis["cpu_seconds"] / sessions, 4),
                "redis_reads_per_session": round(redis["reads"] / sessions, 3),
                "redis_commands_per_session": round(redis["commands"] / sessions, 2),
                "refresh_cpu_ms": round(1000 * refresh_cpu, 2),
                "refresh_redis_cpu_ms": round(1000 * refresh_redis["cpu_seconds"], 2),
                "refresh_redis_commands": refresh_redis["commands"],
                "by_command": redis["by_command"],
            }
        )
        here, there = there, here
    await a.close()
    await b.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--per-tick", type=int, default=8, help="sessions started per loop iteration")
    p.add_argument("--rounds", type=int, default=3, help="storms, alternating between the nodes")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop, as clarion serve does")
    a = p.parse_args()
    redis = start_redis(Path(tempfile.mkdtemp(prefix="clarion-cost-")), core=None)
    try:
        if a.uvloop:
            import uvloop

            result = uvloop.run(run(a.sessions, a.per_tick, redis.port, a.rounds))
        else:
            result = asyncio.run(run(a.sessions, a.per_tick, redis.port, a.rounds))
    finally:
        redis.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
