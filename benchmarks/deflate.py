"""permessage-deflate: bytes and hub CPU per delivery, compression on and off, and the envelope.

    .venv/bin/python -m benchmarks.deflate [--subscribers 100] [--publications 2000] [--rounds 5]

Three parts, printed as Markdown tables for BENCHMARKS.md:

1. **Bytes per delivery** (exact, no timing): the WebSocket frame of each publication of a chat
   and a ticker feed (realistic text, not random bytes) as ``/ws`` and ``/stomp`` send it,
   uncompressed and compressed (the hub's own code, MIN_SIZE and all).
2. **The envelope**: what each field of a publication adds to a 100-byte payload, on ``/ws``
   (the frame) and ``/sse`` (the event).
3. **Hub CPU per delivery**: one ``clarion serve`` pinned to core 1 (``taskset``), ``N``
   WebSocket subscribers of one channel, publications over HTTP; rounds alternate subscribers
   that offer permessage-deflate and subscribers that do not, on the same hub process; the hub's
   CPU time (``/proc``) per delivery, median of the rounds. Also the compression of one
   publication in this process (``timeit``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx
import websockets

from benchmarks.servers import start_server
from clarion.core.fanout import cursor_if_stored
from clarion.protocol import deflate, messages, sse
from clarion.protocol.frames import text_frame
from clarion.protocol.publication import Publication
from clarion.protocol.stomp import message_body, message_tail

USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
LINES = [
    "morning all",
    "Anyone up for lunch at the new ramen place on 5th? I heard they have a vegetarian broth.",
    "the build is green again, thanks for the quick fix",
    "can someone review my PR before the standup? it's the one about the retry backoff",
    "lol",
    "I'll be 10 minutes late to the 3pm, start without me",
    "Did you see the deploy notes? Redis moves to the new cluster tonight at 22:00 UTC.",
    "+1",
    "The dashboard shows p99 at 4 ms since the last release, which is better than I expected.",
    "who has the keys to the meeting room on the second floor?",
    "ok, merging now",
    "Reminder: the quarterly planning doc needs everyone's estimates by Friday.",
]
SYMBOLS = {"ACME": 101.25, "GLOBEX": 48.10, "INITECH": 12.73, "UMBRELLA": 230.5, "HOOLI": 77.02}


def chat_feed(n: int, rng: random.Random) -> list[Publication]:
    t0 = 1_796_228_769_000
    return [
        Publication(
            "chat:lobby",
            i + 1,
            "a1b2c3d4e5f6",
            {"user": rng.choice(USERS), "text": rng.choice(LINES), "msg_id": f"m{10000 + i}"},
            t0 + i * 1733,
        )
        for i in range(n)
    ]


def ticker_feed(n: int, rng: random.Random) -> list[Publication]:
    t0 = 1_796_228_769_000
    prices = dict(SYMBOLS)
    out = []
    for i in range(n):
        symbol = rng.choice(list(prices))
        price = prices[symbol] = round(prices[symbol] * (1 + rng.gauss(0, 0.001)), 2)
        data = {
            "symbol": symbol,
            "price": price,
            "bid": round(price - 0.01, 2),
            "ask": round(price + 0.01, 2),
            "volume": rng.randrange(1000, 5_000_000),
            "change": round(price - SYMBOLS[symbol], 2),
        }
        out.append(Publication(f"ticker:{symbol}", i + 1, "a1b2c3d4e5f6", data, t0 + i * 97))
    return out


def ws_payload(pub: Publication) -> bytes:
    return messages.encode_publication(pub, cursor_if_stored(pub))


def stomp_parts(pub: Publication) -> tuple[bytes, bytes]:
    prefix = b"MESSAGE\nsubscription:sub-0\n"
    tail = message_tail(pub, cursor_if_stored(pub), message_body(pub), escaped=True, ack=False)
    return prefix, tail


def bytes_table(feeds: dict[str, list[Publication]]) -> list[str]:
    rows = [
        "| feed | transport | payload (`data`) | frame, uncompressed | frame, deflate | "
        "deflate / uncompressed | messages compressed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, pubs in feeds.items():
        data = statistics.mean(len(json.dumps(p.data, separators=(",", ":"))) for p in pubs)
        plain = [len(text_frame(ws_payload(p))) for p in pubs]
        squeezed = [len(deflate.frame(ws_payload(p))) for p in pubs]
        compressed = sum(1 for p in pubs if deflate.compress(ws_payload(p)) is not None)
        rows.append(_row(name, "/ws", data, plain, squeezed, compressed, len(pubs)))
        plain, squeezed, compressed = [], [], 0
        for p in pubs:
            prefix, tail = stomp_parts(p)
            plain.append(len(text_frame(prefix + tail)))
            data_tail = deflate.compress(tail)
            if data_tail is None:
                squeezed.append(plain[-1])
            else:
                compressed += 1
                body = deflate.stored_block(prefix) + data_tail
                squeezed.append(len(body) + (2 if len(body) < 126 else 4))
        rows.append(_row(name, "/stomp", data, plain, squeezed, compressed, len(pubs)))
    return rows


def _row(
    name: str, path: str, data: float, plain: list[int], squeezed: list[int], n: int, total: int
) -> str:
    p, s = statistics.mean(plain), statistics.mean(squeezed)
    return (
        f"| {name} | `{path}` | {data:.0f} B | {p:.0f} B | {s:.0f} B | {s / p:.2f} | {n}/{total} |"
    )


def envelope_table() -> list[str]:
    data = {"text": "x" * 89}  # 100 bytes of JSON
    pub = Publication("chat:lobby", 1234, "a1b2c3d4e5f6", data, 1_796_228_769_002)
    payload = ws_payload(pub)
    cursor = cursor_if_stored(pub) or ""
    frame = text_frame(payload)
    event = sse.publication_event(pub, cursor)
    parts = {
        "`data` (the payload)": len(json.dumps(data, separators=(",", ":"))),
        '`"channel":"chat:lobby"`': len('"channel":"chat:lobby",'),
        '`"offset":1234`': len('"offset":1234,'),
        '`"epoch":"a1b2c3d4e5f6"`': len('"epoch":"a1b2c3d4e5f6",'),
        '`"time":…` (ms)': len(f'"time":{pub.time},'),
        f'`"cursor":"…"` ({len(cursor)} chars)': len(f',"cursor":"{cursor}"'),
        '`{"data":}` punctuation': len('{"data":}'),
        "WebSocket frame header": len(frame) - len(payload),
    }
    rows = ["| part of a `/ws` frame | bytes |", "|---|---|"]
    rows += [f"| {name} | {size} |" for name, size in parts.items()]
    rows.append(f"| **frame** | **{len(frame)}** (payload {len(payload)}) |")
    rows.append(
        f"| the same on `/sse` (`id:` + `event:` + `data:` lines, cursor twice) | {len(event)} |"
    )
    squeezed = deflate.frame(payload)
    rows.append(f"| the `/ws` frame compressed | {len(squeezed)} |")
    return rows


# -- hub CPU --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_round(
    port: int, pid: int, pubs: list[Publication], subscribers: int, compression: str | None
) -> dict[str, float]:
    url = f"ws://127.0.0.1:{port}/ws"
    conns = [
        await websockets.connect(
            url, subprotocols=["clarion.v1"], compression=compression, max_size=None
        )
        for _ in range(subscribers)
    ]
    channel = f"bench:{compression}:{time.monotonic_ns()}"
    try:
        for conn in conns:
            await conn.send(json.dumps({"id": 1, "op": "subscribe", "channel": channel}))
            while '"id":1' not in await conn.recv():
                pass
        counts = [0] * subscribers

        async def read(i: int, conn: Any) -> None:
            while counts[i] < len(pubs):
                await conn.recv()
                counts[i] += 1

        readers = [asyncio.create_task(read(i, c)) for i, c in enumerate(conns)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            start_cpu, start = cpu_seconds(pid), time.monotonic()
            for i in range(0, len(pubs), 20):
                await asyncio.gather(
                    *(
                        http.post("/api/publish", json={"channel": channel, "data": p.data})
                        for p in pubs[i : i + 20]
                    )
                )
            await asyncio.wait_for(asyncio.gather(*readers), 120)
            cpu, wall = cpu_seconds(pid) - start_cpu, time.monotonic() - start
        deliveries = len(pubs) * subscribers
        return {"cpu_per_delivery_us": cpu / deliveries * 1e6, "wall": wall, "cpu": cpu}
    finally:
        for conn in conns:
            await conn.close()


async def cpu_rounds(args: argparse.Namespace, pubs: list[Publication]) -> dict[str, list[float]]:
    workroot = Path(tempfile.mkdtemp(prefix="clarion-deflate-"))
    server = start_server("clarion", "ws", workroot, core=1)
    results: dict[str, list[float]] = {"deflate": [], "off": []}
    try:
        for _ in range(args.rounds):
            for label, compression in (("deflate", "deflate"), ("off", None)):
                r = await one_round(server.port, server.pid, pubs, args.subscribers, compression)
                results[label].append(r["cpu_per_delivery_us"])
    finally:
        server.stop()
    return results


def compress_cost(pubs: list[Publication]) -> float:
    payloads = [ws_payload(p) for p in pubs]
    n = len(payloads)
    best = min(timeit.repeat(lambda: [deflate.compress(p) for p in payloads], number=1, repeat=5))
    return best / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--publications", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--feed", choices=["chat", "ticker"], default="chat")
    parser.add_argument("--no-cpu", action="store_true", help="bytes and envelope only")
    args = parser.parse_args(argv)
    rng = random.Random(7)
    feeds = {"chat": chat_feed(1000, rng), "ticker": ticker_feed(1000, rng)}
    print("\n".join(bytes_table(feeds)))
    print()
    print("\n".join(envelope_table()))
    print()
    for name, pubs in feeds.items():
        print(f"compressing one {name} publication in this process: {compress_cost(pubs):.1f} µs")
    if args.no_cpu:
        return 0
    pubs = (chat_feed if args.feed == "chat" else ticker_feed)(args.publications, rng)
    load = os.getloadavg()
    results = asyncio.run(cpu_rounds(args, pubs))
    on, off = statistics.median(results["deflate"]), statistics.median(results["off"])
    print()
    print(
        f"hub CPU per delivery, {args.feed}, {args.subscribers} subscribers, "
        f"{args.publications} publications x {args.rounds} rounds, load average "
        f"{load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end:"
    )
    print("| subscribers | compression | hub CPU per delivery (median) | rounds | ratio |")
    print("|---|---|---|---|---|")
    rounds_on = ", ".join(f"{x:.1f}" for x in results["deflate"])
    rounds_off = ", ".join(f"{x:.1f}" for x in results["off"])
    print(f"| {args.subscribers} | off | {off:.1f} µs | {rounds_off} | 1 |")
    print(f"| {args.subscribers} | deflate | {on:.1f} µs | {rounds_on} | {on / off:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
