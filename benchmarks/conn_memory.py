"""What one idle subscribed WebSocket holds in the hub: RSS and a ``tracemalloc`` breakdown.

    .venv/bin/python -m benchmarks.conn_memory --connections 2000 [--top 25]

Starts ``clarion serve`` in a child process with ``tracemalloc`` on (which roughly doubles the
Python heap, so its RSS figure is printed separately from a run without tracing:
``--no-trace``), warms it up with 50 connections and one publication, snapshots, opens
``--connections`` WebSocket connections from ``benchmarks.loadgen`` that each subscribe to one
channel on ``/ws``, waits, snapshots again, and prints
the Python bytes per connection grouped by where they were allocated (the innermost frame in
``src/clarion`` or the library that allocated them), and the asyncio tasks alive.
Loopback only; every process it starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import linecache
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks import servers as srv
from benchmarks.loadgen import LoadConfig, LoadGen, proc_rss_bytes

_CHILD = r"""
import asyncio, os, signal, sys, tracemalloc
out = sys.argv[1]
trace = sys.argv[2] == "1"
if trace:
    tracemalloc.start(25)
count = 0
def dump(*_):
    global count
    import gc
    gc.collect()
    count += 1
    tasks = -1
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        pass
    with open(f"{out}.{count}.tasks", "w") as f:
        f.write(str(tasks))
    if trace:
        tracemalloc.take_snapshot().dump(f"{out}.{count}.snap")
    open(f"{out}.{count}.done", "w").close()
signal.signal(signal.SIGUSR1, dump)
from clarion.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _signal(proc: subprocess.Popen[bytes], out: str, n: int, timeout: float = 120.0) -> int:
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"{out}.{n}.done"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the server did not take its snapshot")
        time.sleep(0.1)
    return int(Path(f"{out}.{n}.tasks").read_text())


def _where(tb: tracemalloc.Traceback) -> str:
    """The innermost frame in clarion's source, with the library frame under it if any."""
    frames = list(tb)[::-1]  # most recent call first
    inner = frames[0]
    for frame in frames:
        if "/clarion/" in frame.filename:
            name = frame.filename.split("/clarion/", 1)[1]
            line = linecache.getline(frame.filename, frame.lineno).strip()[:60]
            lib = ""
            if frame is not inner:
                lib_name = inner.filename.rsplit("site-packages/", 1)[-1]
                lib = f"  [in {lib_name}:{inner.lineno}]"
            return f"{name}:{frame.lineno}  {line}{lib}"
    return f"{inner.filename.rsplit('/', 2)[-1]}:{inner.lineno}"


async def _load(port: int, n: int, pids: list[int]) -> LoadGen:
    cfg = LoadConfig(port=port, mode="idle", subscribers=n, sample=0, server_pids=pids)
    gen = LoadGen(cfg)
    await gen.connect_all(120.0)
    return gen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-trace", action="store_true", help="RSS only, without tracemalloc")
    a = p.parse_args(argv)
    srv.raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="clarion-mem-"))
    out = str(work / "snap")
    port = srv.free_port()
    env = dict(os.environ, **srv.CLARION_ENV)
    cmd = [sys.executable, "-c", _CHILD, out, "0" if a.no_trace else "1"]
    cmd += ["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    try:
        srv.wait_healthy(port, proc, 300)

        async def run() -> None:
            warm = await _load(port, 50, [proc.pid])
            warm.close_all()
            await asyncio.sleep(1.5)
            before_tasks = _signal(proc, out, 1)
            before = proc_rss_bytes([proc.pid])
            gen = await _load(port, a.connections, [proc.pid])
            await asyncio.sleep(2.0)
            after = proc_rss_bytes([proc.pid])
            after_tasks = _signal(proc, out, 2)
            n = a.connections
            print(f"connections: {n}  loadavg: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(
                f"RSS: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
                f"{(after - before) / n:,.0f} bytes per connection"
                f"{' (with tracemalloc)' if not a.no_trace else ''}"
            )
            print(
                f"asyncio tasks: {before_tasks} -> {after_tasks} "
                f"({(after_tasks - before_tasks) / n:.2f} per connection)"
            )
            gen.close_all()

        asyncio.run(run())
        if a.no_trace:
            return 0
        s1 = tracemalloc.Snapshot.load(f"{out}.1.snap")
        s2 = tracemalloc.Snapshot.load(f"{out}.2.snap")
        groups: dict[str, list[int]] = {}
        for stat in s2.compare_to(s1, "traceback"):
            key = _where(stat.traceback)
            g = groups.setdefault(key, [0, 0])
            g[0] += stat.size_diff
            g[1] += stat.count_diff
        n = a.connections
        total = sum(g[0] for g in groups.values())
        print(f"Python bytes per connection (tracemalloc): {total / n:,.0f}")
        for key, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: a.top]:
            print(f"{size / n:8.0f} B {count / n:6.2f} blocks  {key}")
    finally:
        srv.stop_process(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
