"""A cursor-sharing room: live signals against the same traffic sent as stored publications.

``--clients`` WebSocket clients (clarion protocol) subscribe to one channel and each publishes
``--rate`` cursor positions per second to it, which every client reads: a Figma-like room. The
same run measures it twice against one ``clarion serve`` (memory engine, pinned to one core):

* ``stored`` — ordinary ``publish`` ops: offset, history write, cursor per delivery: the
  reference;
* ``ephemeral`` — ``publish`` with ``"ephemeral": true`` and the client's ``key``: delivered
  live, never stored.

Reported per mode: deliveries/s (publications received by all clients), the offered rate
(clients x rate x clients), hub CPU (share of one core, from ``/proc``), hub CPU per delivery
and per publication, publish refusals, and the ratios ephemeral/stored (medians over
``--rounds``, the two modes alternating so that a change in the machine's load hits both).
Clients are raw asyncio protocols that count deliveries without decoding them (a marker per
publication), so that the generator stays cheaper than the hub; its own CPU is reported too.

Run: ``.venv/bin/python -m benchmarks.cursor_room [--clients 100] [--rate 30] [--duration 10]
[--rounds 3] [--engine memory|redis]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import tempfile
from pathlib import Path
from typing import Any

import orjson

from benchmarks.loadgen import descendants, mask_frame, proc_cpu_seconds, ws_upgrade_request
from benchmarks.servers import start_redis, start_server

CHANNEL = "cur:room"
MARKER = b'"time":'  # once per delivered publication; replies carry none
REFUSED = b'"error":'


class Client(asyncio.Protocol):
    """One browser tab: subscribes, then publishes its cursor; counts what it receives."""

    def __init__(self, index: int, port: int) -> None:
        self.index = index
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.open = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.refused = 0
        self.carry = b""
        key = f"user{index}"
        position = {"x": index, "y": 2 * index}
        signal = {"op": "publish", "channel": CHANNEL, "data": position}
        self.frames = {
            "stored": mask_frame(orjson.dumps(signal)),
            "ephemeral": mask_frame(orjson.dumps({**signal, "ephemeral": True, "key": key})),
        }

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not asyncio's
        self.transport.write(ws_upgrade_request("127.0.0.1", self.port, "/ws", "clarion.v1"))

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self.head.startswith(b"HTTP/1.1 101"), self.head[:80]
            self.open = True
            data = self.head[end + 4 :]
            assert self.transport is not None
            subscribe = {"id": 1, "op": "subscribe", "channel": CHANNEL}
            self.transport.write(mask_frame(orjson.dumps(subscribe)))
        if not self.ready.done() and b'"ok"' in data:
            self.ready.set_result(None)
        # A marker cut between two reads is counted once, from the bytes carried over.
        chunk = self.carry + data
        self.received += chunk.count(MARKER)
        self.refused += chunk.count(REFUSED)
        self.carry = chunk[-(len(MARKER) - 1) :]
        self.received -= self.carry.count(MARKER)
        self.refused -= self.carry.count(REFUSED)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"client {self.index} lost: {exc}"))

    def publish(self, mode: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.frames[mode])


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(
    clients: list[Client], pids: list[int], redis: list[int], mode: str, rate: float,
    duration: float,
) -> dict[str, Any]:  # fmt: skip
    for client in clients:
        client.received = client.refused = 0
    loop = asyncio.get_running_loop()
    hub0, gen0, redis0 = proc_cpu_seconds(pids), _cpu_self(), proc_cpu_seconds(redis)
    start = loop.time()
    ticks = 0
    while (now := loop.time()) < start + duration:
        for client in clients:
            client.publish(mode)
        ticks += 1
        await asyncio.sleep(max(0.0, start + ticks / rate - now))
    elapsed = loop.time() - start
    hub_cpu, gen_cpu = proc_cpu_seconds(pids) - hub0, _cpu_self() - gen0
    redis_cpu = proc_cpu_seconds(redis) - redis0
    received = sum(c.received for c in clients)
    await asyncio.sleep(1.0)  # what was still on its way, before the next mode starts
    return {
        "mode": mode,
        "offered_deliveries_per_s": round(ticks * len(clients) ** 2 / elapsed),
        "deliveries_per_s": round(received / elapsed),
        "hub_cpu_share": round(hub_cpu / elapsed, 3),
        "hub_cpu_us_per_delivery": round(hub_cpu / received * 1e6, 3) if received else None,
        "hub_cpu_us_per_publication": round(hub_cpu / (ticks * len(clients)) * 1e6, 1),
        "redis_cpu_share": round(redis_cpu / elapsed, 3),
        "generator_cpu_share": round(gen_cpu / elapsed, 3),
        "refused": sum(c.refused for c in clients),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds of one mode."""
    out: dict[str, Any] = {"mode": runs[0]["mode"]}
    for name, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = statistics.median(r[name] for r in runs)
    return out


async def run(
    clients_n: int, rate: float, duration: float, rounds: int, engine: str
) -> dict[str, Any]:
    limits = {
        "CLARION_LIMITS__CLIENT_PUBLISH_RATE": str(rate * 4),
        "CLARION_LIMITS__CLIENT_PUBLISH_BURST": str(int(rate * 4)),
        "CLARION_LIMITS__CLIENT_EPHEMERAL_RATE": str(rate * 4),
        "CLARION_LIMITS__CLIENT_EPHEMERAL_BURST": str(int(rate * 4)),
    }
    with tempfile.TemporaryDirectory(prefix="clarion-cursor-room-") as work:
        redis = None
        if engine == "redis":
            redis = start_redis(Path(work), core=0)
            limits["CLARION_ENGINE"] = f"redis://127.0.0.1:{redis.port}/0"
        server = start_server("clarion", "ws", Path(work), env_extra=limits)
        redis_pids = [redis.proc.pid] if redis is not None else []
        try:
            loop = asyncio.get_running_loop()
            clients = []
            for i in range(clients_n):
                _, client = await loop.create_connection(
                    lambda i=i: Client(i, server.port),  # type: ignore[misc]
                    "127.0.0.1",
                    server.port,
                )
                clients.append(client)
            await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), 30)
            pids = descendants([server.proc.pid])
            rounds_of: dict[str, list[dict[str, Any]]] = {"stored": [], "ephemeral": []}
            for _ in range(rounds):
                for mode in ("stored", "ephemeral"):
                    rounds_of[mode].append(
                        await _measure(clients, pids, redis_pids, mode, rate, duration)
                    )
            for client in clients:
                if client.transport is not None:
                    client.transport.close()
        finally:
            server.stop()
            if redis is not None:
                redis.stop()
    stored, ephemeral = (_median(rounds_of[mode]) for mode in ("stored", "ephemeral"))
    ratios = {
        "deliveries_per_s": round(ephemeral["deliveries_per_s"] / stored["deliveries_per_s"], 3),
        "hub_cpu_us_per_delivery": round(
            ephemeral["hub_cpu_us_per_delivery"] / stored["hub_cpu_us_per_delivery"], 3
        ),
        "hub_cpu_share": round(ephemeral["hub_cpu_share"] / stored["hub_cpu_share"], 3),
    }
    if engine == "redis" and stored["redis_cpu_share"]:
        ratios["redis_cpu_share"] = round(
            ephemeral["redis_cpu_share"] / stored["redis_cpu_share"], 3
        )
    return {
        "engine": engine,
        "clients": clients_n,
        "rate_per_client": rate,
        "duration_s": duration,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "rounds": rounds,
        "results": [stored, ephemeral],
        "ephemeral_over_stored": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=30.0, help="signals/s per client")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per mode")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each mode")
    parser.add_argument("--engine", choices=("memory", "redis"), default="memory")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args.clients, args.rate, args.duration, args.rounds, args.engine))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
