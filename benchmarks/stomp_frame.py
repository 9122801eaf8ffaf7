"""Per-delivery cost of STOMP ``MESSAGE`` fan-out against the clarion JSON protocol's shared frame.

One publication goes to N subscribers, each on its own connection, through the same loop the
hub's fan-out runs (encode once per wire format, then one ``push`` per subscriber) into the
server's real coalescing :class:`~clarion.server.fastws.Outbox` (over a transport that discards
what it is given), and the flush that follows runs too. Reported: nanoseconds per delivery,
encoding amortised, for

* ``clarion.v1``: the whole WebSocket frame is shared — the reference;
* ``stomp``: what ``/stomp`` does (shared tail; per subscriber, WebSocket header + prefix, reused
  while the frame length stays the same, and one concatenation);
* ``stomp, header per delivery``: the header computed and joined on every delivery;
* ``stomp, two pushes``: header + prefix and the tail pushed separately (no copy of the tail).

Each is measured with publications of one length (the header is reused) and of varying lengths.

Run: ``.venv/bin/python -m benchmarks.stomp_frame [--subscribers 1000] [--rounds 300]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks.outboxes import StubOutbox, outboxes
from clarion.asgi.pipe import FastSocketPipe
from clarion.asgi.stompwire import FRAME_FORMATS, StompWire
from clarion.asgi.wstransport import frame_format
from clarion.core.fanout import WireFormat
from clarion.protocol.frames import frame_header
from clarion.protocol.publication import Publication
from clarion.protocol.stomp import message_prefix
from clarion.server.fastws import Outbox

DATA = {"symbol": "BTC-USD", "price": 64123.5, "size": 0.25, "side": "buy", "seq": 1234567}


def _header_per_delivery(box: StubOutbox, prefix: bytes) -> Callable[[bytes], None]:
    push, size = box.push, len(prefix)

    def deliver(tail: bytes) -> None:
        push(frame_header(size + len(tail)) + prefix + tail)

    return deliver


def _two_pushes(box: StubOutbox, prefix: bytes) -> Callable[[bytes], None]:
    push, size = box.push, len(prefix)

    def deliver(tail: bytes) -> None:
        push(frame_header(size + len(tail)) + prefix)
        push(tail)

    return deliver


def _data(i: int, vary: bool) -> dict[str, Any]:
    return {**DATA, "note": "x" * (i % 40)} if vary else DATA


async def _measure(
    fmt: WireFormat, pushes: list[Any], rounds: int, offset: int, vary: bool
) -> float:
    """Median ns per delivery over ``rounds`` publications (each a fresh object: encoded once)."""
    samples = []
    for i in range(rounds):
        data = _data(i, vary)
        pub = Publication("prices:BTC-USD", offset + i, "a1b2c3d4e5f6", data, 1_700_000_000_000)
        start = time.perf_counter_ns()
        # The hub's fan-out, as in Hub._deliver: encode once, then the format's delivery loop.
        fmt.deliver(pushes, pub.encoded(fmt, fmt.encode))
        await asyncio.sleep(0)  # the Flusher writes every dirty connection once
        samples.append((time.perf_counter_ns() - start) / len(pushes))
    return statistics.median(samples)


async def main(subscribers: int, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    boxes = outboxes(subscribers, loop, 1 << 30)
    stomp_fmt = FRAME_FORMATS[(True, False)]
    prefixes = [message_prefix(f"sub-{i}", escaped=True) for i in range(subscribers)]
    cases: list[tuple[str, WireFormat, list[Any]]] = [
        ("clarion.v1 (shared frame)", frame_format(Outbox.push_many), list(boxes)),
        (
            "stomp",
            stomp_fmt,
            [
                StompWire(FastSocketPipe(b, 1 << 30)).push_for(p)
                for b, p in zip(boxes, prefixes, strict=True)
            ],
        ),
        (
            "stomp, header per delivery",
            stomp_fmt,
            [_header_per_delivery(b, p) for b, p in zip(boxes, prefixes, strict=True)],
        ),
        (
            "stomp, two pushes",
            stomp_fmt,
            [_two_pushes(b, p) for b, p in zip(boxes, prefixes, strict=True)],
        ),
    ]
    print(f"{subscribers} subscribers each on its own connection, {rounds} publications per case")
    for vary in (False, True):
        sizes = sorted({len(orjson.dumps(_data(i, vary))) for i in range(rounds)})
        label = "varying length" if vary else "one length"
        print(f"\npublications of {label} (data ~{sizes[0]}-{sizes[-1]} bytes):")
        gc.disable()
        try:
            for _ in range(2):  # warm up, then measure
                results = [
                    (name, await _measure(fmt, pushes, rounds, k * rounds, vary))
                    for k, (name, fmt, pushes) in enumerate(cases)
                ]
        finally:
            gc.enable()
        reference = results[0][1]
        for name, ns in results:
            print(f"  {name:30} {ns:8.1f} ns/delivery  {ns / reference:5.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.subscribers, args.rounds))
