"""What one ``GET /poll`` costs the hub when nothing is pending, by the number of its channels.

    .venv/bin/python -m benchmarks.poll_cost [--polls 2000] [--channels 1,16,128] [--src DIR]
        [--engine redis://127.0.0.1:6379/9] [--wait SECONDS] [--sse [--fresh]]

``clarion serve`` (memory engine, its once-a-second passes off) runs in its own process; each
channel holds one publication, and a client on one keep-alive connection sends ``--polls`` plain
polls (``timeout=0``) naming the channels with the cursor a first poll gave, so every channel is
checked against its position and none has anything newer: the wide poll an address can repeat.
It prints the server's process CPU (user and kernel) per request, and per channel past the
first against a one-channel poll measured in the same run. ``--engine redis://127.0.0.1:6379/9``
runs it on that Redis instead (channels named anew each run: nothing is flushed), and prints
Redis' commands and CPU per poll too, from ``INFO commandstats``. ``--src DIR`` runs the hub
from another tree's ``src``, for before/after figures; ``--cprofile FILE`` profiles the hub
over the widest polls. ``--wait 0.001`` sends long polls instead (``timeout=0.001``): each
finds nothing, subscribes its channels, waits that long and answers, so what is measured is a
long poll's whole cycle with nothing new. ``--sse`` opens event streams instead, each on a
connection of its own with the first poll's cursor as its ``Last-Event-ID`` (a client
reconnecting its stream), read up to the stream's first ``id:`` and closed; with ``--fresh``
each stream names channels never named before, without a cursor (a stream opened anew).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

import clarion
from benchmarks.loadgen import proc_cpu_seconds
from benchmarks.resume_cost import _SERVE, _SERVE_CPROFILE
from benchmarks.servers import CLARION_ENV, free_port, wait_healthy

# What is measured is the hub's CPU, not its refusals: the poll budget (where the hub has
# one: an older tree's ``--src`` has not) is out of reach.
_UNBOUNDED = {
    "CLARION_LIMITS__CLIENT_POLL_CHECK_RATE": str(1 << 40),
    "CLARION_LIMITS__CLIENT_POLL_CHECK_BURST": str(1 << 40),
}


def _env(src: str | None, cprofile: Path | None) -> dict[str, str]:
    env = {**os.environ, **CLARION_ENV, "RESUME_COST_CPROFILE": str(cprofile)}
    settings = Path(clarion.__file__).parent / "settings.py"
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve())
        settings = Path(src) / "clarion" / "settings.py"
    if "client_poll_check_rate" in settings.read_text():
        env.update(_UNBOUNDED)
    return env


class _Connection:
    """One keep-alive HTTP/1.1 connection, a request at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        header, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            self.buffer += self._recv()
        reply, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(header.split(b" ", 2)[1]), reply

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def _poll_target(channels: list[str], cursor: str | None, wait: float = 0) -> str:
    query = "&".join(f"channel={c}" for c in channels)
    if cursor is not None:
        query += f"&cursor={cursor}"
    return f"/poll?{query}&timeout={wait:g}"


def _redis_work(redis: Any) -> tuple[int, int]:
    """Commands Redis has run (those of scripts included; not INFO) and their µs, so far."""
    stats = redis.info("commandstats")
    mine = [s for name, s in stats.items() if name != "cmdstat_info"]
    return sum(int(s["calls"]) for s in mine), sum(int(s["usec"]) for s in mine)


def _open_stream(port: int, channels: list[str], cursor: str | None) -> None:
    """An event stream of ``channels``, read up to its first ``id:``, then dropped."""
    query = "&".join(f"channel={c}" for c in channels)
    head = f"GET /sse?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if cursor is not None:
        head += f"Last-Event-ID: {cursor}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n")
        got = b""
        while b"\nid:" not in got:
            chunk = sock.recv(1 << 20)
            if not chunk or got.startswith(b"HTTP/1.1 4"):
                raise RuntimeError(f"sse: {got[:200]!r}")
            got += chunk


class _Mode:
    """What each request is: a poll (``wait`` its timeout), or a stream opened (``sse``), on
    the same channels or (``fresh``) on new ones each time."""

    def __init__(self, port: int, wait: float, sse: bool, fresh: bool) -> None:
        self.port, self.wait, self.sse, self.fresh = port, wait, sse, fresh
        self.opened = 0

    def run(self, conn: _Connection, target: str, channels: list[str], cursor: str) -> None:
        if not self.sse:
            status, body = conn.request("GET", target)
            if status != 200 or orjson.loads(body)["publications"]:
                raise RuntimeError(f"poll: {status} {body[:200]!r}")
        elif self.fresh:
            self.opened += 1
            _open_stream(self.port, [f"{c}-{self.opened}" for c in channels], None)
        else:
            _open_stream(self.port, channels, cursor)


def _per_poll(
    conn: _Connection,
    pid: int,
    channels: list[str],
    polls: int,
    mode: _Mode,
    redis: Any = None,
) -> tuple[float, tuple[float, float] | None]:
    """Server CPU seconds per poll of ``channels``, none with anything newer than its cursor;
    with ``redis``, its commands and µs per poll too."""
    status, body = conn.request("GET", _poll_target(channels, None))
    if status != 200:
        raise RuntimeError(f"poll: {status} {body[:200]!r}")
    cursor = orjson.loads(body)["cursor"]
    target = _poll_target(channels, cursor, mode.wait)
    for _ in range(50):  # warm-up
        mode.run(conn, target, channels, cursor)
    work = _redis_work(redis) if redis is not None else (0, 0)
    before = proc_cpu_seconds([pid])
    for _ in range(polls):
        mode.run(conn, target, channels, cursor)
    cpu = (proc_cpu_seconds([pid]) - before) / polls
    if redis is None:
        return cpu, None
    calls, usec = _redis_work(redis)
    return cpu, ((calls - work[0]) / polls, (usec - work[1]) / polls)


def _row(n: int, cost: float, extra: str, redis: tuple[float, float] | None) -> str:
    row = f"{n:>8} {cost * 1e6:>9.1f} {extra:>17}"
    if redis is not None:
        row += f" {redis[0]:>15.1f} {redis[1]:>12.1f}"
    return row


def measure(
    polls: int,
    counts: list[int],
    src: str | None,
    cprofile: Path | None,
    engine: str | None,
    mode: _Mode,
) -> None:
    port = mode.port = free_port()
    env = _env(src, cprofile)
    serve = _SERVE if cprofile is None else _SERVE_CPROFILE
    cmd = [sys.executable, "-c", serve, "serve", "--host", "127.0.0.1", "--port", str(port)]
    redis = None
    if engine is not None:
        import redis as redis_py

        redis = redis_py.Redis.from_url(engine)
        cmd += ["--engine", engine]
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [*cmd, "--log-level", "warning"],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        conn = None
        try:
            wait_healthy(port, proc, 30)
            conn = _Connection(port)
            widest = max(counts)
            run = os.urandom(4).hex()  # a Redis keeps earlier runs' channels
            channels = [f"bench:room-{run}-{i}" for i in range(widest)]
            for channel in channels:
                body = orjson.dumps({"channel": channel, "data": {"text": "hello"}})
                if conn.request("POST", "/api/publish", body)[0] != 200:
                    raise RuntimeError("publish failed")
            reference, work = _per_poll(conn, proc.pid, channels[:1], polls, mode, redis)
            head = f"{'channels':>8} {'µs/poll':>9} {'µs/extra channel':>17}"
            if redis is not None:
                head += f" {'Redis cmds/poll':>15} {'Redis µs/poll':>12}"
            print(head)
            print(_row(1, reference, "-", work))
            for n in counts:
                if n == 1:
                    continue
                if cprofile is not None and n == widest:
                    proc.send_signal(signal.SIGUSR1)
                cost, work = _per_poll(conn, proc.pid, channels[:n], polls, mode, redis)
                if cprofile is not None and n == widest:
                    proc.send_signal(signal.SIGUSR2)
                    time.sleep(1.0)
                extra = (cost - reference) / (n - 1)
                print(_row(n, cost, f"{extra * 1e6:.2f}", work))
        finally:
            if conn is not None:
                conn.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            if redis is not None:
                redis.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--channels", default="1,16,128")
    parser.add_argument("--src", help="run the hub from this tree's src directory")
    parser.add_argument("--cprofile", type=Path, help="write the hub's profile of the widest polls")
    parser.add_argument("--engine", help="a Redis URL, instead of the memory engine")
    parser.add_argument("--wait", type=float, default=0, help="long polls of this timeout")
    parser.add_argument("--sse", action="store_true", help="event streams opened, not polls")
    parser.add_argument("--fresh", action="store_true", help="with --sse: new channels each time")
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.channels.split(",")})
    mode = _Mode(0, args.wait, args.sse, args.fresh)
    measure(args.polls, counts, args.src, args.cprofile, args.engine, mode)


if __name__ == "__main__":
    main()
