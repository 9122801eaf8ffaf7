"""What one HTTP publication costs each server, beside the least a Python server can spend.

Three servers, each alone on core 1, each driven in turn by ``wrk`` on core 0 (64 keep-alive
connections, one request in flight on each, no subscriber):

- **nchan**: its publisher location (``POST /pub?id=…``, the body is the message);
- **clarion**: ``clarion serve``, ``POST /api/publish`` with ``{"channel", "data"}``;
- **floor**: a bare uvloop protocol in Python that answers each whole request with a fixed
  reply and does nothing else (it finds where the request ends, no more): what the event loop
  and one Python callback per request cost, below anything a hub could do.

The CPU of each server's processes is read from ``/proc/<pid>/stat`` around the measured
stretch, user and kernel apart, and divided by the requests ``wrk`` completed. Each column of
the table is its own median over the rounds (so user and kernel need not add up to the total).
The rounds alternate between the servers, so that a change in the machine's load reaches all
three::

    .venv/bin/python -m benchmarks.request_floor --seconds 5 --rounds 3

``--baseline <tree>/src`` adds clarion from another tree (``git archive <rev> src | tar -x``,
with the built ``_fastloop`` copied in), measured in the same rounds.

Needs ``wrk`` and nginx with nchan (``bash benchmarks/setup.sh``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.loadgen import proc_cpu_split
from benchmarks.servers import Server, ServerError, free_port, start_server

PAYLOAD = b'{"user":"ann","text":"hello there, how is it going today? fine"}'
CLARION_BODY = b'{"channel":"room-7","data":%s}' % PAYLOAD

# The floor's one reply: clarion's, with the same headers and a body of the same size.
_BODY = b'{"offset":1,"epoch":"86e90384824a","cursor":"AQECxMiz7vMbrgw4NmU5MDM4NDgyNGEBeAocJQ"}'
REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"cache-control: no-store\r\ndate: Fri, 04 Dec 2026 22:00:00 GMT\r\n\r\n%s"
) % (len(_BODY), _BODY)


class _Floor(asyncio.Protocol):
    """Answers every whole request in what it has read; reads nothing of it but where it ends
    (its head's end and its ``Content-Length``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        answered = 0
        while (head_end := buf.find(b"\r\n\r\n")) >= 0:
            # As wrk writes it, or lower-cased; a request without one has no body.
            at = buf.find(b"Content-Length: ", 0, head_end)
            if at < 0:
                at = buf.find(b"content-length: ", 0, head_end)
            length = int(buf[at + 16 : buf.find(b"\r\n", at)]) if at >= 0 else 0
            end = head_end + 4 + length
            if end > len(buf):
                break
            buf = buf[end:]
            answered += 1
        self.buf = buf
        if answered:
            self.transport.write(REPLY * answered)


async def _serve_floor(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(_Floor, "127.0.0.1", port, backlog=4096)
    await asyncio.Event().wait()


def start_floor(workroot: Path) -> Server:
    port = free_port()
    workdir = workroot / f"floor-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    cmd = ["taskset", "-c", "1", sys.executable, "-m", "benchmarks.request_floor", "--floor"]
    cmd.append(str(port))
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = Server("floor", "http", port, cmd, proc, workdir, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return server  # listening (it answers, and never closes, whatever it is sent)
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise ServerError(f"the floor server did not start: {server.log_tail()}")


def drive(server: Server, path: str, body: bytes, seconds: float, script: Path) -> dict[str, float]:
    """``wrk`` against ``server`` for ``seconds`` (after a 2 s warm-up); µs of CPU per request."""
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    url = f"http://127.0.0.1:{server.port}{path}"
    wrk = ["taskset", "-c", "0", "wrk", "-t1", "-c64", "-s", str(script), url]
    subprocess.run([*wrk[:5], "-d2s", *wrk[5:]], capture_output=True, check=True)
    pids = server.pids()
    before = proc_cpu_split(pids)
    out = subprocess.run([*wrk[:5], f"-d{seconds:g}s", *wrk[5:]], capture_output=True, check=True)
    after = proc_cpu_split(pids)
    text = out.stdout.decode()
    found = re.search(r"(\d+) requests in", text)
    if found is None or "Non-2xx" in text:
        raise ServerError(f"{server.name}: wrk did not get plain answers:\n{text}")
    requests = int(found.group(1))
    per = 1e6 / requests
    return {
        "requests_per_s": requests / seconds,
        "user_us": (after[0] - before[0]) * per,
        "kernel_us": (after[1] - before[1]) * per,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--baseline",
        metavar="SRC",
        help="also measure clarion from another tree's src (PYTHONPATH), as 'baseline'",
    )
    p.add_argument("--floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.floor is not None:
        import uvloop

        uvloop.run(_serve_floor(a.floor))
        return 0
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: bash benchmarks/setup.sh")
    with tempfile.TemporaryDirectory(prefix="clarion-floor-") as tmp:
        root = Path(tmp)
        # Started one by one inside the try: one that fails to start leaves none running.
        servers: dict[str, tuple[Server, str, bytes]] = {}
        results: dict[str, list[dict[str, float]]] = {}
        try:
            servers["nchan"] = (start_server("nchan", "ws", root), "/pub?id=room-7", PAYLOAD)
            servers["clarion"] = (start_server("clarion", "ws", root), "/api/publish", CLARION_BODY)
            servers["floor"] = (start_floor(root), "/api/publish", CLARION_BODY)
            if a.baseline:
                other = start_server("clarion", "ws", root, env_extra={"PYTHONPATH": a.baseline})
                servers["baseline"] = (other, "/api/publish", CLARION_BODY)
            for _ in range(a.rounds):
                for name, (server, path, body) in servers.items():
                    run = drive(server, path, body, a.seconds, root / "post.lua")
                    results.setdefault(name, []).append(run)
        finally:
            for server, _, _ in servers.values():
                server.stop()
    print("| server | requests/s | user µs per request | kernel µs | CPU µs per request |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        user = statistics.median(r["user_us"] for r in runs)
        kernel = statistics.median(r["kernel_us"] for r in runs)
        total = statistics.median(r["user_us"] + r["kernel_us"] for r in runs)
        rate = statistics.median(r["requests_per_s"] for r in runs)
        print(f"| {name} | {rate:,.0f} | {user:.1f} | {kernel:.1f} | {total:.1f} |")
    print(f"\n(medians of {a.rounds} rounds of {a.seconds:g} s each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
