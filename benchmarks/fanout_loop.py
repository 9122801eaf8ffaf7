"""The fan-out's own loops, in process: ``push_many`` and the flush, per delivery.

N connections' outboxes over a transport that takes every write and forgets it; each loop
iteration pushes F shared frames of ~200 bytes to all of them (``push_many``, compiled unless
``--python``), then the flusher writes each connection once. Reported: the median nanoseconds
per delivery over the rounds. No sockets and no other process: what the per-connection loops
cost (the count against the send budget included), with the machine's noise mostly left out.

Run: ``.venv/bin/python -m benchmarks.fanout_loop [--connections 10000] [--rounds 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

from benchmarks.outboxes import outboxes
from clarion.protocol.frames import text_frame
from clarion.server import fastws


async def _measure(connections: int, rounds: int, frames_per_iteration: int) -> float:
    loop = asyncio.get_running_loop()
    boxes = outboxes(connections, loop, 1 << 20)
    frames = [
        text_frame(b'{"channel":"prices","data":{"n":%d,"x":"%s"}}' % (i, b"y" * 150))
        for i in range(frames_per_iteration)
    ]
    samples = []
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.perf_counter_ns()
            for frame in frames:
                fastws.push_many(boxes, frame)
            await asyncio.sleep(0)  # the flusher writes every connection once
            samples.append((time.perf_counter_ns() - start) / (connections * len(frames)))
    finally:
        gc.enable()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--python", action="store_true", help="the Python loops")
    args = parser.parse_args()
    compiled = fastws.use_compiled(not args.python)
    print(f"{args.connections} connections, {'compiled' if compiled else 'Python'} loops")
    for per_iteration in (1, 4):
        ns = asyncio.run(_measure(args.connections, args.rounds, per_iteration))
        print(f"  {per_iteration} frame(s) per iteration: {ns:6.1f} ns per delivery")


if __name__ == "__main__":
    main()
