"""The hub's per-second sweep over its sessions: CPU per sweep at N sessions.

    .venv/bin/python -m benchmarks.sweep_cost --sessions 10000 --seconds 120

A hub (memory engine, default limits: ping after 25 s of silence) holds ``--sessions`` sessions
on a transport that answers every ping at once, as a live client's pong would, and is otherwise
silent (a subscriber that only receives, as in P3 and P7). The sweep runs once per simulated
second (and a millisecond, as the hub's timer does) for ``--seconds`` seconds; the process CPU
time of the sweeps is printed, per sweep and per session-second. No sockets: the sweep alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from clarion import Hub
from clarion.settings import Settings


class Connection:
    def __init__(self, now: float) -> None:
        self.last_activity = now


class Pipe:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @property
    def last_activity(self) -> float:
        return float(self.conn.last_activity)


class SilentTransport:
    """A connection that only answers pings (its pong arrives at once); its last activity is
    read through the same two properties as a WebSocket's (transport, pipe)."""

    kind = "ws"

    def __init__(self, clock: list[float]) -> None:
        self._clock = clock
        self.conn = Connection(clock[0])
        self.pipe = Pipe(self.conn)
        self.pings = 0

    @property
    def last_activity(self) -> float:
        return self.pipe.last_activity

    def ping(self) -> None:
        self.pings += 1
        self.conn.last_activity = self._clock[0]

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        return None

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        return None

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        return None

    async def hub_subscribe(self, *args: Any, **kw: Any) -> None:
        return None

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed: {code} {reason}")


async def measure(n: int, seconds: int) -> tuple[list[float], int]:
    # No subscriptions: the idle timeout is set beyond the run.
    # Every session subscribes from one address: more subscriptions than it may start.
    limits = {
        "max_connections": n + 1,
        "max_connections_per_ip": n + 1,
        "client_subscribe_burst": n + 1,
    }
    settings = Settings(limits=dict(limits, idle_timeout=10 * seconds + 10))
    hub = Hub(settings)
    start = time.monotonic()
    clock = [start]
    transports = [SilentTransport(clock) for _ in range(n)]
    for t in transports:
        hub.open_session(t, hub.auth.anonymous(), "127.0.0.1")  # type: ignore[arg-type]
    costs = []
    for k in range(1, seconds + 1):
        clock[0] = start + k * 1.001  # sweeps come a little over a second apart
        t0 = time.process_time()
        hub.sweeper.tick(clock[0])
        costs.append(time.process_time() - t0)
    return costs, sum(t.pings for t in transports)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--seconds", type=int, default=120)
    a = p.parse_args(argv)
    costs, pings = asyncio.run(measure(a.sessions, a.seconds))
    total = sum(costs)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{a.sessions} sessions, {a.seconds} sweeps, load average {load}")
    print(
        f"sweep CPU: {1000 * total / a.seconds:.3f} ms per sweep on average "
        f"(median {1000 * statistics.median(costs):.3f} ms), "
        f"{1e6 * total / a.seconds / a.sessions:.3f} µs per session-second; {pings} pings"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
