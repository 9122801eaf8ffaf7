"""Benchmark runner: clarion vs nchan vs Node reference servers, same run, same machine.

    .venv/bin/python -m benchmarks.run --scenarios p1,p2,p3,p4,p5 --sizes 1000,10000 --duration 10

Each measurement starts a fresh server pinned to core 1 (``taskset -c 1``), runs the load
generator (``benchmarks/loadgen.py``) pinned to core 0 against it on loopback, and stops the
server by its pid. Results go to ``benchmarks/results/<timestamp>.json`` (raw), a table on
stdout, ``BENCHMARKS.md`` (ratios to the references, absolute figures, versions, machine load,
the exact commands) and a plot (``benchmarks/img/fanout.png``).

Scenarios:
  p1  WebSocket fan-out at saturation (closed loop), one channel, --sizes subscribers
  p2  publish-to-receive latency at --p2-subscribers x --p2-rate publications/s (WebSocket)
  p3  server RSS per idle subscribed WebSocket connection at --p3-connections
  p4  SSE fan-out at saturation, --sizes subscribers
  p7  many rooms: --p7-subscribers WebSocket subscribers over --p7-channels channels,
      --p7-rate publications/s spread over the channels through the HTTP API; and the publish
      path alone: publications/s at saturation with one subscriber per channel
  p5  reconnect storm: --p5-clients dropped at once resume with their cursor (clarion only);
      with --p5-engine redis --p5-nodes 2, on two nodes sharing a Redis, every client resuming
      on the other node
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import servers as srv

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_CORE = 1
GENERATOR_CORE = 0
ALL_SCENARIOS = ("p1", "p2", "p3", "p4", "p5", "p7", "flush")
FLUSH_INTERVALS = (0.0, 0.0005, 0.001, 0.002, 0.005)  # seconds: clarion's flush_interval
ALL_SERVERS = ("clarion", "nchan", "node")
NOISE_THRESHOLD = 0.15  # other processes' share of the server's core that flags a run
Record = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Running one measurement


def core_busy(seconds: float) -> dict[str, float]:
    """Busy fraction of each core over ``seconds`` (from /proc/stat)."""
    from benchmarks.loadgen import cpu_times

    a = cpu_times()
    time.sleep(seconds)
    b = cpu_times()
    return {
        core: round((b[core][0] - a[core][0]) / max(1, b[core][1] - a[core][1]), 3)
        for core in b
        if core in a
    }


def wait_quiet(threshold: float, max_wait: float) -> dict[str, Any]:
    """Wait (bounded) until both cores are nearly idle: other people's work on this machine
    would otherwise be measured as the server's or the generator's slowness."""
    t0 = time.monotonic()
    busy = core_busy(1.0)
    while max(busy.values(), default=0.0) > threshold and time.monotonic() - t0 < max_wait:
        busy = core_busy(1.0)
    return {"busy": busy, "waited_s": round(time.monotonic() - t0 - 1.0, 1)}


def loadgen_command(args: dict[str, Any]) -> list[str]:
    cmd = [
        "taskset",
        "-c",
        str(GENERATOR_CORE),
        sys.executable,
        "-m",
        "benchmarks.loadgen",
    ]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            for v in value:
                cmd += [flag, str(v)]
        else:
            cmd += [flag, str(value)]
    return cmd


def measure(
    scenario: str,
    server: str,
    transport: str,
    lg_args: dict[str, Any],
    workroot: Path,
    log_dir: Path,
    env: dict[str, str] | None = None,
    engine: str = "memory",
    nodes: int = 1,
    redis_core: int = SERVER_CORE,
) -> Record:
    """One measurement. With ``engine="redis"``, a Redis (on ``redis_core``) and ``nodes``
    clarion nodes on it, on the server's core; their CPU together is the server CPU."""
    rec: Record = {"scenario": scenario, "server": server, "transport": transport}
    rec["subscribers"] = lg_args.get("subscribers")
    rec["env"] = env or {}
    rec["engine"] = engine
    rec["nodes"] = nodes
    if engine == "redis":
        rec["redis_core"] = redis_core
    t0 = time.monotonic()
    started: list[srv.Server] = []
    try:
        node_env = dict(env or {})
        if engine == "redis":
            redis = srv.start_redis(workroot, core=redis_core)
            started.append(redis)
            node_env["CLARION_ENGINE"] = f"redis://127.0.0.1:{redis.port}/0"
        for _ in range(nodes):
            started.append(
                srv.start_server(server, transport, workroot, core=SERVER_CORE, env_extra=node_env)
            )
    except srv.ServerError as exc:
        for proc in started:
            proc.stop()
        rec["error"] = f"server failed to start: {exc}"
        return rec
    node_procs = [p for p in started if p.name != "redis"]
    server_proc = node_procs[0]
    rec["server_command"] = shlex.join(server_proc.command)
    rec["server_env"] = server_proc.env
    try:
        time.sleep(0.3)
        args = dict(lg_args)
        args.update(server=server, transport=transport, port=server_proc.port)
        if len(node_procs) > 1:
            args["also_port"] = [p.port for p in node_procs[1:]]
        args["server_pid"] = [p.pid for p in started]
        if engine == "redis" and scenario == "p5":
            args["redis_port"] = started[0].port  # its work per resumed session is counted
        budget = float(args.get("timeout", 240))
        cmd = loadgen_command(args)
        rec["loadgen_command"] = shlex.join(cmd)
        name = f"{scenario}-{server}-{transport}-{lg_args.get('subscribers')}"
        if engine != "memory":
            name += f"-{engine}-{nodes}"
        if env:
            name += "-" + "-".join(env.values())
        try:
            out = subprocess.run(
                cmd, cwd=REPO, capture_output=True, timeout=budget + 60, check=False
            )
        except subprocess.TimeoutExpired:
            rec["error"] = f"load generator timed out after {budget + 60:.0f}s"
            return rec
        (log_dir / f"{name}.stderr").write_bytes(out.stderr)
        lines = out.stdout.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            rec["error"] = "load generator printed no result: " + out.stderr.decode()[-500:]
            return rec
        result.pop("config", None)
        rec["result"] = result
        if "error" in result:
            rec["error"] = result["error"]
        for proc in started:
            if not proc.alive():
                rec["error"] = f"{proc.name} died during the run: " + proc.log_tail(5)
    finally:
        for i, proc in reversed(list(enumerate(started))):  # the nodes before their Redis
            proc.stop()
            suffix = "" if len(started) == 1 else f"-{proc.name}{i}"
            (log_dir / f"{scenario}-{server}-{transport}-server{suffix}.log").write_text(
                proc.log_tail(200)
            )
    rec["seconds"] = round(time.monotonic() - t0, 1)
    return rec


# --------------------------------------------------------------------------------------------
# Formatting


def fnum(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float | int) and digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.0f}%"


def flags(rec: Record) -> str:
    if "error" in rec:
        return "ERROR: " + str(rec["error"])[:120]
    r = rec.get("result", {})
    out = []
    if r.get("generator_saturated"):
        out.append("GEN-BOUND")
    if r.get("exact") is False:
        out.append(f"INEXACT (lost {r.get('lost', '?')})")
    other = other_load(rec)
    if other is not None and other > NOISE_THRESHOLD:
        out.append(f"NOISY (other load on core {SERVER_CORE}: {other:.0%})")
    return ", ".join(out) or "ok"


def other_load(rec: Record) -> float | None:
    r = rec.get("result", {})
    cores = r.get("core_busy") or {}
    busy = cores.get(r.get("server_core") or f"cpu{SERVER_CORE}")
    cpu = r.get("server_cpu_fraction")
    if busy is None or cpu is None:
        return None
    return max(0.0, float(busy) - float(cpu))


def valid_throughput(rec: Record) -> bool:
    r = rec.get("result", {})
    return "error" not in rec and bool(r.get("exact")) and not r.get("generator_saturated")


def find(records: list[Record], scenario: str, server: str, size: int | None = None) -> Record:
    for rec in records:
        if (
            rec["scenario"] == scenario
            and rec["server"] == server
            and (size is None or rec.get("subscribers") == size)
        ):
            return rec
    return {}


def ratio(a: Any, b: Any) -> str:
    try:
        if a and b:
            return f"{float(a) / float(b):.2f}x"
    except (TypeError, ValueError):
        pass
    return "-"


def fanout_tables(records: list[Record], scenario: str, sizes: list[int]) -> list[str]:
    rows = [
        "| server | subscribers | deliveries/s | server CPU | deliveries per server CPU-s "
        "| generator CPU | p50 / p99 ms | exact | flags |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for size in sizes:
        for server in ALL_SERVERS:
            rec = find(records, scenario, server, size)
            if not rec:
                continue
            r = rec.get("result", {})
            rows.append(
                f"| {server} | {size:,} | {fnum(r.get('deliveries_per_s'))} "
                f"| {pct(r.get('server_cpu_fraction'))} "
                f"| {fnum(r.get('deliveries_per_server_cpu_s'))} "
                f"| {pct(r.get('generator_cpu_fraction'))} "
                f"| {fnum(r.get('latency_p50_ms'), 1)} / {fnum(r.get('latency_p99_ms'), 1)} "
                f"| {'yes' if r.get('exact') else 'no'} | {flags(rec)} |"
            )
    rows += [
        "",
        "| subscribers | clarion/nchan deliveries/s | clarion/nchan per CPU-s "
        "| clarion/node deliveries/s | clarion/node per CPU-s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        c = find(records, scenario, "clarion", size).get("result", {})
        n = find(records, scenario, "nchan", size).get("result", {})
        o = find(records, scenario, "node", size).get("result", {})
        key, cpu = "deliveries_per_s", "deliveries_per_server_cpu_s"
        rows.append(
            f"| {size:,} | {ratio(c.get(key), n.get(key))} | {ratio(c.get(cpu), n.get(cpu))} "
            f"| {ratio(c.get(key), o.get(key))} | {ratio(c.get(cpu), o.get(cpu))} |"
        )
    return rows


def p7_section(records: list[Record], args: dict[str, Any]) -> list[str]:
    per_room = args["p7_subscribers"] // max(1, args["p7_channels"])
    out = [
        f"## P7 - many rooms: {args['p7_subscribers']:,} subscribers over "
        f"{args['p7_channels']:,} channels ({per_room} each), WebSocket",
        "",
        f"Publications at {args['p7_rate']:g}/s in total, each to the next channel in turn, "
        f"through the HTTP API ({args['p7_publishers']} keep-alive connections, one request in "
        "flight each).",
        "",
        "| server | publications/s | deliveries/s | server CPU | deliveries per server CPU-s "
        "| µs of server CPU per publication | p50 / p99 ms | generator CPU | exact | flags |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for server in ALL_SERVERS:
        rec = find(records, "p7", server)
        if not rec:
            continue
        r = rec.get("result", {})
        per_pub = r.get("publications_per_server_cpu_s")
        out.append(
            f"| {server} | {fnum(r.get('publications_per_s'))} "
            f"| {fnum(r.get('deliveries_per_s'))} | {pct(r.get('server_cpu_fraction'))} "
            f"| {fnum(r.get('deliveries_per_server_cpu_s'))} "
            f"| {fnum(1e6 / per_pub if per_pub else None, 1)} "
            f"| {fnum(r.get('latency_p50_ms'), 2)} / {fnum(r.get('latency_p99_ms'), 2)} "
            f"| {pct(r.get('generator_cpu_fraction'))} "
            f"| {'yes' if r.get('exact') else 'no'} | {flags(rec)} |"
        )
    c = find(records, "p7", "clarion").get("result", {})
    n = find(records, "p7", "nchan").get("result", {})
    if c and n:
        cpu = "deliveries_per_server_cpu_s"
        out += [
            "",
            f"clarion/nchan deliveries per server CPU-s: {ratio(c.get(cpu), n.get(cpu))} "
            "(higher is better); p99: "
            f"{ratio(c.get('latency_p99_ms'), n.get('latency_p99_ms'))} (lower is better).",
        ]
    out += [
        "",
        f"The publish path alone: {args['p7_channels']:,} channels with one subscriber each, "
        f"closed loop with {args['p7_publishers']} publications in flight"
        + (
            f" ({args['p7_publishers']} requests of {args['p7_batch']} in the batched row)."
            if args.get("p7_batch", 0) > 1
            else "."
        ),
        "",
        "| server | publications/s | server CPU | publications per server CPU-s "
        "| µs of server CPU per publication | generator CPU | exact | flags |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    rows = [(server, find(records, "p7-publish", server)) for server in ALL_SERVERS]
    batched = find(records, "p7-batch", "clarion")
    if batched:
        rows.append((f"clarion, {args['p7_batch']} per request", batched))
    for server, rec in rows:
        if not rec:
            continue
        r = rec.get("result", {})
        per_pub = r.get("publications_per_server_cpu_s")
        out.append(
            f"| {server} | {fnum(r.get('publications_per_s'))} "
            f"| {pct(r.get('server_cpu_fraction'))} | {fnum(per_pub)} "
            f"| {fnum(1e6 / per_pub if per_pub else None, 1)} "
            f"| {pct(r.get('generator_cpu_fraction'))} "
            f"| {'yes' if r.get('exact') else 'no'} | {flags(rec)} |"
        )
    c = find(records, "p7-publish", "clarion").get("result", {})
    n = find(records, "p7-publish", "nchan").get("result", {})
    if c and n:
        key, cpu = "publications_per_s", "publications_per_server_cpu_s"
        out += [
            "",
            f"clarion/nchan publications/s: {ratio(c.get(key), n.get(key))}, "
            f"per server CPU-s: {ratio(c.get(cpu), n.get(cpu))} (higher is better).",
        ]
        b = batched.get("result", {})
        if b:
            out.append(
                f"With {args['p7_batch']} publications per request, clarion/nchan "
                f"publications/s: {ratio(b.get(key), n.get(key))}, per server CPU-s: "
                f"{ratio(b.get(cpu), n.get(cpu))}."
            )
    return [*out, ""]


def plot(records: list[Record], sizes: list[int], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    panels = [
        ("p1", "deliveries_per_s", "WebSocket fan-out: deliveries/s"),
        ("p4", "deliveries_per_s", "SSE fan-out: deliveries/s"),
        ("p1", "deliveries_per_server_cpu_s", "WebSocket: deliveries per server CPU-second"),
        ("p4", "deliveries_per_server_cpu_s", "SSE: deliveries per server CPU-second"),
    ]
    present = [p for p in panels if any(r["scenario"] == p[0] for r in records)]
    if not present:
        return False
    cols = 2 if len(present) > 1 else 1
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    styles = {"clarion": "o-", "nchan": "s--", "node": "^-."}
    for ax, (scenario, key, title) in zip(axes.flat, present, strict=False):
        for server in ALL_SERVERS:
            xs, ys = [], []
            for size in sizes:
                r = find(records, scenario, server, size).get("result", {})
                if r.get(key):
                    xs.append(size)
                    ys.append(r[key])
            if xs:
                ax.plot(xs, ys, styles[server], label=server)
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{s:,}" for s in sizes])
        ax.set_xlabel("subscribers (one channel)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
        ax.legend()
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    fig.suptitle("clarion vs nchan vs Node (server on 1 core, loopback, ~100-byte JSON)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine_info() -> dict[str, str]:
    info = {"cores": str(os.cpu_count()), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return info


def portable(cmd: str) -> str:
    """A command as a reader reruns it: paths relative to the checkout, no temp dirs."""
    cmd = cmd.replace(str(REPO) + "/", "")
    return re.sub(r"/\S*/clarion-bench-[^/\s]+", "$WORKDIR", cmd)


def render(report: dict[str, Any], plot_rel: str | None) -> str:
    records: list[Record] = report["records"]
    sizes: list[int] = report["sizes"]
    args = report["args"]
    out: list[str] = ["# clarion benchmarks", ""]
    out += [
        f"Generated by `benchmarks/run.py` on {report['date']} (UTC), in one run on one machine. "
        "Re-run to refresh; every figure below comes from the same run.",
        "",
    ]
    # headline
    head = []
    for scenario, label in (("p1", "WebSocket"), ("p4", "SSE")):
        for size in sizes:
            c = find(records, scenario, "clarion", size).get("result", {})
            n = find(records, scenario, "nchan", size).get("result", {})
            if c and n:
                per_s = ratio(c.get("deliveries_per_s"), n.get("deliveries_per_s"))
                cpu_key = "deliveries_per_server_cpu_s"
                per_cpu = ratio(c.get(cpu_key), n.get(cpu_key))
                head.append(
                    f"- {label} fan-out, {size:,} subscribers: clarion/nchan = **{per_s}** "
                    f"deliveries/s, **{per_cpu}** deliveries per server CPU-second"
                )
    if head:
        out += ["## Summary (ratios to the reference, same run)", "", *head, ""]
        doubtful = [
            f"{r['scenario']} {r['server']} N={r.get('subscribers')}: {flags(r)}"
            for r in records
            if flags(r) != "ok"
        ]
        if doubtful:
            out += [
                "Caution: some measurements are flagged (see Method); their deliveries/s are "
                "not a clean server capacity:",
                "",
                *[f"- {d}" for d in doubtful],
                "",
            ]
    skipped = report.get("skipped", {})
    if skipped:
        out += ["Servers not measured in this run:", ""]
        out += [f"- **{k}**: {v}" for k, v in skipped.items()]
        out += [""]

    out += [
        "## Method",
        "",
        f"- Each server runs alone on core {SERVER_CORE} (`taskset -c {SERVER_CORE}`), started "
        "fresh for each measurement; the load generator runs on core "
        f"{GENERATOR_CORE} (`taskset -c {GENERATOR_CORE}`); loopback only.",
        f"- Publications: {args['payload_size']}-byte JSON documents on one channel, published "
        "over keep-alive HTTP/1.1 (`POST /api/publish` for clarion, nchan's publisher location, "
        "`POST /pub` for the Node servers), one request in flight per publisher connection.",
        f"- Saturation (P1, P4) is a closed loop: at most {args['window']} publications are in "
        "flight (published but not yet delivered to every subscriber), so the server is "
        "driven as fast as it fans out, without unbounded queues.",
        f"- Measured over {args['duration']} s after {args['warmup']} s of warm-up. "
        "deliveries/s = messages received by all subscribers / wall time. "
        "Server CPU = utime+stime of the server's processes (/proc/<pid>/stat, which here "
        "includes the loopback softirq work done inline in its sends) plus the "
        f"`ksoftirqd/{SERVER_CORE}` thread (softirq work the kernel deferred), / wall time; "
        "deliveries per server CPU-second = deliveries/s / that fraction: it stays fair when "
        "the generator, not the server, is the limit.",
        "- With several publications in flight a server may coalesce them into one write per "
        "subscriber (clarion does; nchan and the Node servers write each message): P1/P4 "
        "reward that. P2 (a fixed 100 publications/s, so no coalescing) shows the "
        "per-message cost: compare its deliveries per server CPU-second.",
        "- The generator counts WebSocket messages by walking frame headers; at saturation, by "
        "counting (in C, `bytes.count`) the marker each published document starts with exactly "
        "once (SSE: counting `data:` lines); "
        f"{args['sample']:.0%} of subscribers parse every message for latency "
        "(each publication carries its send time). After publishing stops it waits for every "
        "delivery: `exact` = received == publications x subscribers.",
        f"- Before each measurement the runner waits (up to {args['quiet_wait']:g} s) until "
        f"both cores are at most {args['quiet_threshold']:.0%} busy, and re-measures "
        f"(up to {args['retries']} more time(s)) a NOISY one, keeping the least noisy.",
        "- Flags: GEN-BOUND = the generator used >= 90 % of its core, so deliveries/s is a lower "
        "bound for that server (use the per-CPU-second figure); NOISY = other processes "
        f"used > 15 % of core {SERVER_CORE} during the window; INEXACT = deliveries lost.",
        "",
    ]
    scen = report["scenarios"]
    if "p1" in scen:
        out += ["## P1 - WebSocket fan-out at saturation", ""]
        out += fanout_tables(records, "p1", sizes)
        out += [""]
        if plot_rel:
            out += [f"![deliveries/s vs subscribers]({plot_rel})", ""]
    if "p2" in scen:
        out += [
            f"## P2 - latency, {args['p2_subscribers']:,} subscribers x "
            f"{args['p2_rate']:g} publications/s (WebSocket)",
            "",
            "| server | p50 ms | p99 ms | max ms | samples | deliveries/s | server CPU "
            "| deliveries per server CPU-s | generator CPU | exact | flags |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for server in ALL_SERVERS:
            rec = find(records, "p2", server)
            if not rec:
                continue
            r = rec.get("result", {})
            out.append(
                f"| {server} | {fnum(r.get('latency_p50_ms'), 2)} "
                f"| {fnum(r.get('latency_p99_ms'), 2)} | {fnum(r.get('latency_max_ms'), 2)} "
                f"| {fnum(r.get('latency_samples'))} | {fnum(r.get('deliveries_per_s'))} "
                f"| {pct(r.get('server_cpu_fraction'))} "
                f"| {fnum(r.get('deliveries_per_server_cpu_s'))} "
                f"| {pct(r.get('generator_cpu_fraction'))} "
                f"| {'yes' if r.get('exact') else 'no'} | {flags(rec)} |"
            )
        c = find(records, "p2", "clarion").get("result", {})
        n = find(records, "p2", "nchan").get("result", {})
        if c and n:
            out += [
                "",
                f"clarion/nchan p50: {ratio(c.get('latency_p50_ms'), n.get('latency_p50_ms'))}, "
                f"p99: {ratio(c.get('latency_p99_ms'), n.get('latency_p99_ms'))} (lower is "
                "better).",
            ]
        out += [""]
    if "p3" in scen:
        out += [
            f"## P3 - memory per idle subscribed WebSocket, {args['p3_connections']:,} connections",
            "",
            "RSS of the server's processes after the connections subscribed, minus before "
            "(after a warm-up with 50 connections and one publication), divided by N; "
            "then one publication checks all N are live.",
            "",
            "| server | RSS before MiB | RSS after MiB | bytes per connection | all live | flags |",
            "|---|---:|---:|---:|---|---|",
        ]
        for server in ALL_SERVERS:
            rec = find(records, "p3", server)
            if not rec:
                continue
            r = rec.get("result", {})
            mib = 1024 * 1024
            out.append(
                f"| {server} | {fnum((r.get('rss_before_bytes') or 0) / mib, 1)} "
                f"| {fnum((r.get('rss_after_bytes') or 0) / mib, 1)} "
                f"| {fnum(r.get('rss_per_connection_bytes'))} "
                f"| {'yes' if r.get('exact') else 'no'} | {flags(rec)} |"
            )
        c = find(records, "p3", "clarion").get("result", {})
        n = find(records, "p3", "nchan").get("result", {})
        if c and n:
            out += [
                "",
                "clarion/nchan bytes per connection: "
                f"{ratio(c.get('rss_per_connection_bytes'), n.get('rss_per_connection_bytes'))}",
            ]
        out += [
            "",
            "clarion's goal is 4 KiB (4,096 bytes) per idle connection. What an idle connection "
            "holds, each step with its figure, and how far one process scales, are in "
            "[docs/architecture.md](docs/architecture.md#memory-per-connection).",
            "",
        ]
    if "p4" in scen:
        out += ["## P4 - Server-Sent Events fan-out at saturation", ""]
        out += fanout_tables(records, "p4", sizes)
        out += [""]
    if "p5" in scen:
        where = ""
        if args.get("p5_engine", "memory") == "redis":
            placed = (
                "all on the server's core"
                if args.get("p5_redis_core", SERVER_CORE) == SERVER_CORE
                else "the nodes on the server's core, Redis on the load generator's"
            )
            where = (
                f", {args.get('p5_nodes', 1)} node(s) on one Redis ({placed}); "
                "each client resumes on another node than the one it left"
            )
        out += [
            f"## P5 - reconnect storm, {args['p5_clients']:,} clients (clarion{where})",
            "",
            f"All clients subscribed, publications at {args['p5_rate']:g}/s over HTTP; after "
            "3 s every connection is dropped at once (RST); 1 s later all reconnect at once "
            f"({args.get('p5_window', 256)} handshakes in flight) with `subscribe` + "
            "`since: <last cursor>`, while "
            "publishing goes on, so what was published meanwhile must come from history. "
            "Timed from the drop; passes when all have resumed and caught up within 10 s "
            "with no gap, no duplicate and no reset.",
            "",
        ]
        rec = find(records, "p5", "clarion")
        if rec:
            r = rec.get("result", {})
            out += [
                "| reconnected s | resumed and caught up s | published while away | gaps "
                "| duplicates | resets | lost | server CPU | generator CPU | passed |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                f"| {fnum(r.get('reconnect_connect_seconds'), 2)} "
                f"| {fnum(r.get('reconnect_resume_seconds'), 2)} "
                f"| {fnum(r.get('published_while_away'))} | {fnum(r.get('gaps'))} "
                f"| {fnum(r.get('duplicates'))} | {fnum(r.get('resets'))} "
                f"| {fnum(r.get('lost'))} | {pct(r.get('reconnect_server_cpu_fraction'))} "
                f"| {pct(r.get('reconnect_generator_cpu_fraction'))} "
                f"| {'**yes**' if r.get('passed') else '**no**'} |",
            ]
            if "storm_reply_ms" in r:
                tcp, reply = r["storm_tcp_ms"], r["storm_reply_ms"]
                out += [
                    "",
                    "Per reconnecting client, p50 / p90 / p99 ms: TCP connect "
                    f"{' / '.join(map(str, tcp))}; from connected to the `subscribe` reply "
                    f"{' / '.join(map(str, reply))}.",
                ]
            if "storm_redis_cpu_ms_per_session" in r:
                out += [
                    "",
                    "Per resumed session, from the drop to the last caught up: "
                    f"{r['storm_hub_cpu_ms_per_session']} ms of hub CPU (all nodes), "
                    f"{r['storm_redis_cpu_ms_per_session']} ms of Redis CPU, "
                    f"{r['storm_redis_reads_per_session']} Redis read events (about one per "
                    f"round trip) and {r['storm_redis_commands_per_session']} Redis commands "
                    "(scripts' inner commands included).",
                ]
            if "error" in rec:
                out += ["", f"Error: {rec['error']}"]
        else:
            out += ["Not measured (clarion not available)."]
        out += [""]

    if "p7" in scen:
        out += p7_section(records, args)
    flush_recs = [r for r in records if r["scenario"].startswith("flush-")]
    if flush_recs:
        out += [
            "## Flush interval: latency against CPU",
            "",
            "clarion writes each connection's pending frames once per event-loop iteration; "
            "`flush_interval` (seconds) lets them wait longer so several publications share one "
            f"write. Fixed rate: {args['p2_subscribers']:,} subscribers x {args['p2_rate']:g} "
            f"publications/s; saturation: {sizes[0]:,} subscribers, window {args['window']}.",
            "",
            "| flush_interval | fixed rate: p50 / p99 ms | fixed rate: server CPU "
            "| fixed rate: deliveries per CPU-s | saturation: deliveries/s "
            "| saturation: deliveries per CPU-s | saturation: p99 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for interval in FLUSH_INTERVALS:
            key = f"{interval:g}"
            rate = next(
                (r for r in flush_recs if r["scenario"] == "flush-rate"
                 and r["env"].get("CLARION_FLUSH_INTERVAL") == key), {}
            ).get("result", {})  # fmt: skip
            sat = next(
                (r for r in flush_recs if r["scenario"] == "flush-saturate"
                 and r["env"].get("CLARION_FLUSH_INTERVAL") == key), {}
            ).get("result", {})  # fmt: skip
            out.append(
                f"| {key} | {fnum(rate.get('latency_p50_ms'), 2)} / "
                f"{fnum(rate.get('latency_p99_ms'), 2)} | {pct(rate.get('server_cpu_fraction'))} "
                f"| {fnum(rate.get('deliveries_per_server_cpu_s'))} "
                f"| {fnum(sat.get('deliveries_per_s'))} "
                f"| {fnum(sat.get('deliveries_per_server_cpu_s'))} "
                f"| {fnum(sat.get('latency_p99_ms'), 2)} |"
            )
        out += [""]

    out += ["## Machine and load during the run", ""]
    m = report["machine"]
    out += [f"- {k}: {v}" for k, v in m.items()]
    out += [
        f"- load average before: {report['loadavg_before']}, after: {report['loadavg_after']}",
        "- per measurement (generator CPU on its core; busy fraction of each core; "
        "other load on the server core):",
        "",
        "| scenario | server | N | generator CPU | cpu0 busy | cpu1 busy | other on server core "
        "| busy before (cpu0/cpu1) | waited s | attempt | loadavg |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for rec in records:
        r = rec.get("result", {})
        cores = r.get("core_busy") or {}
        la = r.get("loadavg")
        quiet = rec.get("quiet_before") or {}
        qb = quiet.get("busy") or {}
        out.append(
            f"| {rec['scenario']} | {rec['server']} | {fnum(rec.get('subscribers'))} "
            f"| {pct(r.get('generator_cpu_fraction'))} | {pct(cores.get('cpu0'))} "
            f"| {pct(cores.get('cpu1'))} | {pct(other_load(rec))} "
            f"| {pct(qb.get('cpu0'))} / {pct(qb.get('cpu1'))} | {fnum(quiet.get('waited_s'), 1)} "
            f"| {rec.get('attempt', 1)} "
            f"| {' '.join(f'{x:.2f}' for x in la) if la else '-'} |"
        )
    out += ["", "## Versions", ""]
    out += [f"- {k}: {v}" for k, v in report["versions"].items()]
    out += [
        "",
        "## Commands",
        "",
        "Reproduce (as root; `benchmarks/setup.sh` installs nginx + nchan from Debian, the "
        "Node `ws` package and matplotlib when missing):",
        "",
        "```sh",
        report["command"],
        "```",
        "",
        "Exact commands of this run (ports are free loopback ports picked per measurement; "
        "clarion also got the environment shown, so that per-IP connection limits do not cap "
        "the runs):",
        "",
        "```sh",
    ]
    seen = set()
    for rec in records:
        for key in ("server_command", "loadgen_command"):
            cmd = rec.get(key)
            if cmd and cmd not in seen:
                seen.add(cmd)
                if key == "server_command" and rec.get("server_env"):
                    env = " ".join(f"{k}={v}" for k, v in rec["server_env"].items())
                    cmd = f"{env} {cmd}"
                out.append(portable(cmd))
    out += ["```", ""]
    return "\n".join(out)


def print_table(records: list[Record]) -> None:
    print(
        f"{'scen':4} {'server':8} {'tr':3} {'N':>6} {'deliv/s':>10} {'srvCPU':>6} "
        f"{'per CPU-s':>10} {'genCPU':>6} {'p50ms':>7} {'p99ms':>7} {'B/conn':>7}  flags"
    )
    for rec in records:
        r = rec.get("result", {})
        extra = ""
        if rec["scenario"] == "p5":
            extra = (
                f" resume={fnum(r.get('reconnect_resume_seconds'), 2)}s lost={r.get('lost')} "
                f"passed={r.get('passed')}"
            )
            if "storm_reply_ms" in r:
                extra += f" reply p50/p99 {r['storm_reply_ms'][0]}/{r['storm_reply_ms'][2]} ms"
            if "storm_hub_cpu_ms_per_session" in r:
                extra += f" per session: hub {r['storm_hub_cpu_ms_per_session']} ms CPU"
            if "storm_redis_cpu_ms_per_session" in r:
                extra += (
                    f", Redis {r['storm_redis_cpu_ms_per_session']} ms CPU, "
                    f"{r['storm_redis_reads_per_session']} reads, "
                    f"{r['storm_redis_commands_per_session']} commands"
                )
        print(
            f"{rec['scenario']:4} {rec['server']:8} {rec['transport']:3} "
            f"{fnum(rec.get('subscribers')):>6} {fnum(r.get('deliveries_per_s')):>10} "
            f"{pct(r.get('server_cpu_fraction')):>6} "
            f"{fnum(r.get('deliveries_per_server_cpu_s')):>10} "
            f"{pct(r.get('generator_cpu_fraction')):>6} {fnum(r.get('latency_p50_ms'), 1):>7} "
            f"{fnum(r.get('latency_p99_ms'), 1):>7} {fnum(r.get('rss_per_connection_bytes')):>7}"
            f"  {flags(rec)}{extra}",
            flush=True,
        )


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--scenarios", default="p1,p2,p3,p4,p5")
    p.add_argument("--servers", default="clarion,nchan,node")
    p.add_argument("--sizes", default="1000,10000", help="subscriber counts for P1 and P4")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--window", type=int, default=64, help="saturation: publications in flight")
    p.add_argument("--payload-size", type=int, default=100)
    p.add_argument("--sample", type=float, default=0.01, help="fraction parsing every frame")
    p.add_argument("--p2-subscribers", type=int, default=1000)
    p.add_argument("--p2-rate", type=float, default=100.0)
    p.add_argument(
        "--read-every",
        type=float,
        default=0.0,
        help="P2/P7 (fixed rates): subscribers that do not sample latency read their sockets "
        "every this many seconds instead of on each arrival, so that the server's sends wake "
        "no one, as with clients on other machines (0: on arrival; see benchmarks/loadgen.py)",
    )
    p.add_argument("--p3-connections", type=int, default=10000)
    p.add_argument("--p5-clients", type=int, default=10000)
    p.add_argument("--p5-rate", type=float, default=5.0)
    p.add_argument(
        "--p5-engine",
        choices=("memory", "redis"),
        default="memory",
        help="p5 on the memory engine (one node) or on a Redis started for the run",
    )
    p.add_argument("--p5-nodes", type=int, default=1, help="p5: clarion nodes (redis engine)")
    p.add_argument(
        "--p5-redis-core",
        type=int,
        choices=(SERVER_CORE, GENERATOR_CORE),
        default=SERVER_CORE,
        help=f"p5: the core of Redis: the hubs' ({SERVER_CORE}, the default) or the load "
        f"generator's ({GENERATOR_CORE}: as on another machine, though it shares that core)",
    )
    p.add_argument(
        "--p5-window",
        type=int,
        default=256,
        help="p5: clients reconnecting at once (each waits for its subscription before the "
        "next of the storm starts in its place)",
    )
    p.add_argument(
        "--p5-mark",
        default="",
        help="p5: a file the generator appends 'drop <hub pids>' to at the drop and 'caught' "
        "once all caught up (to profile the storm alone: benchmarks/storm_profile.py)",
    )
    p.add_argument("--p7-subscribers", type=int, default=10000)
    p.add_argument("--p7-channels", type=int, default=1000)
    p.add_argument("--p7-rate", type=float, default=10000.0, help="p7: publications/s")
    p.add_argument(
        "--p7-publishers", type=int, default=64, help="p7: publisher connections (one in flight)"
    )
    p.add_argument(
        "--p7-batch",
        type=int,
        default=0,
        help="p7: also clarion's publish path with this many publications per request "
        "(POST /api/publish_batch)",
    )
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="'-' to skip")
    p.add_argument("--plot", default=str(HERE / "img" / "fanout.png"))
    p.add_argument("--results-dir", default=str(HERE / "results"))
    p.add_argument("--no-install", action="store_true", help="do not apt-get/npm install")
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.15,
        help="before each measurement wait until both cores are at most this busy",
    )
    p.add_argument("--quiet-wait", type=float, default=60.0, help="max seconds to wait")
    p.add_argument("--retries", type=int, default=1, help="re-measure a NOISY measurement")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    wanted = [s.strip() for s in a.servers.split(",") if s.strip()]
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    for s in scenarios:
        if s not in ALL_SCENARIOS:
            raise SystemExit(f"unknown scenario {s}")
    for s in wanted:
        if s not in ALL_SERVERS:
            raise SystemExit(f"unknown server {s}")
    if a.p5_nodes < 1 or (a.p5_nodes > 1 and a.p5_engine != "redis"):
        raise SystemExit("--p5-nodes > 1 needs --p5-engine redis (nodes must share an engine)")
    if os.cpu_count() is not None and (os.cpu_count() or 0) < 2:
        raise SystemExit("needs 2 cores: one for the server, one for the load generator")
    os.sched_setaffinity(0, {GENERATOR_CORE})  # keep the runner off the server's core
    nofile = srv.raise_nofile()
    results_dir = Path(a.results_dir)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = results_dir / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    workroot = Path(tempfile.mkdtemp(prefix="clarion-bench-"))

    skipped: dict[str, str] = {}
    if "nchan" in wanted and (why := srv.ensure_nchan(not a.no_install)):
        skipped["nchan"] = why
    if "node" in wanted and (why := srv.ensure_node(not a.no_install)):
        skipped["node"] = why
    if "clarion" in wanted and (why := srv.clarion_probe(workroot)):
        skipped["clarion"] = "`clarion serve` did not start: " + why
    active = [s for s in wanted if s not in skipped]
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", flush=True)
    print(f"servers: {', '.join(active)}; fd limit {nofile}; logs in {log_dir}", flush=True)

    common = {
        "duration": a.duration,
        "warmup": a.warmup,
        "payload_size": a.payload_size,
        "timeout": a.warmup + a.duration + 150,
    }
    plan: list[tuple[str, str, str, dict[str, Any]]] = []
    for scenario in scenarios:
        if scenario in ("p1", "p4"):
            transport = "ws" if scenario == "p1" else "sse"
            for size in sizes:
                for server in active:
                    args = dict(common, mode="saturate", subscribers=size, window=a.window)
                    args["sample"] = a.sample
                    plan.append((scenario, server, transport, args))
        elif scenario == "p2":
            for server in active:
                args = dict(common, mode="rate", subscribers=a.p2_subscribers, rate=a.p2_rate)
                args["sample"] = max(a.sample, 0.05)
                args["read_every"] = a.read_every
                plan.append((scenario, server, "ws", args))
        elif scenario == "p3":
            for server in active:
                args = dict(common, mode="idle", subscribers=a.p3_connections, sample=0)
                plan.append((scenario, server, "ws", args))
        elif scenario == "flush" and "clarion" in active:
            # The trade-off between flush interval, latency and CPU: the fixed-rate load of P2
            # and saturation at the first size, for each interval.
            for interval in FLUSH_INTERVALS:
                env = {"CLARION_FLUSH_INTERVAL": f"{interval:g}"}
                args = dict(common, mode="rate", subscribers=a.p2_subscribers, rate=a.p2_rate)
                args["sample"] = max(a.sample, 0.05)
                plan.append(("flush-rate", "clarion", "ws", args | {"env": env}))
                args = dict(common, mode="saturate", subscribers=sizes[0], window=a.window)
                args["sample"] = a.sample
                plan.append(("flush-saturate", "clarion", "ws", args | {"env": env}))
        elif scenario == "p7":
            # Many rooms: the publish path (HTTP, JSON, history, cursor) shows beside delivery.
            for server in active:
                args = dict(common, mode="rate", subscribers=a.p7_subscribers, rate=a.p7_rate)
                args.update(channels=a.p7_channels, publishers=a.p7_publishers, sample=a.sample)
                args["read_every"] = a.read_every
                plan.append(("p7", server, "ws", args))
            for server in active:
                args = dict(common, mode="saturate", subscribers=a.p7_channels, sample=a.sample)
                args.update(channels=a.p7_channels, window=a.p7_publishers)
                plan.append(("p7-publish", server, "ws", args))
            if a.p7_batch > 1 and "clarion" in active:
                # The same publishers, each request carrying p7_batch publications.
                args = dict(common, mode="saturate", subscribers=a.p7_channels, sample=a.sample)
                args.update(channels=a.p7_channels, publishers=a.p7_publishers)
                args.update(window=a.p7_publishers * a.p7_batch, batch=a.p7_batch)
                plan.append(("p7-batch", "clarion", "ws", args))
        elif scenario == "p5" and "clarion" in active:
            args = dict(common, mode="storm", subscribers=a.p5_clients, rate=a.p5_rate)
            args.update(sample=0, duration=3.0, connect_concurrency=a.p5_window)
            if a.p5_mark:
                args["storm_mark"] = a.p5_mark
            args["cluster"] = (a.p5_engine, a.p5_nodes, a.p5_redis_core)
            plan.append((scenario, "clarion", "ws", args))

    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "command": shlex.join(
            [".venv/bin/python", "-m", "benchmarks.run", *(argv or sys.argv[1:])]
        ),
        "args": vars(a),
        "scenarios": scenarios,
        "sizes": sizes,
        "skipped": skipped,
        "machine": machine_info(),
        "versions": srv.versions(),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "records": [],
    }
    records: list[Record] = report["records"]
    try:
        for i, (scenario, server, transport, args) in enumerate(plan, 1):
            print(
                f"[{i}/{len(plan)}] {scenario} {server} {transport} N={args['subscribers']}",
                flush=True,
            )
            rec: Record = {}
            for attempt in range(1 + max(0, a.retries)):
                quiet = wait_quiet(a.quiet_threshold, a.quiet_wait)
                lg_args = {k: v for k, v in args.items() if k not in ("env", "cluster")}
                engine, nodes, redis_core = args.get("cluster", ("memory", 1, SERVER_CORE))
                new = measure(
                    scenario,
                    server,
                    transport,
                    lg_args,
                    workroot,
                    log_dir,
                    args.get("env"),
                    engine=engine,
                    nodes=nodes,
                    redis_core=redis_core,
                )
                new["quiet_before"] = quiet
                new["attempt"] = attempt + 1
                print_table([new])
                if not rec or (other_load(new) or 0.0) < (other_load(rec) or 0.0):
                    rec = new
                if "error" in new or (other_load(new) or 0.0) <= NOISE_THRESHOLD:
                    break
                print("  noisy: other processes used the server's core; measuring again")
            records.append(rec)
    finally:
        report["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        raw = results_dir / f"{stamp}.json"
        raw.write_text(json.dumps(report, indent=1, default=str))
        print(f"\nraw results: {raw}")
    print()
    print_table(records)
    plot_path = Path(a.plot)
    plot_rel = None
    if a.out != "-" and plot(records, sizes, plot_path):
        out_dir = Path(a.out).resolve().parent
        plot_rel = os.path.relpath(plot_path.resolve(), out_dir)
        print(f"plot: {plot_path}")
    if a.out != "-":
        Path(a.out).write_text(render(report, plot_rel))
        print(f"report: {a.out}")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
