"""Soak: one hub under hours-long mixed load, sampled every 10 s, checked at the end.

    python -m benchmarks.soak --minutes 30 --connections 5000

N connections spread over /ws, /stomp, /sse and /poll subscribe to many channels; a few
percent of them reconnect each minute from their cursors (churn); some WebSocket readers
stop reading for seconds at a time (slow readers, which the hub may disconnect: they come back
from their cursors too). A publisher publishes steadily through the HTTP API. Every 10 s the
hub's RSS, open fds, asyncio tasks and sessions and the p99 publish→receive latency are
sampled; the run writes ``soak.csv`` and ``soak.png`` (matplotlib, a benchmark-only
dependency) and, at the end, runs the history checker (``tests/support/history.py``) over
every client's log and the publisher's acknowledgements.

The hub runs in a child process of this script (``--serve``), which also reports its task and
session counts to a file; everything is on loopback and stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import websockets

from clarion.protocol.cursor import Cursor
from tests.support.history import ClientLog, PublisherLog, check, first_findings

HERE = Path(__file__).resolve().parent
TRANSPORTS = ("ws", "stomp", "sse", "poll")
SAMPLE_EVERY = 10.0
# Seconds before RSS counts as "after warm-up": history (kept 600 s) is full by then at any
# publication rate, so what grows afterwards is not history. A third of a shorter run.
WARM_UP = 660.0


# ---- the hub, in a child process ---------------------------------------------------------------


async def serve(port: int, status: Path) -> None:
    from clarion import Hub, Settings
    from clarion.standalone import make_server

    # History at its defaults (100 per channel, 10 minutes): full after 100 s at 50
    # publications/s over 50 channels, after its 10 minutes at any rate (WARM_UP).
    settings = Settings(
        data_dir=tempfile.mkdtemp(prefix="clarion-soak-"),
        limits={
            "max_connections_per_ip": 100_000,
            "max_connections": 100_000,
            # One address opens every connection: on a loaded machine more than the default
            # 1,000 of them may be mid-handshake at once.
            "max_pending_connections_per_ip": 100_000,
            "max_pending_connections": 100_000,
            # And every client resumes from it: more history than one address is allowed.
            "client_history_burst": 1 << 40,
            # And subscribes from it: more subscriptions than one address may start.
            "client_subscribe_burst": 1 << 40,
            "send_queue_bytes": 64 * 1024,
        },
    )
    hub = Hub(settings)
    server = make_server(hub, port=port)
    await server.start()
    print(f"listening on http://127.0.0.1:{server.port}", file=sys.stderr, flush=True)
    while True:
        tmp = status.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"tasks": len(asyncio.all_tasks()), "sessions": len(hub.sessions)})
        )
        tmp.replace(status)
        await asyncio.sleep(2)


# ---- clients -------------------------------------------------------------------------------------


class Client:
    """One subscriber: its transport, channel, cursor and log, across its connections."""

    def __init__(self, i: int, transport: str, channel: str, slow: bool) -> None:
        self.transport = transport
        self.channel = channel
        self.slow = slow
        self.log = ClientLog(f"{transport}-{i}")
        self.cursor: str | None = None
        self.connections = 0
        self.latencies: list[float] = []
        self.restart = asyncio.Event()

    def publication(self, pub: dict[str, Any], cursor: str) -> None:
        # Without its cursor (the checker reads positions only) and with the epoch interned:
        # thousands of clients hold millions of entries by the end of a long run.
        self.log.publication(self.channel, sys.intern(pub["epoch"]), pub["offset"])
        self.cursor = cursor
        data = pub.get("data")
        if isinstance(data, dict) and "t" in data:
            self.latencies.append(time.time() - data["t"])

    def subscribed(self, epoch: str, offset: int, cursor: str) -> None:
        self.log.subscribed(self.channel, epoch, offset, cursor)
        if self.cursor is None:
            self.cursor = cursor

    def reset(self, reason: str, cursor: str) -> None:
        position = Cursor.decode(cursor).get(self.channel)
        if position is not None:
            self.log.reset(self.channel, position.epoch, position.offset, reason, cursor)
        self.cursor = cursor

    async def run(self, port: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.restart.clear()
            session = asyncio.ensure_future(getattr(self, f"_{self.transport}")(port))
            ended = asyncio.ensure_future(_first(stop, self.restart))
            await asyncio.wait({session, ended}, return_when=asyncio.FIRST_COMPLETED)
            for task in (session, ended):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if not stop.is_set():
                await asyncio.sleep(random.uniform(0.05, 0.5))

    async def _ws(self, port: int) -> None:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws",
            subprotocols=["clarion.v1"],  # type: ignore[list-item]
            max_queue=4,
            # The hub's pings find dead peers; the client's own, answered late by a loaded
            # generator, would end healthy connections.
            ping_interval=None,
        ) as ws:
            self.connections += 1
            op: dict[str, Any] = {"id": 1, "op": "subscribe", "channel": self.channel}
            if self.cursor is not None:
                op["since"] = self.cursor
            await ws.send(json.dumps(op))
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("id") == 1:
                    ok = msg.get("ok")
                    if ok is None:
                        raise RuntimeError(msg)
                    if not ok.get("reset"):
                        self.subscribed(ok["epoch"], ok["offset"], ok["cursor"])
                elif "reset" in msg:
                    self.reset(msg["reset"]["reason"], msg["reset"]["cursor"])
                elif "offset" in msg:
                    self.publication(msg, msg["cursor"])
                if self.slow and random.random() < 0.01:
                    await asyncio.sleep(random.uniform(1, 5))  # stops reading for a while

    async def _stomp(self, port: int) -> None:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/stomp",
            subprotocols=["v12.stomp"],  # type: ignore[list-item]
            ping_interval=None,
        ) as ws:
            self.connections += 1
            await ws.send("CONNECT\naccept-version:1.2\nhost:soak\nheart-beat:0,0\n\n\x00")
            sub = f"SUBSCRIBE\nid:0\ndestination:/topic/{self.channel}\nreceipt:r1\n"
            if self.cursor is not None:
                sub += f"x-since:{self.cursor}\n"
            await ws.send(sub + "\n\x00")
            async for raw in ws:
                text = raw if isinstance(raw, str) else raw.decode()
                for frame in text.split("\x00"):
                    self._stomp_frame(frame.lstrip("\r\n"))

    def _stomp_frame(self, frame: str) -> None:
        if not frame:
            return
        head, _, body = frame.partition("\n\n")
        lines = head.split("\n")
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        if lines[0] == "ERROR":
            raise RuntimeError(frame[:200])
        if lines[0] != "MESSAGE":
            return
        if "x-reset" in headers:
            self.reset(headers["x-reset"], headers["x-cursor"])
            return
        pub = {
            "epoch": headers["x-epoch"],
            "offset": int(headers["x-offset"]),
            "data": json.loads(body),
        }
        if self.cursor is None:
            self.log.subscribed(self.channel, pub["epoch"], pub["offset"] - 1)
        self.publication(pub, headers["message-id"])

    async def _sse(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            path = f"/sse?channel={self.channel}"
            if self.cursor is not None:
                path += f"&cursor={self.cursor}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:100])
            self.connections += 1
            chunked = b"chunked" in head.lower()
            event: dict[str, str] = {}
            buf = b""
            while True:
                if chunked:
                    size = int((await reader.readline()).strip() or b"0", 16)
                    if size == 0:
                        return
                    buf += await reader.readexactly(size + 2)
                    buf = buf[:-2] if buf.endswith(b"\r\n") else buf
                else:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode().rstrip("\r")
                    if text == "":
                        self._sse_event(event)
                        event = {}
                    elif not text.startswith(":"):
                        key, _, value = text.partition(":")
                        event[key] = value.lstrip(" ")
        finally:
            writer.close()

    def _sse_event(self, event: dict[str, str]) -> None:
        if "data" not in event:
            return
        data = json.loads(event["data"])
        if event.get("event") == "reset":
            self.reset(data["reason"], data.get("cursor") or event["id"])
        elif "offset" in data:
            if self.cursor is None:
                self.log.subscribed(self.channel, data["epoch"], data["offset"] - 1)
            self.publication(data, event["id"])

    async def _poll(self, port: int) -> None:
        # A plain HTTP/1.1 keep-alive connection: httpx costs about a millisecond of this
        # process's CPU per request, which at thousands of long polls bounded the run.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            self.connections += 1
            while True:
                params = {"channel": self.channel, "timeout": "20"}
                if self.cursor is not None:
                    params["cursor"] = self.cursor
                writer.write(
                    f"GET /poll?{urlencode(params)} HTTP/1.1\r\nHost: soak\r\n\r\n".encode()
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 40)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head[:100])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self._poll_answer(json.loads(await reader.readexactly(length)))
        finally:
            writer.close()

    def _poll_answer(self, body: dict[str, Any]) -> None:
        if self.cursor is None:
            position = Cursor.decode(body["cursor"]).get(self.channel)
            if position is not None and not body["publications"]:
                self.subscribed(position.epoch, position.offset, body["cursor"])
                return
        if body.get("reset"):
            self.reset(body["reset"]["reason"], body["cursor"])
        for pub in body["publications"]:
            if self.cursor is None:
                self.log.subscribed(self.channel, pub["epoch"], pub["offset"] - 1)
            self.publication(pub, body["cursor"])
        self.cursor = body["cursor"]


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def publish(
    port: int, channels: list[str], rate: float, log: PublisherLog, stop: asyncio.Event
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        started, n = time.monotonic(), 0
        while not stop.is_set():
            channel = channels[n % len(channels)]
            data = {"n": n, "t": time.time()}
            try:
                r = await http.post("/api/publish", json={"channel": channel, "data": data})
                if r.status_code == 200:
                    log.ack(channel, r.json()["epoch"], r.json()["offset"], data)
                else:
                    log.refuse(str(r.status_code))
            except httpx.HTTPError as exc:
                log.refuse(type(exc).__name__)
            n += 1
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


# ---- sampling and the run ------------------------------------------------------------------------


def proc_figures(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = out / "hub-status.json"
    status.unlink(missing_ok=True)  # from an earlier run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.soak", "--serve", str(port), "--status", str(status)],
        stderr=(out / "hub.log").open("w"),
        env={k: v for k, v in os.environ.items() if not k.startswith("CLARION_")},
    )
    try:
        deadline = time.monotonic() + 30
        while not status.exists():
            if hub.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the hub did not start: see {out / 'hub.log'}")
            await asyncio.sleep(0.2)
        return await drive(args, port, hub.pid, status, out)
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(timeout=20)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()


async def drive(args: argparse.Namespace, port: int, pid: int, status: Path, out: Path) -> int:
    rng = random.Random(args.seed)
    channels = [f"soak:{k}" for k in range(args.channels)]
    clients = [
        Client(
            i,
            TRANSPORTS[i % 4],
            channels[i % len(channels)],
            slow=i % 4 == 0 and rng.random() < args.slow,
        )
        for i in range(args.connections)
    ]
    stop, stop_publishing = asyncio.Event(), asyncio.Event()
    tasks = []
    for k, client in enumerate(clients):
        tasks.append(asyncio.create_task(client.run(port, stop)))
        if k % 100 == 99:
            await asyncio.sleep(0.5)  # connect in waves, not in one burst
    await asyncio.sleep(5)
    publisher = PublisherLog()
    # Several publishers, each on its own channels: one alone is bound by its round trips,
    # which on a loaded generator's loop take a few hundred milliseconds.
    k = max(1, min(len(channels), int(args.rate // 2)))
    publishing = asyncio.gather(
        *(
            publish(port, channels[i::k], args.rate / k, publisher, stop_publishing)
            for i in range(k)
        )
    )
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    next_churn = started + 60
    with (out / "soak.csv").open("w", newline="") as fh:
        columns = "t rss_mb fds tasks sessions p99_ms received connections load"
        writer = csv.DictWriter(fh, columns.split())
        writer.writeheader()
        while time.monotonic() < end:
            await asyncio.sleep(SAMPLE_EVERY)
            now = time.monotonic()
            if now >= next_churn:
                next_churn += 60
                for client in rng.sample(clients, max(1, int(len(clients) * args.churn))):
                    client.restart.set()
            latencies = [v for c in clients for v in c.latencies]
            for c in clients:
                c.latencies.clear()
            rss, fds = proc_figures(pid)
            hub_status = json.loads(status.read_text())
            row = {
                "t": round(now - started),
                "rss_mb": round(rss / 2**20, 1),
                "fds": fds,
                "tasks": hub_status["tasks"],
                "sessions": hub_status["sessions"],
                "p99_ms": round(p99(latencies) * 1000, 1),
                "received": len(latencies),
                "connections": sum(c.connections for c in clients),
                "load": os.getloadavg()[0],  # the machine's: others share it
            }
            rows.append(row)
            writer.writerow(row)
            fh.flush()
            print(json.dumps(row), flush=True)
            # The clients' logs only grow: keep them out of the collector's full passes, which
            # over millions of entries would stall this process and show as hub latency.
            gc.freeze()
    stop_publishing.set()
    await publishing
    await asyncio.sleep(5)  # the last publications reach every client
    stop.set()
    # What the clients received is logged already: a session that has not closed within 30 s
    # (a close handshake the loaded machine answers late) is left, not waited for.
    _, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    print(f"stopped; {len(pending)} sessions left closing; checking", file=sys.stderr, flush=True)
    findings = check([c.log for c in clients], [publisher])
    plot(rows, out / "soak.png", args)
    summary = summarise(rows, findings, publisher, args)
    # Per transport, publications received and clients that received none: a transport whose
    # clients follow nothing would leave the checker nothing to find.
    summary["received_by_transport"] = {
        t: sum(
            sum(e.kind == "publication" for e in c.log.entries) for c in clients if c.transport == t
        )
        for t in TRANSPORTS
    }
    summary["clients_without_publications"] = sum(
        not any(e.kind == "publication" for e in c.log.entries) for c in clients
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    for finding in list(first_findings(findings).values())[:20]:
        print(finding)
    return 1 if findings else 0


def summarise(
    rows: list[dict[str, Any]],
    findings: list[Any],
    publisher: PublisherLog,
    args: argparse.Namespace,
) -> dict[str, Any]:
    warm = [r for r in rows if r["t"] >= min(WARM_UP, args.minutes * 60 / 3)] or rows
    first, last = warm[0], warm[-1]
    kinds: dict[str, int] = {}
    for f in findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    return {
        "minutes": args.minutes,
        "connections": args.connections,
        "channels": args.channels,
        "rate": args.rate,
        "published": len(publisher.acked),
        "refused": len(publisher.refused),
        "rss_mb_after_warmup": [first["rss_mb"], last["rss_mb"]],
        "rss_drift_pct": round((last["rss_mb"] - first["rss_mb"]) / first["rss_mb"] * 100, 2),
        "fds": [first["fds"], last["fds"], max(r["fds"] for r in warm)],
        "tasks": [first["tasks"], last["tasks"], max(r["tasks"] for r in warm)],
        "sessions": [first["sessions"], last["sessions"]],
        "load": [min(r["load"] for r in rows), max(r["load"] for r in rows)],
        "p99_ms_max": max((r["p99_ms"] for r in warm if r["p99_ms"] == r["p99_ms"]), default=None),
        "findings": kinds,
    }


def plot(rows: list[dict[str, Any]], path: Path, args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -r benchmarks/requirements.txt): no plot")
        return
    t = [r["t"] / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    for ax, key, label in zip(
        axes,
        ("rss_mb", "fds", "tasks", "p99_ms"),
        ("hub RSS (MiB)", "open fds", "asyncio tasks", "p99 latency (ms)"),
        strict=True,
    ):
        ax.plot(t, [r[key] for r in rows])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(f"soak: {args.connections} connections, {args.rate:g} publications/s")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--rate", type=float, default=50, help="publications per second")
    parser.add_argument("--churn", type=float, default=0.03, help="share reconnecting per minute")
    parser.add_argument("--slow", type=float, default=0.2, help="share of ws readers that stall")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "soak"))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--status", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve, Path(args.status)))
        return
    try:  # the load generator, not the hub, is what runs short of CPU: the faster loop
        import uvloop

        raise SystemExit(uvloop.run(run(args)))
    except ImportError:
        raise SystemExit(asyncio.run(run(args))) from None


if __name__ == "__main__":
    main()
