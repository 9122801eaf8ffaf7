"""How long the hub's once-a-second work holds its event loop when it has many channels.

Every second the hub turns what its channels counted into rates and namespace totals, and picks
its busiest channels for the record it announces to the other nodes. This starts a hub on the
memory engine, holds ``--channels`` channels on it, publishes to every one of them each second
(a hundred per loop turn, so the publishing itself holds the loop briefly), and meanwhile
measures every gap between two turns of a task that only yields. It reports the longest gap,
the 99.9th percentile and how many gaps were over 5 ms, over ``--seconds`` seconds. The garbage
collector is off meanwhile: its passes over the publications kept in history are long pauses of
their own, not what this measures::

    .venv/bin/python -m benchmarks.many_rooms_stall --channels 100000 --seconds 5

``PYTHONPATH=<tree>/src`` in front measures another tree the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time


async def measure(channels: int, seconds: float) -> dict[str, float]:
    from clarion.core.hub import Hub
    from clarion.settings import Settings

    hub = Hub(Settings())
    await hub.start()
    try:
        names = [f"room:{n}" for n in range(channels)]
        for name in names:
            await hub.local_channels.acquire(name)
        stop = time.monotonic() + seconds
        gaps: list[float] = []

        async def turns() -> None:
            last = time.perf_counter()
            while time.monotonic() < stop:
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async def publish() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                for k, name in enumerate(names):
                    await hub.publish(name, k)
                    if k % 100 == 99:
                        await asyncio.sleep(0)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

        gc.collect()
        gc.disable()
        await asyncio.gather(turns(), publish())
    finally:
        gc.enable()
        await hub.close()
    gaps.sort()
    return {
        "channels": channels,
        "seconds": seconds,
        "longest_gap_ms": round(gaps[-1] * 1000, 2),
        "p999_gap_ms": round(gaps[int(len(gaps) * 0.999)] * 1000, 2),
        "gaps_over_5ms": sum(1 for g in gaps if g > 0.005),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(measure(a.channels, a.seconds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
