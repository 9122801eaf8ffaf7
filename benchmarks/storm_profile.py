"""Profile the hubs during the P5 reconnect storm alone, not while the clients first connect.

Runs ``benchmarks.run`` for P5 with the arguments given after ``--``, waits for the generator
to drop every connection, attaches ``py-spy record`` to each hub process until all clients have
caught up, and prints each function's share of the samples (self time, and with what it calls)::

    .venv/bin/python -m benchmarks.storm_profile -- --p5-engine redis --p5-nodes 2 \\
        --p5-clients 10000 --no-install

``py-spy`` must be installed (``pip install py-spy``); ``--native`` adds C frames. The collapsed
stacks stay in ``--out``-``<pid>.txt`` for a flame graph. With ``--perf``, ``perf record`` samples
the hubs instead (C and kernel frames: where a socket write's time goes), into ``--out``.data.
Either way the hubs' user and system CPU seconds over the storm are printed.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wait_for(path: Path, word: str, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """The first line of ``path`` starting with ``word``; None if ``proc`` ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith(word):
                    return line
        if proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds the processes ``pids`` have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


def summarise(stacks: Path, top: int) -> str:
    """Self and inclusive shares of the samples, per function, from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples", "self %  incl %  function"]
    for frame, n in own.most_common(top):
        out.append(f"{100 * n / total:6.1f}  {100 * incl[frame] / total:6.1f}  {frame}")
    out.append("")
    out.append("inclusive:")
    for frame, n in incl.most_common(top):
        out.append(f"{100 * n / total:6.1f}  {frame}")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--out", default="benchmarks/results/storm-profile", help="prefix of the output files"
    )
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--native", action="store_true", help="py-spy --native")
    p.add_argument("--perf", action="store_true", help="perf record -g instead of py-spy")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("run_args", nargs="*", help="after --: arguments of benchmarks.run")
    a = p.parse_args()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    mark = Path(tempfile.mkstemp(prefix="storm-mark-")[1])
    cmd = [sys.executable, "-m", "benchmarks.run", "--scenarios", "p5", "--servers", "clarion"]
    cmd += ["--out", "-", "--p5-mark", str(mark), *a.run_args]
    run = subprocess.Popen(cmd, cwd=HERE.parent)
    spies: list[tuple[int, Path, subprocess.Popen[bytes]]] = []
    try:
        drop = wait_for(mark, "drop", run, 600)
        if drop is None:
            print("the run ended before the storm", file=sys.stderr)
            return 1
        pids = [int(pid) for pid in drop.split()[1:]]
        before = cpu_split(pids)
        if a.perf:
            args = ["perf", "record", "-F", "499", "-g", "-o", f"{a.out}.data"]
            args += ["-p", ",".join(map(str, pids))]
            spies.append((0, Path(f"{a.out}.data"), subprocess.Popen(args)))
        spy = str(Path(sys.executable).parent / "py-spy")
        for pid in pids if not a.perf else []:
            path = Path(f"{a.out}-{pid}.txt")
            args = [spy, "record", "-p", str(pid), "-r", str(a.rate), "--format", "raw"]
            args += ["--nonblocking", "-o", str(path)]
            if a.native:
                args.append("--native")
            spies.append((pid, path, subprocess.Popen(args, stdout=subprocess.DEVNULL)))
        wait_for(mark, "caught", run, 120)
        after = cpu_split(pids)
        print(
            f"hubs over the storm: {after[0] - before[0]:.2f} s user, "
            f"{after[1] - before[1]:.2f} s system CPU"
        )
    finally:
        for _, _, proc in spies:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for _, _, proc in spies:
            proc.wait(30)
        run.wait()
        os.unlink(mark)
    for pid, path, _ in spies:
        if pid and path.exists():
            print(f"== hub {pid} ({path})")
            print(summarise(path, a.top))
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
