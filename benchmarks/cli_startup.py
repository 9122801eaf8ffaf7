"""CPU seconds each ``clarion`` command spends before it does its work: start-up, mostly imports.

Every command runs once uncounted (it writes the bytecode caches), then ``--runs`` times
(default 7), in a scratch directory with no ``clarion.toml`` and no ``CLARION_*`` variables; the
median of its user + system CPU is reported, with the fastest and slowest run. A command that
ends (``--help``, ``publish``, ``token``, ``webhooks list``) is charged what it used in all, from
``wait4``; a command that runs on (``serve``, ``demo``, ``subscribe``) what it has used when it
says it is ready (``listening on``, ``connected to``), read from ``/proc`` (10 ms ticks) before
it is stopped. ``publish``, ``subscribe`` and ``webhooks`` talk to a ``clarion serve`` the tool
starts first.

    .venv/bin/python -m benchmarks.cli_startup [--runs 7] [--only serve,publish]

``--baseline SRC`` compares with another tree's ``src`` (e.g. ``git archive`` of an older commit,
with the built ``src/clarion/server/*.so`` and ``src/clarion/static`` copied in): each run of a
command is followed by one with ``PYTHONPATH=SRC``, so that both see the same moments of a busy
machine, and the table shows both medians and their ratio. ``--callgrind`` counts user-space
instructions instead (millions, under valgrind; a command that runs on is counted up to its ready
line with ``callgrind_control --dump``): figures the machine's load does not move. For what each
import costs, ``python -X importtime -m clarion.cli --help``.
"""

from __future__ import annotations

import argparse
import os
import selectors
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.servers import clarion_command, stop_process, wait_healthy

TICK = os.sysconf("SC_CLK_TCK")
SECRET = "a-benchmark-secret-of-32-bytes!!"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CLARION_")}
    if BASELINE is not None:
        env["PYTHONPATH"] = BASELINE
    return env


BASELINE: str | None = None  # the tree the next command runs from (None: this one)
CALLGRIND: str | None = None  # a directory for callgrind's files: count instructions instead


def wrapped(args: list[str]) -> list[str]:
    if CALLGRIND is None:
        return args
    for old in Path(CALLGRIND).glob("cg.out*"):
        old.unlink()
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={CALLGRIND}/cg.out", *args]


def instructions(path: Path, timeout: float = 60.0) -> float:
    """Millions of instructions a callgrind file counts (waiting until callgrind has written
    it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1]) / 1e6
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no {path}")


def ended_cpu(args: list[str], cwd: str) -> float:
    """User + system CPU seconds of ``args`` run to its end."""
    proc = subprocess.Popen(
        wrapped(args), cwd=cwd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {err}")
    if CALLGRIND is not None:
        return instructions(Path(CALLGRIND) / "cg.out")
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def ready_cpu(args: list[str], cwd: str, ready: str, timeout: float = 60.0) -> float:
    """User + system CPU seconds ``args`` has used when a line of its stderr contains ``ready``."""
    proc = subprocess.Popen(
        wrapped(args), cwd=cwd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    seen = b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while ready.encode() not in seen:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(args)} never said {ready!r}: {seen.decode()}")
                if sel.select(0.5):
                    seen += os.read(proc.stderr.fileno(), 65536)
            if CALLGRIND is not None:  # the counts so far, dumped to cg.out.1
                subprocess.run(
                    ["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True
                )
                return instructions(Path(CALLGRIND) / "cg.out.1")
            return proc_cpu(proc.pid)
    finally:
        stop_process(proc)
        proc.stderr.close()


def start_hub(cwd: str) -> tuple[subprocess.Popen[bytes], str]:
    from benchmarks.servers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [*clarion_command(), "serve", "--port", str(port)],
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_healthy(port, proc, 60)
    return proc, f"http://127.0.0.1:{port}"


def commands(url: str) -> dict[str, Callable[[str], float]]:
    clarion = clarion_command()
    return {
        "--help": lambda cwd: ended_cpu([*clarion, "--help"], cwd),
        "serve": lambda cwd: ready_cpu([*clarion, "serve", "--port", "0"], cwd, "listening on"),
        "publish": lambda cwd: ended_cpu([*clarion, "publish", "bench", "1", "--url", url], cwd),
        "subscribe": lambda cwd: ready_cpu(
            [*clarion, "subscribe", "bench", "--url", url], cwd, "connected to"
        ),
        "token": lambda cwd: ended_cpu(
            [*clarion, "token", "--user", "bench", "--secret", SECRET], cwd
        ),
        "webhooks list": lambda cwd: ended_cpu([*clarion, "webhooks", "list", "--url", url], cwd),
        "demo": lambda cwd: ready_cpu([*clarion, "demo", "--port", "0"], cwd, "listening on"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", help="comma-separated commands (default all)")
    parser.add_argument("--baseline", metavar="SRC", help="another tree's src to compare with")
    parser.add_argument(
        "--callgrind", action="store_true", help="millions of instructions (valgrind), not CPU-s"
    )
    opts = parser.parse_args()
    global BASELINE, CALLGRIND
    with tempfile.TemporaryDirectory(prefix="clarion-cli-startup-") as cwd:
        hub, url = start_hub(cwd)  # before CALLGRIND is set: the hub runs as it is
        if opts.callgrind:
            CALLGRIND = tempfile.mkdtemp(prefix="callgrind-", dir=cwd)
        try:
            table = commands(url)
            names = opts.only.split(",") if opts.only else list(table)
            unit = "M instr" if opts.callgrind else "median s"
            head = f"{'command':<22}{unit:>10}{'min':>9}{'max':>9}"
            if opts.baseline:
                head += f"{'baseline':>10}{'ratio':>8}"
            print(f"{head}  ({opts.runs} runs)")
            for name in names:
                BASELINE = None
                table[name](cwd)
                if opts.baseline:
                    BASELINE = opts.baseline
                    table[name](cwd)
                times, before = [], []
                for _ in range(opts.runs):
                    BASELINE = None
                    times.append(table[name](cwd))
                    if opts.baseline:
                        BASELINE = opts.baseline
                        before.append(table[name](cwd))
                BASELINE = None
                f = ".1f" if opts.callgrind else ".3f"
                row = (
                    f"clarion {name:<14}{statistics.median(times):>10{f}}"
                    f"{min(times):>9{f}}{max(times):>9{f}}"
                )
                if before:
                    ratio = statistics.median(times) / statistics.median(before)
                    row += f"{statistics.median(before):>10{f}}{ratio:>8.2f}"
                print(row, flush=True)
        finally:
            stop_process(hub)


if __name__ == "__main__":
    main()
