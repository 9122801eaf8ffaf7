"""A burst of sessions joining the presence of many rooms on Redis: how soon a watcher hears
of every join, and what the burst costs the hub.

``clarion serve`` on a ``redis-server`` of its own, with one namespace, ``room``: anonymous,
presence readable by anyone, ``join_leave = "client"``. ``--clients`` WebSocket connections
open at once and each subscribes to ``--rooms`` rooms of its own; watchers, subscribed to every
room beforehand, hear each join, which the hub sends through Redis (one node here, as on every
node of a cluster). Printed: seconds from the first connection until every client was
subscribed and until the watchers heard the last join, the hub's and Redis' CPU seconds over
that span, and the ``PUBLISH`` commands Redis ran. Then every client asks for the presence of
each of its rooms at once (a chat client showing who is there): seconds until every answer came,
and the hub's and Redis' CPU seconds for them::

    .venv/bin/python -m benchmarks.presence_burst --clients 500 --rooms 10

``--src DIR`` runs the hub from another tree's ``src`` (one built with its extension), to
compare two trees on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import websockets
from websockets.typing import Subprotocol

from benchmarks.loadgen import RedisWork, proc_cpu_seconds
from benchmarks.servers import CLARION_ENV, free_port, stop_process, temporary_redis, wait_healthy

PROTOCOL = [Subprotocol("clarion.v1")]
WATCHED = 125  # rooms per watcher: within a connection's 128 subscriptions
CONFIG = '[namespaces.room]\nanonymous = true\npresence_read = "anyone"\njoin_leave = "client"\n'


class _Spent:
    """The hub's CPU seconds and what Redis did (``RedisWork``) from when it is made."""

    def __init__(self, pid: int, redis_port: int) -> None:
        self.pid = pid
        self.cpu = proc_cpu_seconds([pid])
        self.redis = RedisWork(redis_port)

    def since(self) -> tuple[float, dict[str, Any]]:
        return proc_cpu_seconds([self.pid]) - self.cpu, self.redis.since()


async def _subscribed(url: str, rooms: list[str]) -> Any:
    """A connection subscribed to every room of ``rooms`` (each reply read)."""
    conn = await websockets.connect(url, subprotocols=PROTOCOL, max_queue=None)
    for i, room in enumerate(rooms):
        await conn.send(json.dumps({"id": i, "op": "subscribe", "channel": room}))
    replies = 0
    while replies < len(rooms):
        frame = json.loads(await conn.recv())
        if "error" in frame:
            raise RuntimeError(f"subscribe refused: {frame}")
        replies += "ok" in frame
    return conn


async def _listed(conn: Any, rooms: list[str]) -> None:
    """Ask for the presence of each room at once; read until every answer came."""
    for i, room in enumerate(rooms):
        await conn.send(json.dumps({"id": f"p{i}", "op": "presence", "channel": room}))
    answers = 0
    while answers < len(rooms):
        frame = json.loads(await conn.recv())
        if "error" in frame:
            raise RuntimeError(f"presence refused: {frame}")
        answers += str(frame.get("id", "")).startswith("p")


async def _joins(conn: Any, expected: int) -> None:
    """Read ``conn`` until it has heard ``expected`` joins."""
    heard = 0
    while heard < expected:
        heard += "join" in json.loads(await conn.recv())


async def burst(port: int, pid: int, redis_port: int, clients: int, rooms: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/ws"
    # Rooms of their own: a joining client hears its own joins only, so that what is measured
    # is the hub sending the joins, not each client reading everyone else's.
    own = [[f"room:c{i}-r{j}" for j in range(rooms)] for i in range(clients)]
    every = [room for mine in own for room in mine]
    groups = [every[i : i + WATCHED] for i in range(0, len(every), WATCHED)]
    watchers = await asyncio.gather(*(_subscribed(url, group) for group in groups))
    hearing = [
        asyncio.create_task(_joins(w, len(g))) for w, g in zip(watchers, groups, strict=True)
    ]
    spent = _Spent(pid, redis_port)
    start = time.monotonic()
    conns = await asyncio.gather(*(_subscribed(url, mine) for mine in own))
    subscribed = time.monotonic() - start
    try:
        await asyncio.wait_for(asyncio.gather(*hearing), 120)
        elapsed = time.monotonic() - start
        joining_cpu, joining_redis = spent.since()
        # Then each client asks who is in each of its rooms, all at once.
        spent = _Spent(pid, redis_port)
        start = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(_listed(c, mine) for c, mine in zip(conns, own, strict=True))), 120
        )
        listed = time.monotonic() - start
        listing_cpu, listing_redis = spent.since()
    finally:
        for conn in [*watchers, *conns]:
            await conn.close()
    return {
        "clients": clients,
        "rooms_each": rooms,
        "seconds_to_all_subscribed": round(subscribed, 3),
        "seconds_to_last_join": round(elapsed, 3),
        "hub_cpu_seconds": round(joining_cpu, 3),
        "redis_cpu_seconds": round(joining_redis["cpu_seconds"], 3),
        "redis_publish_commands": joining_redis["by_command"].get("publish", 0),
        "seconds_to_all_listed": round(listed, 3),
        "listing_hub_cpu_seconds": round(listing_cpu, 3),
        "listing_redis_cpu_seconds": round(listing_redis["cpu_seconds"], 3),
    }


def _run(workdir: Path, redis_port: int, a: argparse.Namespace) -> dict[str, Any]:
    """The hub on ``redis_port``, started in ``workdir``, and the burst against it."""
    (workdir / "clarion.toml").write_text(CONFIG)
    # Every client reads from one address: more ops than one address may send.
    many = str(1 << 40)
    env = {
        **os.environ,
        **CLARION_ENV,
        "CLARION_LIMITS__CLIENT_COMMAND_RATE": many,
        "CLARION_LIMITS__CLIENT_COMMAND_BURST": many,
    }
    if a.src:
        env["PYTHONPATH"] = str(Path(a.src).resolve())
    port = free_port()
    engine = f"redis://127.0.0.1:{redis_port}/0"
    cmd = [sys.executable, "-m", "clarion", "serve", "--port", str(port), "--engine", engine]
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc, 30)
        return asyncio.run(burst(port, proc.pid, redis_port, a.clients, a.rooms))
    finally:
        stop_process(proc)
        log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--src", help="run the hub from this tree's src directory")
    a = p.parse_args(argv)
    with temporary_redis("clarion-presence-burst-") as (workdir, redis_server):
        result = _run(workdir, redis_server.port, a)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
