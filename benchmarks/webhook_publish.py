"""What one matching webhook endpoint costs a publisher: publications/s over HTTP, with and without.

    .venv/bin/python -m benchmarks.webhook_publish [--engine memory|redis] [--publishers 16]
        [--duration 5] [--rounds 3]

Each round starts two fresh ``clarion serve`` hubs in turn, pinned to core 1: the reference,
with no webhook, and the same hub with one endpoint whose pattern matches every publication
(its receiver, a minimal HTTP server answering ``204``, runs in this process on loopback).
``--publishers`` keep-alive connections each ``POST /api/publish`` in a closed loop for
``--duration`` seconds; the figure is the count of ``200`` answers per second. With the webhook,
every answered publish has been written to the outbox first. With ``--engine redis`` a
``redis-server`` of its own is started (nothing persisted) and both hubs use it.

The load generator and the receiver share core 0. Rounds alternate reference and webhook, so
that a busy machine weighs on both; the report shows every round and the median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httptools

from benchmarks.loadgen import Publisher
from benchmarks.servers import Server, http_get, start_redis, start_server

CHANNEL = "bench:orders"
BODY = json.dumps({"channel": CHANNEL, "data": {"text": "hello, world", "n": 12345}}).encode()


class Receiver(asyncio.Protocol):
    """Answers every request ``204`` at once (keep-alive) and counts them."""

    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        Receiver.count += 1
        self.transport.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")


def _post_json(port: int, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    body = json.dumps(payload).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"POST %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
        )
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


async def publish_for(port: int, publishers: int, duration: float) -> tuple[int, int]:
    """``publishers`` closed loops of ``POST /api/publish`` for ``duration`` s: (200s, others)."""
    loop = asyncio.get_running_loop()
    ok = failed = 0
    deadline = 0.0

    def done(publisher: Publisher, status: int, body: bytes) -> None:
        nonlocal ok, failed
        if status == 200:
            ok += 1
        else:
            failed += 1
        if loop.time() < deadline:
            publisher.post("/api/publish", BODY)

    def lost(publisher: Publisher) -> None:
        return None

    conns = []
    for _ in range(publishers):
        _, proto = await loop.create_connection(
            lambda: Publisher("127.0.0.1", port, done, lost), "127.0.0.1", port
        )
        conns.append(proto)
    deadline = loop.time() + duration
    for proto in conns:
        proto.post("/api/publish", BODY)
    await asyncio.sleep(duration)
    while any(p.busy for p in conns):  # the last answers of the window
        await asyncio.sleep(0.01)
    for proto in conns:
        if proto.transport is not None:
            proto.transport.close()
    return ok, failed


async def measure_one(
    workroot: Path, env: dict[str, str], hook_port: int | None, args: argparse.Namespace
) -> dict[str, float]:
    server: Server = start_server("clarion", "http", workroot, core=1, env_extra=env)
    try:
        if hook_port is not None:
            status, body = _post_json(
                server.port,
                "/api/webhooks",
                {"url": f"http://127.0.0.1:{hook_port}/hook", "channels": ["bench:*"]},
            )
            if status != 200:
                raise RuntimeError(f"registering the webhook failed: {status} {body!r}")
        # Warm up (connections, routes, the outbox's first writes) before the window.
        await publish_for(server.port, args.publishers, 0.5)
        received = Receiver.count
        start = time.perf_counter()
        ok, failed = await publish_for(server.port, args.publishers, args.duration)
        elapsed = time.perf_counter() - start
        delivered = Receiver.count - received
        status, _ = http_get(server.port, "/healthz")
        if status != 200:
            raise RuntimeError(f"the hub is unhealthy after the run: {server.log_tail()}")
        return {"rate": ok / elapsed, "failed": failed, "delivered": delivered / elapsed}
    finally:
        server.stop()


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    receiver = await loop.create_server(Receiver, "127.0.0.1", 0)
    hook_port = receiver.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        workroot = Path(tmp)
        redis = start_redis(workroot, core=1) if args.engine == "redis" else None
        try:
            rows = []
            for n in range(args.rounds):
                base = {
                    "CLARION_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
                    "CLARION_NAMESPACES__DEFAULT__PRESENCE": "false",
                }
                if redis is not None:
                    # A prefix per hub: the webhook hub's shared registry stays its own.
                    base["CLARION_ENGINE"] = f"redis://127.0.0.1:{redis.port}/0?prefix=b{n}"
                ref = await measure_one(
                    workroot, {**base, "CLARION_DATA_DIR": str(workroot / f"ref{n}")}, None, args
                )
                if redis is not None:
                    base["CLARION_ENGINE"] = f"redis://127.0.0.1:{redis.port}/0?prefix=w{n}"
                env = {**base, "CLARION_DATA_DIR": str(workroot / f"wh{n}")}
                hook = await measure_one(workroot, env, hook_port, args)
                rows.append((ref, hook))
                ratio = hook["rate"] / ref["rate"]
                print(
                    f"round {n + 1}: no webhook {ref['rate']:8.0f} pub/s   "
                    f"one webhook {hook['rate']:8.0f} pub/s   ratio {ratio:.2f}"
                    f"   (receiver got {hook['delivered']:.0f}/s; non-200 answers "
                    f"{ref['failed']:.0f}/{hook['failed']:.0f})",
                    flush=True,
                )
        finally:
            if redis is not None:
                redis.stop()
            receiver.close()
    refs = [r["rate"] for r, _ in rows]
    hooks = [h["rate"] for _, h in rows]
    ratio = statistics.median(h["rate"] / r["rate"] for r, h in rows)
    print(
        f"engine {args.engine}, {args.publishers} publishers, {args.duration:g} s x "
        f"{args.rounds} rounds: no webhook {statistics.median(refs):.0f} pub/s, one webhook "
        f"{statistics.median(hooks):.0f} pub/s, median ratio {ratio:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("memory", "redis"), default="memory")
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop

    with contextlib.suppress(OSError, AttributeError):  # the hubs have core 1 to themselves
        os.sched_setaffinity(0, {0})

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
