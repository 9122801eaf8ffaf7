"""The core's delivery path alone: CPU per publication through ``Hub.publish`` to N subscribers.

One hub on the memory engine; one channel with ``--subscribers`` sessions whose ``push`` is a
list append (a connection's buffer append, without sockets), so what is measured is the
core's own work per publication: publish, engine, gap check, fan-out. Best of ``--rounds``, in
the process's CPU time (the machine may be shared).

To compare two trees of the code (a change to the core against the commit before it), run this
file with each tree's ``src`` first on ``PYTHONPATH``, alternating, and compare the figures::

    PYTHONPATH=/path/to/before/src .venv/bin/python -m benchmarks.delivery_path
    .venv/bin/python -m benchmarks.delivery_path
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import clarion
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


async def measure(subscribers: int, publications: int, rounds: int) -> float:
    settings = Settings(namespaces={"default": {"presence": False, "history_size": 10}})
    hub = Hub(settings)
    await hub.start()
    try:
        fmt = WireFormat("bench", "ws", lambda pub: b"frame")
        received: list[Any] = []
        for n in range(subscribers):
            session = hub.open_session(Sink(), Credentials(user=f"u{n}", trusted=True))
            await session.subscribe("bench", fmt, received.append)
        best = float("inf")
        for _ in range(rounds):
            received.clear()
            started = time.process_time()
            for i in range(publications):
                await hub.publish("bench", i)
            elapsed = time.process_time() - started
            assert len(received) == publications * subscribers
            best = min(best, elapsed / publications * 1e6)
            await asyncio.sleep(0)
        return best
    finally:
        await hub.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--publications", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    print(f"clarion from {clarion.__path__[0]}")
    print("subscribers  µs/publication")
    for subscribers in args.subscribers:
        us = asyncio.run(measure(subscribers, args.publications, args.rounds))
        print(f"{subscribers:>11}  {us:>14.2f}")


if __name__ == "__main__":
    main()
