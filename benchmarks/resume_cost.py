"""The hub's cost of one reconnecting session, counted apart from the machine's load.

What every client of P5's reconnect storm costs the hub once it is back: the TCP accept, the
HTTP upgrade and the handshake's response, the session, ``subscribe`` with ``since`` (a cursor
``--backlog`` publications back) and its reply, and the backlog read from history and written.
``clarion serve`` (memory engine, or ``--engine redis``: a ``redis-server`` of its own) runs in
its own process; ``--sessions`` clients connect to ``/ws``, up to ``--in-flight`` at a time, as
P5's do (no token, one channel), and each is done once it has the reply and its backlog. Nothing
is published meanwhile, so the fan-out of live publications — the other part of a storm's cost
— is left out, and every session does the same work.

It prints the server's process CPU per session (blurred by other work on the machine), or with
``--callgrind`` the user-space instructions the server executed per session (``valgrind
--tool=callgrind --instr-atstart=no``, counting from the first connection to the last backlog,
minus an idle stretch as long; the kernel's part of each syscall is not counted). The hub runs
without its once-a-second passes over its sessions (the sweep, the node's figures), whose cost
depends on how long the sessions take to connect (tens of seconds under valgrind), not on what
each costs. Instruction counts do
not depend on the load, so two trees compare on a busy machine::

    .venv/bin/python -m benchmarks.resume_cost --sessions 2000 --callgrind
    .venv/bin/python -m benchmarks.resume_cost --sessions 2000 --callgrind --keep cg.out
    callgrind_annotate --inclusive=yes cg.out | head -60

The sessions are then dropped (reset) and the server stopped: the close path is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.delivery_cost import _callgrind, _callgrind_dump, _instructions
from benchmarks.loadgen import (
    MARKER,
    make_payload,
    mask_frame,
    proc_cpu_seconds,
    subscribe_op,
    ws_upgrade_request,
)
from benchmarks.servers import CLARION_ENV, free_port, http_get, under_callgrind, wait_healthy

CHANNEL = "bench"
_LINGER_ZERO = struct.pack("ii", 1, 0)
# ``clarion serve`` without the hub's once-a-second passes over its sessions (the sweep, the
# node's figures): under valgrind the sessions take tens of seconds to connect, and the passes
# over them, which depend on how long that takes and not on what a session costs, would blur
# the count.
_SERVE = (
    "import clarion.core.sweeper as sweeper; sweeper.TICK = 1e6\n"
    "import clarion.core.nodes as nodes; nodes.INTERVAL = 1e6\n"
    "from clarion.cli import main; raise SystemExit(main())"
)
# The same, with cProfile turned on by SIGUSR1 and its statistics written (to the path in
# RESUME_COST_CPROFILE) by SIGUSR2.
_SERVE_CPROFILE = (
    "import cProfile, os, signal\n"
    "profile = cProfile.Profile()\n"
    "signal.signal(signal.SIGUSR1, lambda *_: profile.enable())\n"
    "def dump(*_):\n"
    "    profile.disable(); profile.dump_stats(os.environ['RESUME_COST_CPROFILE'])\n"
    "signal.signal(signal.SIGUSR2, dump)\n" + _SERVE
)


def _start(
    workdir: Path, port: int, callgrind: Path | None, cprofile: Path | None = None
) -> subprocess.Popen[bytes]:
    serve = _SERVE if cprofile is None else _SERVE_CPROFILE
    cmd = [sys.executable, "-c", serve, "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning"]
    if callgrind is not None:
        cmd = under_callgrind(cmd, callgrind)
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd,
        cwd=workdir,
        env={**os.environ, **CLARION_ENV, "RESUME_COST_CPROFILE": str(cprofile)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


class _Client(asyncio.Protocol):
    """One reconnecting client: upgrade, ``subscribe`` with ``since``, reply and backlog."""

    def __init__(self, request: bytes, subscribe: bytes, backlog: int) -> None:
        self.request = request
        self.subscribe = subscribe
        self.backlog = backlog
        self.open = False
        self.replied = False
        self.received = 0
        self.buf = b""
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.buf += data
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.done.set_exception(RuntimeError(head[:64].decode("latin-1")))
                return
            self.open = True
            self.buf = b""
            assert self.transport is not None
            self.transport.write(self.subscribe)
            data = rest
        self.buf += data
        if not self.replied and b'"id":1' in self.buf:
            self.replied = True
        self.received = self.buf.count(MARKER)
        if self.replied and self.received >= self.backlog and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before its backlog"))


def _post(port: int, body: bytes) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    reply: dict[str, Any] = orjson.loads(data.partition(b"\r\n\r\n")[2])
    return reply


def _cursor(port: int, offset: int) -> str:
    """The cursor a client holds once it has received publication ``offset``."""
    status, body = http_get(port, f"/api/history?channel={CHANNEL}&limit={offset}", timeout=60)
    if status != 200:
        raise RuntimeError(f"history: {status}")
    pubs = json.loads(body)["publications"]
    return str(pubs[offset - 1]["cursor"])


async def _wave(port: int, n: int, in_flight: int, subscribe: bytes, backlog: int) -> list[Any]:
    loop = asyncio.get_running_loop()
    request = ws_upgrade_request("127.0.0.1", port, "/ws", "clarion.v1")
    sem = asyncio.Semaphore(in_flight)
    transports: list[Any] = []

    async def one() -> None:
        async with sem:
            tr, client = await loop.create_connection(
                lambda: _Client(request, subscribe, backlog), "127.0.0.1", port
            )
            transports.append(tr)
            await client.done

    await asyncio.gather(*(one() for _ in range(n)))
    return transports


async def measure(
    sessions: int,
    backlog: int,
    in_flight: int,
    callgrind: bool,
    engine: str = "memory",
    keep: Path | None = None,
    spy: Path | None = None,
    cprofile: Path | None = None,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="resume-cost-"))
    port = 0
    out = workdir / "cg.out" if callgrind else None
    redis: subprocess.Popen[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    slow = 60.0 if callgrind else 1.0  # valgrind runs the server tens of times slower
    env_before = dict(os.environ)
    try:
        if engine == "redis":
            rport = free_port()
            redis = subprocess.Popen(
                ["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=workdir,
            )
            os.environ["CLARION_ENGINE"] = f"redis://127.0.0.1:{rport}/0"
        port = free_port()
        proc = _start(workdir, port, out, cprofile)
        try:
            await asyncio.to_thread(wait_healthy, port, proc, 30 * slow, slow)
        except RuntimeError as exc:
            log = (workdir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the hub did not start:\n{log}") from exc
        for seq in range(1, backlog + 4):
            data = make_payload(seq, 100)
            _post(port, b'{"channel":"%s","data":%s}' % (CHANNEL.encode(), data))
        # Every client resumes after publication 3: the rest is its backlog.
        subscribe = mask_frame(subscribe_op(_cursor(port, 3), CHANNEL))
        # Warm-up: every path has run once (imports, caches, the channel's first subscriber).
        warm = await _wave(port, min(50, sessions), in_flight, subscribe, backlog)
        for tr in warm:
            tr.abort()
        await asyncio.sleep(0.5 * slow)
        if callgrind:
            _callgrind("on", proc.pid)
        spying = None
        if spy is not None:
            args = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(proc.pid)]
            args += ["-r", "500", "--format", "raw", "--nonblocking", "-o", str(spy)]
            spying = subprocess.Popen(args, stdout=subprocess.DEVNULL)
            await asyncio.sleep(1.0)  # py-spy attaches
        if cprofile is not None:
            proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.2)
        cpu0, wall0 = proc_cpu_seconds([proc.pid]), time.monotonic()
        clients = await asyncio.wait_for(
            _wave(port, sessions, in_flight, subscribe, backlog), 600 * slow
        )
        cpu, wall = proc_cpu_seconds([proc.pid]) - cpu0, time.monotonic() - wall0
        if cprofile is not None:
            proc.send_signal(signal.SIGUSR2)
            await asyncio.sleep(2.0)  # the statistics are written
        if spying is not None:
            spying.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spying.wait(30)
        result: dict[str, Any] = {
            "engine": engine,
            "sessions": sessions,
            "backlog": backlog,
            "in_flight": in_flight,
        }
        if callgrind:
            # The sessions, then as long idle with them open: the hub's per-second sweep runs
            # in both, and under valgrind the first part lasts tens of times longer than it
            # would.
            _callgrind_dump(proc.pid)
            await asyncio.sleep(wall)
            _callgrind_dump(proc.pid)
            _callgrind("off", proc.pid)
        else:
            result["cpu_ms_per_session"] = round(1000 * cpu / sessions, 4)
            result["seconds"] = round(wall, 2)
        for tr in clients:
            tr.abort()
        if callgrind:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60 * slow)
            assert out is not None
            busy, idle = (_instructions(out.with_name(f"{out.name}.{k}")) for k in (1, 2))
            if keep is not None:  # for callgrind_annotate
                shutil.copyfile(out.with_name(f"{out.name}.1"), keep)
                shutil.copyfile(out.with_name(f"{out.name}.2"), keep.with_name(keep.name + ".idle"))
            result["instructions_per_session"] = round((busy - idle) / sessions)
            result["instructions_idle_share"] = round(idle / busy, 4)
        return result
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        for p in (proc, redis):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--backlog", type=int, default=5, help="publications each client missed")
    p.add_argument("--in-flight", type=int, default=64, help="clients connecting at once")
    p.add_argument("--engine", choices=("memory", "redis"), default="memory")
    p.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    p.add_argument("--keep", type=Path, help="with --callgrind: copy callgrind's output here")
    p.add_argument(
        "--py-spy", type=Path, help="sample the hub with py-spy into this file (collapsed stacks)"
    )
    p.add_argument(
        "--cprofile", type=Path, help="profile the hub with cProfile into this file (pstats)"
    )
    a = p.parse_args(argv)
    run = measure(
        a.sessions, a.backlog, a.in_flight, a.callgrind, a.engine, a.keep, a.py_spy, a.cprofile
    )
    try:
        import uvloop

        result = uvloop.run(run)
    except ImportError:  # pragma: no cover - uvloop is a clarion dependency on Linux
        result = asyncio.run(run)
    sys.stdout.write(json.dumps(result) + "\n")
    if a.py_spy is not None and a.py_spy.exists():
        from benchmarks.storm_profile import summarise

        sys.stdout.write(summarise(a.py_spy, 60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
