"""What subscribe/unsubscribe churn costs the other sessions of a hub.

``clarion serve`` (memory engine, its own process) with one namespace, ``chat``: anonymous,
presence readable by anyone, ``join_leave`` as asked. A watcher subscribes to ``chat:watch``;
the backend publishes a timestamp there every 50 ms over HTTP; ``--attackers`` anonymous
``/ws`` connections send ``subscribe``/``unsubscribe`` of that channel back to back without
waiting for replies (``--reconnect``: a closed attacker comes back at once, ignoring its close
code). Printed: the join/leave events the watcher got per second, its publication latency, the
publications it missed, whether it was closed, how many publishes the backend got through, how
each attacker was closed, and the hub's RSS::

    .venv/bin/python -m benchmarks.subscribe_churn --attackers 2 --join-leave client
    .venv/bin/python -m benchmarks.subscribe_churn --attackers 12 --join-leave off

``--op presence --fill 950``: the channel first gets 950 more anonymous subscribers, and each
attacker instead opens a raw connection, writes an upgrade, a ``connect`` and 280 ``presence``
ops of the channel at once, reads nothing, drops it after 0.3 s and opens the next (a full
channel's listing, a thousand entries, per op)::

    .venv/bin/python -m benchmarks.subscribe_churn --op presence --fill 950 --attackers 10 \
        --seconds 15

``--src DIR`` runs the hub from another tree's ``src`` (one built with its extension), to
compare two trees on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from benchmarks.servers import CLARION_ENV, wait_healthy

CHANNEL = "chat:watch"
PROTOCOL = [Subprotocol("clarion.v1")]


def _config(join_leave: str) -> str:
    value = {"client": '"client"', "user": '"user"', "off": "false"}[join_leave]
    return f'[namespaces.chat]\nanonymous = true\npresence_read = "anyone"\njoin_leave = {value}\n'


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def _attacker(url: str, stop: float, reconnect: bool, closes: Counter[str]) -> None:
    ops = [
        json.dumps({"id": i, "op": ("subscribe", "unsubscribe")[i % 2], "channel": CHANNEL})
        for i in range(100)
    ]
    while time.monotonic() < stop:
        try:
            async with websockets.connect(url, subprotocols=PROTOCOL, max_queue=None) as conn:
                try:
                    while time.monotonic() < stop:
                        for op in ops:
                            await conn.send(op)
                        await asyncio.sleep(0.001)
                except ConnectionClosed:
                    pass
                closes[str(conn.close_code)] += 1
        except (OSError, websockets.InvalidStatus) as exc:
            closes[type(exc).__name__] += 1
            await asyncio.sleep(0.05)
        if not reconnect:
            return


def _masked(text: str) -> bytes:
    """One client text frame (masked, as a client's must be)."""
    data, mask = text.encode(), os.urandom(4)
    size = len(data)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def _lister(port: int, stop: float, closes: Counter[str]) -> None:
    """Upgrade, ``connect`` and 280 ``presence`` ops in one write, nothing read, dropped after
    0.3 s; again until ``stop``: each connection a fresh budget of its own."""
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    ops = [json.dumps({"id": i, "op": "presence", "channel": CHANNEL}) for i in range(280)]
    burst = upgrade + _masked('{"id": 0, "op": "connect"}') + b"".join(map(_masked, ops))
    while time.monotonic() < stop:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(burst)
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.transport.abort()
            closes["dropped"] += 1
        except OSError as exc:
            closes[type(exc).__name__] += 1
            await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="clarion-churn-"))
    (workdir / "clarion.toml").write_text(_config(args.join_leave))
    env = {**os.environ, **CLARION_ENV}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    cmd = [sys.executable, "-m", "clarion", "serve", "--port", str(args.port)]
    cmd += ["--log-level", "warning"]
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{args.port}"
    url = f"ws://127.0.0.1:{args.port}/ws"
    try:
        await asyncio.to_thread(wait_healthy, args.port, proc, 20)
        fill = []
        for _ in range(args.fill):  # the channel's presence, for listings to cost what they do
            conn = await websockets.connect(url, subprotocols=PROTOCOL, compression=None)
            await conn.send(json.dumps({"id": 1, "op": "subscribe", "channel": CHANNEL}))
            await conn.recv()
            fill.append(conn)
        rss_before = _rss(proc.pid)
        events: Counter[str] = Counter()
        latencies: list[float] = []
        watcher_closed: list[int | None] = []
        async with websockets.connect(url, subprotocols=PROTOCOL, max_queue=None) as watcher:
            await watcher.send(json.dumps({"id": 1, "op": "subscribe", "channel": CHANNEL}))

            async def watch() -> None:
                try:
                    async for raw in watcher:
                        msg = json.loads(raw)
                        for kind in ("join", "leave"):
                            if kind in msg:
                                events[kind] += 1
                        if "offset" in msg and isinstance(msg.get("data"), dict):
                            latencies.append(time.monotonic() - msg["data"]["t"])
                except ConnectionClosed:
                    pass
                watcher_closed.append(watcher.close_code)

            reader = asyncio.create_task(watch())
            await asyncio.sleep(0.2)
            start = time.monotonic()
            stop = start + args.seconds
            closes: Counter[str] = Counter()
            attackers = [
                asyncio.create_task(
                    _lister(args.port, stop, closes)
                    if args.op == "presence"
                    else _attacker(url, stop, args.reconnect, closes)
                )
                for _ in range(args.attackers)
            ]
            published = 0
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                while time.monotonic() < stop:
                    await http.post(
                        "/api/publish", json={"channel": CHANNEL, "data": {"t": time.monotonic()}}
                    )
                    published += 1
                    await asyncio.sleep(0.05)
            rss_peak = _rss(proc.pid)
            await asyncio.gather(*attackers)
            deadline = time.monotonic() + 10
            while len(latencies) < published and not watcher_closed:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            reader.cancel()
        for conn in fill:
            await conn.close()
        ordered = sorted(latencies)
        return {
            "op": args.op,
            "attackers": args.attackers,
            "join_leave": args.join_leave,
            "seconds": args.seconds,
            "events_per_s": round((events["join"] + events["leave"]) / args.seconds),
            "latency_p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
            "latency_p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1)
            if ordered
            else None,
            "latency_max_ms": round(ordered[-1] * 1000, 1) if ordered else None,
            "published": published,
            "publishes_per_s": round(published / args.seconds, 1),
            "missed": published - len(latencies),
            "watcher_closed": watcher_closed[0] if watcher_closed else None,
            "attacker_closes": dict(closes),
            "rss_mb": [round(rss_before / 2**20), round(rss_peak / 2**20)],
        }
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attackers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--join-leave", choices=["client", "user", "off"], default="client")
    parser.add_argument("--reconnect", action="store_true")
    parser.add_argument("--op", choices=["churn", "presence"], default="churn")
    parser.add_argument("--fill", type=int, default=0, help="more subscribers of the channel")
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--src", help="run the hub from this tree's src directory")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
