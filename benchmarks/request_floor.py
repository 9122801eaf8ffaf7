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
with the built ``_fastloop`` copied in), measured in the same rounds. ``--batch 10,100`` adds
clarion answering ``POST /api/publish_batch`` with that many publications per request, each to a
channel of its own; its figures are per publication, not per request. ``--engine URL`` runs
clarion on that engine (a Redis URL: the CPU counted is still the hub's alone, not Redis').
``--python PY`` adds clarion and the floor run by another interpreter (a CPython build of
another kind, say, with clarion installed in its environment), in the same rounds; the others
run on ``$BENCH_HUB_PYTHON`` if set, else on the interpreter running this.

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
import urllib.request
from pathlib import Path

from benchmarks.loadgen import proc_cpu_split
from benchmarks.servers import Server, ServerError, free_port, hub_python, start_server

PAYLOAD = b'{"user":"ann","text":"hello there, how is it going today? fine"}'
CLARION_BODY = b'{"channel":"room-7","data":%s}' % PAYLOAD


def batch_body(n: int) -> bytes:
    """``n`` publications of the payload, each to a channel of its own."""
    items = b",".join(b'{"channel":"room-%d","data":%s}' % (k, PAYLOAD) for k in range(n))
    return b'{"publications":[%s]}' % items


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


def start_floor(workroot: Path, python: str | None = None) -> Server:
    port = free_port()
    workdir = workroot / f"floor-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    python = python or hub_python()
    cmd = ["taskset", "-c", "1", python, "-m", "benchmarks.request_floor", "--floor"]
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


def drive(
    server: Server, path: str, body: bytes, seconds: float, script: Path, per_request: int = 1
) -> dict[str, float]:
    """``wrk`` against ``server`` for ``seconds`` (after a 2 s warm-up); µs of CPU per
    publication (``per_request`` of them in each request)."""
    answer = post_once(server.port, path, body)
    if b'"error"' in answer:  # wrk sees only the status: a batch's items must all be published
        raise ServerError(f"{server.name}: {path} refused what is measured: {answer[:300]!r}")
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
    publications = int(found.group(1)) * per_request
    per = 1e6 / publications
    return {
        "per_s": publications / seconds,
        "user_us": (after[0] - before[0]) * per,
        "kernel_us": (after[1] - before[1]) * per,
    }


def post_once(port: int, path: str, body: bytes) -> bytes:
    """One ``POST`` of ``body``; its answer's body (a status other than 2xx raises)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: bytes = response.read()
        return answer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--baseline",
        metavar="SRC",
        help="also measure clarion from another tree's src (PYTHONPATH), as 'baseline'",
    )
    p.add_argument(
        "--batch",
        default="",
        metavar="N,N",
        help="also clarion's POST /api/publish_batch with N publications per request",
    )
    p.add_argument("--engine", default="", metavar="URL", help="clarion's engine (default: memory)")
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="PY",
        help="also clarion and the floor on this interpreter (a Python whose environment has "
        "clarion installed); may be repeated",
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
        started: list[Server] = []
        # Each row: its server, path, body and publications per request.
        rows: dict[str, tuple[Server, str, bytes, int]] = {}
        results: dict[str, list[dict[str, float]]] = {}
        try:
            started.append(start_server("nchan", "ws", root))
            rows["nchan"] = (started[-1], "/pub?id=room-7", PAYLOAD, 1)
            engine = {"CLARION_ENGINE": a.engine} if a.engine else None
            started.append(clarion := start_server("clarion", "ws", root, env_extra=engine))
            rows["clarion"] = (clarion, "/api/publish", CLARION_BODY, 1)
            for n in (int(n) for n in a.batch.split(",") if n):
                rows[f"clarion, {n} per request"] = (
                    clarion,
                    "/api/publish_batch",
                    batch_body(n),
                    n,
                )
            started.append(start_floor(root))
            rows["floor"] = (started[-1], "/api/publish", CLARION_BODY, 1)
            if a.baseline:
                env = {"PYTHONPATH": a.baseline}
                started.append(start_server("clarion", "ws", root, env_extra=env))
                rows["baseline"] = (started[-1], "/api/publish", CLARION_BODY, 1)
            for python in a.python:
                started.append(start_server("clarion", "ws", root, env_extra=engine, python=python))
                rows[f"clarion on {python}"] = (started[-1], "/api/publish", CLARION_BODY, 1)
                started.append(start_floor(root, python))
                rows[f"floor on {python}"] = (started[-1], "/api/publish", CLARION_BODY, 1)
            for _ in range(a.rounds):
                for name, (server, path, body, n) in rows.items():
                    run = drive(server, path, body, a.seconds, root / "post.lua", n)
                    results.setdefault(name, []).append(run)
        finally:
            for server in started:
                server.stop()
    print(
        "| server | publications/s | user µs per publication | kernel µs | CPU µs per publication |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        user = statistics.median(r["user_us"] for r in runs)
        kernel = statistics.median(r["kernel_us"] for r in runs)
        total = statistics.median(r["user_us"] + r["kernel_us"] for r in runs)
        rate = statistics.median(r["per_s"] for r in runs)
        print(f"| {name} | {rate:,.0f} | {user:.1f} | {kernel:.1f} | {total:.1f} |")
    print(f"\n(medians of {a.rounds} rounds of {a.seconds:g} s each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
