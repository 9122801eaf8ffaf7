"""What the operator's figures cost the delivery path: the sampled publish-to-write latency.

(The per-channel activity is two integer increments on the channel's state, inline in the
delivery and not switched off here; its rates and totals are made off the hot path, see
``clarion.core.rates``.)

One hub on the memory engine; one channel with ``--subscribers`` sessions whose ``push`` is a
list append (the cost of a connection's buffer append, without sockets). Each round publishes
``--publications`` times through ``Hub.publish`` with the figures as they are, then with the
latency never sampled: the reference, measured in the same run, alternating, best of
``--rounds``, in the process's CPU time (the machine may be shared). Reported: microseconds per
publication, each way, and their ratio.

Run: ``.venv/bin/python -m benchmarks.figures_overhead [--subscribers 1 100 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from clarion.core.auth import Credentials
from clarion.core.fanout import WireFormat
from clarion.core.hub import Hub
from clarion.settings import Settings


class Sink:
    """A connection that keeps what it is sent, and nothing else."""

    kind = "ws"
    last_activity = float("inf")

    def ping(self) -> None: ...
    def send_reset(self, channel: str, reason: str, cursor: str) -> None: ...
    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None: ...
    def send_unsubscribe(self, channel: str, reason: str) -> None: ...
    def close(self, code: int, reason: str) -> None: ...

    async def hub_subscribe(self, *args: Any, **kw: Any) -> None: ...


async def measure(subscribers: int, publications: int, rounds: int) -> tuple[float, float]:
    settings = Settings(namespaces={"default": {"presence": False, "history_size": 10}})
    hub = Hub(settings)
    await hub.start()
    try:
        fmt = WireFormat("bench", "ws", lambda pub: b"frame")
        received: list[Any] = []
        for n in range(subscribers):
            session = hub.open_session(Sink(), Credentials(user=f"u{n}", trusted=True))
            await session.subscribe("bench", fmt, received.append)
        best = {"on": float("inf"), "off": float("inf")}
        for _ in range(rounds):
            for mode in ("on", "off"):
                received.clear()
                hub.stats.countdown = 1  # as after a tick: "off" left it never to sample
                started = time.process_time()
                for i in range(publications):
                    if mode == "off":
                        hub.stats.countdown = 1 << 62  # never sampled
                    await hub.publish("bench", i)
                elapsed = time.process_time() - started
                assert len(received) == publications * subscribers
                best[mode] = min(best[mode], elapsed / publications * 1e6)
                await asyncio.sleep(0)  # the sampled latencies' callbacks run
        return best["on"], best["off"]
    finally:
        await hub.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--publications", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    print("subscribers  figures on (µs/publication)  off (reference)  ratio")
    for subscribers in args.subscribers:
        on, off = asyncio.run(measure(subscribers, args.publications, args.rounds))
        print(f"{subscribers:>11}  {on:>27.2f}  {off:>15.2f}  {on / off:.3f}")


if __name__ == "__main__":
    main()
