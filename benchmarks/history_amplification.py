"""Small requests for many stored publications, by peers that never read: what the hub spends.

A channel holds ``--publications`` publications of 60 KB (``history_size`` raised for its
namespace). Then, while a well-behaved subscriber measures its delivery latency:

* ``A``: ``--peers`` raw sockets with a 4 KB receive buffer send
  ``GET /client/history?channel=quiet:big&limit=1000`` and never read;
* ``B``: the same with ``GET /sse?channel=quiet:big&cursor=<offset 0>`` (a forged resume);
* ``C``: ``--peers`` WebSocket peers send five ``history`` ops each and never read.

It reports the hub's RSS before and at its peak, the hub's CPU seconds, and the subscriber's
latency (p50, max) over 20 publications::

    .venv/bin/python -m benchmarks.history_amplification --attack A --port 18311

``PYTHONPATH=<tree>/src`` in front measures another tree the same way (``clarion serve`` is
started with this interpreter and that environment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import websockets
from websockets.typing import Subprotocol

CHANNEL = "quiet:big"
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: clarion.v1\r\n\r\n"
)


def masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    head = bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0xFE)) + size.to_bytes(2)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def small_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


async def attack(pid: int, port: int, kind: str, publications: int, peers: int) -> str:
    from clarion.protocol.cursor import encode_single

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for _ in range(100):
            try:
                await http.get("/healthz")
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        epoch = ""
        for n in range(publications):
            r = await http.post(
                "/api/publish", json={"channel": CHANNEL, "data": {"n": n, "pad": "x" * 60000}}
            )
            epoch = epoch or r.json()["epoch"]
        url = f"ws://127.0.0.1:{port}/ws"
        async with websockets.connect(url, subprotocols=[Subprotocol("clarion.v1")]) as ws:
            await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": "news"}))
            await ws.recv()
            await asyncio.sleep(0.5)
            before, cpu = rss_mb(pid), cpu_seconds(pid)
            sockets = [small_socket(port) for _ in range(peers)]
            if kind == "A":
                request = f"GET /client/history?channel={CHANNEL}&limit=1000 HTTP/1.1\r\n"
            elif kind == "B":
                cursor = encode_single(CHANNEL, epoch, 0)
                request = f"GET /sse?channel={CHANNEL}&cursor={cursor} HTTP/1.1\r\n"
            op = json.dumps({"op": "history", "channel": CHANNEL, "limit": 1000}).encode()
            for sock in sockets:
                if kind == "C":
                    sock.sendall(UPGRADE + masked(op) * 5)
                else:
                    sock.sendall(f"{request}Host: x\r\n\r\n".encode())
            latencies, peak = [], before
            for i in range(20):
                started = time.monotonic()
                await http.post("/api/publish", json={"channel": "news", "data": {"i": i}})
                while json.loads(await ws.recv()).get("data") != {"i": i}:
                    pass
                latencies.append((time.monotonic() - started) * 1000)
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.1)
            spent = cpu_seconds(pid) - cpu
            for sock in sockets:
                sock.close()
    latencies.sort()
    return (
        f"{kind}: RSS {before} MB -> peak {peak} MB; hub CPU {spent:.2f} s; "
        f"subscriber latency p50 {latencies[10]:.1f} ms, max {latencies[-1]:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", choices=("A", "B", "C"), default="A")
    parser.add_argument("--port", type=int, default=18311)
    parser.add_argument("--publications", type=int, default=1000)
    parser.add_argument("--peers", type=int, default=30)
    args = parser.parse_args()
    env = {
        **os.environ,
        "CLARION_NAMESPACES__QUIET__HISTORY_SIZE": "1000",
        "CLARION_NAMESPACES__QUIET__HISTORY_TTL": "3600",
    }
    hub = subprocess.Popen(
        [sys.executable, "-m", "clarion.cli", "serve", "--port", str(args.port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        print(asyncio.run(attack(hub.pid, args.port, args.attack, args.publications, args.peers)))
    finally:
        hub.kill()
        hub.wait()


if __name__ == "__main__":
    main()
