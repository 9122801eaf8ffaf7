"""What a multi-channel SSE stream pays for its per-stream ``id:``, against a one-channel stream.

    .venv/bin/python -m benchmarks.sse_cursor [--events 20000] [--channels 2,4,16,128]

A one-channel stream appends the event bytes shared by every such stream (encoded once per
publication) and joins them when it writes. A stream of N channels appends the shared
``event:``/``data:`` part and, when it writes, encodes its combined cursor for each event's
``id:`` line. Both are timed through the real :class:`clarion.asgi.sse.SseStream` (push, then
a batch joined as one write), per event per stream; the one-channel figure is the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from clarion.asgi.pipe import Pipe
from clarion.asgi.sse import SSE_EVENT, SSE_TAGGED, SseStream
from clarion.protocol.cursor import Cursor
from clarion.protocol.publication import Publication, StreamPosition

BATCH = 64  # events per write, as when a stream keeps up with a busy channel


def _publications(channels: int, events: int) -> list[Publication]:
    data = {"text": "hello, world", "user": "alice", "n": 12345}
    return [
        Publication(f"chat:room-{i % channels}", i // channels + 1, "a1b2c3d4e5f6", data, 0)
        for i in range(events)
    ]


class _Batch(Pipe):
    """A pipe that keeps what it is sent until the batch is joined."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def send(self, payload: bytes) -> None:
        self.items.append(payload)

    def take(self) -> bytes:
        chunk = b"".join(self.items)
        self.items.clear()
        return chunk


def _stream(channels: int) -> tuple[SseStream, _Batch]:
    stream = SseStream(channels, 15)
    stream.pipe = batch = _Batch()
    return stream, batch


def _per_event(streamed: tuple[SseStream, _Batch], encoded: list[object], repeat: int) -> float:
    stream, batch = streamed
    push = stream.push  # taken once, as a subscription takes it
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(0, len(encoded), BATCH):
            for item in encoded[i : i + BATCH]:
                push(item)
            batch.take()
        best = min(best, time.perf_counter() - start)
    return best / len(encoded)


async def measure(events: int, channel_counts: list[int], repeat: int) -> list[dict[str, float]]:
    rows = []
    single = _stream(1)
    pubs = _publications(1, events)
    encoded = [pub.encoded(SSE_EVENT, SSE_EVENT.encode) for pub in pubs]
    reference = _per_event(single, encoded, repeat)
    event_bytes = sum(map(len, encoded)) / len(encoded)
    rows.append({"channels": 1, "us": reference * 1e6, "ratio": 1.0, "id_bytes": 0.0})
    for n in channel_counts:
        streamed = _stream(n)
        stream = streamed[0]
        for i in range(n):
            stream.set_position(f"chat:room-{i}", StreamPosition("a1b2c3d4e5f6", 0))
        pubs = _publications(n, events)
        encoded = [pub.encoded(SSE_TAGGED, SSE_TAGGED.encode) for pub in pubs]
        cost = _per_event(streamed, encoded, repeat)
        id_bytes = len(stream.current_id()) + len("id: \n")
        rows.append(
            {"channels": n, "us": cost * 1e6, "ratio": cost / reference, "id_bytes": id_bytes}
        )
    print(f"event bytes (one channel, shared): {event_bytes:.0f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--channels", default="2,4,16,128")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    counts = [int(c) for c in args.channels.split(",")]
    rows = asyncio.run(measure(args.events, counts, args.repeat))
    print(f"{'channels':>8} {'µs/event/stream':>16} {'vs 1 channel':>14} {'id: line bytes':>15}")
    for row in rows:
        print(
            f"{row['channels']:>8.0f} {row['us']:>16.2f} {row['ratio']:>14.1f} "
            f"{row['id_bytes']:>15.0f}"
        )
    one = Cursor.of({"chat:room-0": StreamPosition("a1b2c3d4e5f6", 1)}).encode()
    print(f"one-channel cursor: {len(one)} characters")


if __name__ == "__main__":
    main()
