"""The server's cost of one delivery at one frame per write, counted apart from the machine's load.

A server (``clarion serve`` or nchan) runs in its own process with ``--subscribers`` WebSocket
subscribers on one channel; publications go in over HTTP one at a time, each only once every
subscriber has the one before, so each delivery is one frame in one write (P2's regime, without
its timing). It prints the server's cost per delivery and per publication: process CPU time
(``/proc``; blurred by other work on the machine), or with ``--callgrind`` the user-space
instructions the server executed while the publications were measured (the server runs under
``valgrind --tool=callgrind --instr-atstart=no``, counting only between the warm-up and the
end; the kernel's part of each ``write`` is not counted). Instruction counts do not depend on
the load, so two trees, or clarion and nchan, compare on a busy machine::

    .venv/bin/python -m benchmarks.delivery_cost --server clarion --subscribers 1000 --callgrind
    .venv/bin/python -m benchmarks.delivery_cost --server nchan --subscribers 1000 --callgrind

The publish path is in the per-publication figure; ``--subscribers 1`` shows it nearly alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import (
    MARKER,
    endpoints,
    make_payload,
    mask_frame,
    proc_cpu_seconds,
    subscribe_op,
    ws_upgrade_request,
)
from benchmarks.servers import (
    CLARION_ENV,
    clarion_command,
    free_port,
    nchan_config,
    under_callgrind,
    wait_healthy,
)


class _Subscriber(asyncio.Protocol):
    def __init__(self, request: bytes, subscribe: bytes | None) -> None:
        self.request = request
        self.subscribe = subscribe
        self.open = False
        self.ready = asyncio.get_running_loop().create_future()
        self.received = 0
        self.carry = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.open:
            _, sep, rest = data.partition(b"\r\n\r\n")
            if not sep:
                return
            self.open = True
            assert self.transport is not None
            if self.subscribe is not None:
                self.transport.write(mask_frame(self.subscribe))
            else:
                self.ready.set_result(None)
            data = rest
        if not self.ready.done() and b'"id":1' in data:
            self.ready.set_result(None)
        data = self.carry + data
        self.received += data.count(MARKER)
        self.carry = data[-(len(MARKER) - 1) :]


class _Publisher(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.replies = 0
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        # Both servers answer a publish with a short response carrying its length.
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            size = int(m.group(1)) if m else 0
            if len(rest) < size:
                return
            self.buf = rest[size:]
            self.replies += 1


def _start(
    server: str, workdir: Path, port: int, callgrind: Path | None, compiled: bool
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if server == "clarion":
        cmd = [*clarion_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--log-level", "warning"]
        env.update(CLARION_ENV)
        if not compiled:
            env["CLARION_COMPILED"] = "false"
    else:
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / sub).mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        # One process (no master and worker) so that the tool follows the one that works.
        conf.write_text("master_process off;\n" + nchan_config(workdir, port))
        cmd = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    if callgrind is not None:
        cmd = under_callgrind(cmd, callgrind)
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )


def _callgrind(state: str, pid: int) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)


def _callgrind_dump(pid: int) -> None:
    """Write what was counted since the last dump as the next part file (cg.out.1, .2...)."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)


def _instructions(part: Path) -> int:
    m = re.search(r"^(?:summary|totals): (\d+)", part.read_text(errors="replace"), re.M)
    if m is None:
        raise RuntimeError(f"no instruction count in {part}")
    return int(m.group(1))


async def _until(check: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.002)


async def measure(
    server: str,
    subscribers: int,
    publications: int,
    callgrind: bool,
    compiled: bool = True,
    keep: Path | None = None,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    workdir = Path(tempfile.mkdtemp(prefix=f"delivery-cost-{server}-"))
    port = free_port()
    out = workdir / "cg.out" if callgrind else None
    proc = _start(server, workdir, port, out, compiled)
    slow = 60.0 if callgrind else 1.0  # valgrind runs the server tens of times slower
    try:
        try:
            await asyncio.to_thread(wait_healthy, port, proc, 30 * slow, slow)
        except RuntimeError as exc:
            raise RuntimeError(f"{server} did not start: {workdir / 'server.log'}") from exc
        ends = endpoints(server, "ws")
        request = ws_upgrade_request("127.0.0.1", port, ends.sub_path(), ends.subprotocol)
        subscribe = subscribe_op() if ends.expect_reply else None
        subs: list[_Subscriber] = []
        for _ in range(subscribers):
            _, sub = await loop.create_connection(
                lambda: _Subscriber(request, subscribe), "127.0.0.1", port
            )
            subs.append(sub)
            await asyncio.wait_for(sub.ready, 10 * slow)
        _, pub = await loop.create_connection(_Publisher, "127.0.0.1", port)
        path = ends.pub_path()
        seq = 0

        async def publish_one() -> None:
            nonlocal seq
            seq += 1
            data = make_payload(seq, 100)
            body = b'{"channel":"bench","data":%s}' % data if ends.wrap_publish else data
            assert pub.transport is not None
            pub.transport.write(
                b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
            )
            await _until(
                lambda: pub.replies == seq and all(s.received >= seq for s in subs),
                10 * slow,
                f"publication {seq} did not reach every subscriber",
            )

        for _ in range(3):  # warm-up: every subscriber is live and every path has run once
            await publish_one()
        if callgrind:
            _callgrind("on", proc.pid)
        cpu0, wall0 = proc_cpu_seconds([proc.pid]), time.monotonic()
        for _ in range(publications):
            await publish_one()
        cpu, wall = proc_cpu_seconds([proc.pid]) - cpu0, time.monotonic() - wall0
        if callgrind:
            # Two parts: the publications, then as long idle. The server's timers (the hub's
            # per-second sweep over every session) run in both: under valgrind the
            # publications take tens of times longer than they would, and without the idle
            # part the timers would weigh on each delivery that much more.
            _callgrind_dump(proc.pid)
            await asyncio.sleep(wall)
            _callgrind_dump(proc.pid)
            _callgrind("off", proc.pid)
        for conn in [*subs, pub]:
            assert conn.transport is not None
            conn.transport.close()
        deliveries = publications * subscribers
        result: dict[str, Any] = {
            "server": server,
            "subscribers": subscribers,
            "publications": publications,
            "compiled": compiled if server == "clarion" else None,
        }
        if not callgrind:
            result["cpu_us_per_delivery"] = round(1e6 * cpu / deliveries, 2)
        else:
            proc.send_signal(signal.SIGTERM if server == "clarion" else signal.SIGQUIT)
            proc.wait(60 * slow)
            assert out is not None
            busy, idle = (_instructions(out.with_name(f"{out.name}.{k}")) for k in (1, 2))
            if keep is not None:  # for callgrind_annotate
                shutil.copyfile(out.with_name(f"{out.name}.1"), keep)
            result["instructions_per_delivery"] = round((busy - idle) / deliveries)
            result["instructions_per_publication"] = round((busy - idle) / publications)
            result["instructions_idle_share"] = round(idle / busy, 3)
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", choices=("clarion", "nchan"), default="clarion")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--publications", type=int, default=30)
    p.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    p.add_argument("--keep", type=Path, help="with --callgrind: copy callgrind's output here")
    p.add_argument(
        "--python-loops", action="store_true", help="clarion: its Python loops (compiled = false)"
    )
    a = p.parse_args(argv)
    run = measure(a.server, a.subscribers, a.publications, a.callgrind, not a.python_loops, a.keep)
    try:
        import uvloop

        result = uvloop.run(run)
    except ImportError:  # pragma: no cover - uvloop is a clarion dependency on Linux
        result = asyncio.run(run)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
