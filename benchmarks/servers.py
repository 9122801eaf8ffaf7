"""Start, probe and stop the servers under test: clarion and the reference servers.

Every server is started pinned to one core (``taskset -c CORE``) on a free loopback port,
with its own working directory under a temporary directory, and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.loadgen import descendants, raise_nofile

__all__ = ["Server", "ServerError", "raise_nofile", "start_server", "versions"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REFS = HERE / "refs"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
HUB_PYTHON_ENV = "BENCH_HUB_PYTHON"

# clarion's limits are raised so that they do not cap a 10,000-connection run from loopback
CLARION_ENV = {
    "CLARION_LIMITS__MAX_CONNECTIONS": "100000",
    "CLARION_LIMITS__MAX_CONNECTIONS_PER_IP": "100000",
    "CLARION_LIMITS__MAX_CONNECTIONS_PER_USER": "100000",
    # Every client resumes from one address, which one address's allowance of history cannot
    # cover.
    "CLARION_LIMITS__CLIENT_HISTORY_RATE": str(1 << 40),
    "CLARION_LIMITS__CLIENT_HISTORY_BURST": str(1 << 40),
    # And every client subscribes from it, all at once in a reconnect storm: more subscriptions
    # than one address may start.
    "CLARION_LIMITS__CLIENT_SUBSCRIBE_RATE": str(1 << 40),
    "CLARION_LIMITS__CLIENT_SUBSCRIBE_BURST": str(1 << 40),
}


class ServerError(RuntimeError):
    pass


@dataclass
class Server:
    name: str  # clarion | nchan | node
    transport: str  # ws | sse
    port: int
    command: list[str]
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return descendants([self.proc.pid])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server (then SIGKILL), and any child process it left behind."""
        tree = self.pids()
        if self.alive():
            stop_process(self.proc, timeout)
        for pid in tree[1:]:  # e.g. an nginx worker whose master died
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, then SIGKILL it if it has not ended within ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET on loopback: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, body


def wait_healthy(
    port: int, proc: subprocess.Popen[bytes], seconds: float, probe: float = 1.0
) -> None:
    """Return once ``GET /healthz`` on ``port`` answers 200; raise if ``proc`` ends first or
    ``seconds`` pass (``probe``: each attempt's timeout, longer for a server under valgrind)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if http_get(port, "/healthz", timeout=probe)[0] == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} did not start")
        time.sleep(0.1)


def under_callgrind(cmd: list[str], out: Path | str) -> list[str]:
    """``cmd`` under callgrind, writing to ``out``; nothing is counted until the program turns
    instrumentation on (``--instr-atstart=no``), so that start-up is left out."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *cmd,
    ]


def hub_python() -> str:
    """The interpreter the hubs run on: ``$BENCH_HUB_PYTHON`` (a Python whose environment
    has clarion installed, e.g. a venv made from another build of CPython), or this one."""
    return os.environ.get(HUB_PYTHON_ENV) or sys.executable


def clarion_command(python: str | None = None) -> list[str]:
    """How to run ``clarion`` on ``python`` (a Python whose environment has clarion installed),
    by default the hub's interpreter (:func:`hub_python`)."""
    python = python or os.environ.get(HUB_PYTHON_ENV)
    if python:
        return [python, "-m", "clarion"]
    script = Path(sys.executable).parent / "clarion"
    if script.exists():
        return [str(script)]
    found = shutil.which("clarion")
    if found:
        return [found]
    return [sys.executable, "-c", "from clarion.cli import main; raise SystemExit(main())"]


def nchan_config(prefix: Path, port: int) -> str:
    template = (REFS / "nchan.conf.template").read_text()
    return template.replace("@PREFIX@", str(prefix)).replace("@PORT@", str(port))


def start_server(
    name: str,
    transport: str,
    workroot: Path,
    core: int | None = 1,
    ready_timeout: float = 20.0,
    env_extra: dict[str, str] | None = None,
    python: str | None = None,
) -> Server:
    """Start ``name`` (clarion|nchan|node) serving ``transport`` (ws|sse) on a free port;
    clarion on ``python`` if given (see :func:`clarion_command`)."""
    port = free_port()
    workdir = workroot / f"{name}-{transport}-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    env = dict(os.environ)
    extra_env: dict[str, str] = {}
    if name == "clarion":
        cmd = [*clarion_command(python), "serve", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--log-level", "warning"]
        extra_env = {**CLARION_ENV, **(env_extra or {})}
        health = "/healthz"
    elif name == "nchan":
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / sub).mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(nchan_config(workdir, port))
        cmd = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
        health = "/healthz"
    elif name == "node":
        script = "ws_server.js" if transport == "ws" else "sse_server.js"
        cmd = ["node", str(REFS / script), str(port)]
        health = "/healthz"
    else:
        raise ValueError(name)
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    env.update(extra_env)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(name, transport, port, cmd, proc, workdir, log, extra_env)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerError(f"{name} exited at startup: {server.log_tail()}")
        try:
            status, _ = http_get(port, health, timeout=1.0)
            if status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise ServerError(
        f"{name} did not answer {health} within {ready_timeout}s: {server.log_tail()}"
    )


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workroot: Path, core: int | None = 1, ready_timeout: float = 10.0) -> Server:
    """A ``redis-server`` on a free port, nothing persisted: the engine of clarion nodes."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerError("redis-server is not installed")
    port = free_port()
    workdir = workroot / f"redis-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    # fmt: off
    cmd = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--daemonize", "no", "--dir", str(workdir), "--loglevel", "warning",
    ]
    # fmt: on
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = Server("redis", "resp", port, cmd, proc, workdir, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerError(f"redis-server exited at startup: {server.log_tail()}")
        if redis_ping(port):
            return server
        time.sleep(0.05)
    server.stop()
    raise ServerError(f"redis-server did not answer PING within {ready_timeout}s")


@contextlib.contextmanager
def temporary_redis(prefix: str) -> Iterator[tuple[Path, Server]]:
    """A directory for a run and a ``redis-server`` of its own in it (on any core); both are
    gone afterwards."""
    workroot = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        redis = start_redis(workroot, core=None)
        try:
            yield workroot, redis
        finally:
            redis.stop()
    finally:
        shutil.rmtree(workroot, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Availability and versions


def _run(cmd: list[str], timeout: float = 20.0) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout + out.stderr).decode(errors="replace").strip()


def nchan_available() -> bool:
    return shutil.which("nginx") is not None and NCHAN_MODULE.exists()


def node_available() -> bool:
    return shutil.which("node") is not None and (REFS / "node_modules" / "ws").is_dir()


def ensure_nchan(install: bool) -> str | None:
    """None when nginx+nchan are usable, else the reason. May run setup.sh (apt-get)."""
    if nchan_available():
        return None
    if not install:
        return "nginx/nchan not installed (run benchmarks/setup.sh)"
    _run(["bash", str(HERE / "setup.sh")], timeout=600)
    return None if nchan_available() else "benchmarks/setup.sh did not install nginx+nchan"


def ensure_node(install: bool) -> str | None:
    if shutil.which("node") is None:
        return "node not installed"
    if node_available():
        return None
    if not install:
        return "benchmarks/refs/node_modules missing (npm install)"
    _run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(REFS)], timeout=300)
    return None if node_available() else "npm install in benchmarks/refs failed"


def clarion_probe(workroot: Path) -> str | None:
    """None when ``clarion serve`` starts and answers /healthz, else the reason."""
    try:
        server = start_server("clarion", "ws", workroot, core=None, ready_timeout=15.0)
    except ServerError as exc:
        return str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else "failed"
    server.stop()
    return None


_BUILD_PROBE = """
import os, sys, sysconfig
args = sysconfig.get_config_var("CONFIG_ARGS") or ""
flags = [f for f in ("--enable-optimizations", "--with-lto") if f in args]
shared = any("libpython" in line for line in open("/proc/self/maps"))
print(sys.version.split()[0], os.path.realpath(sys.executable),
      "libpython " + ("shared" if shared else "linked in"), *flags)
"""


def interpreter_build(python: str) -> str:
    """What a hub's CPython is: version, binary, whether libpython is a shared library (its
    calls then go through the PLT) and the optimisation flags its build declares (a
    distribution's build may be optimised without declaring it)."""
    return _run([python, "-c", _BUILD_PROBE]).strip() or "?"


def versions() -> dict[str, str]:
    v: dict[str, str] = {}
    v["python"] = sys.version.split()[0]
    v["hub python"] = interpreter_build(hub_python())
    for dist in ("uvloop", "httptools", "orjson", "clarion"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            v[dist] = version(dist)
    rev = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if not rev or "fatal" in rev or " " in rev:
        rev = "no commit yet"
    dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"])
    v["clarion_git"] = rev + (" (+ uncommitted changes in src/)" if dirty else "")
    nginx = _run(["nginx", "-v"])
    v["nginx"] = nginx.split("/")[-1] if nginx else "not installed"
    v["nchan"] = _run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"]) or "?"
    v["node"] = _run(["node", "--version"]) or "not installed"
    try:
        pkg = json.loads((REFS / "node_modules" / "ws" / "package.json").read_text())
        v["ws"] = str(pkg["version"])
    except (OSError, ValueError, KeyError):
        v["ws"] = "not installed"
    v["redis"] = _run(["redis-server", "--version"]).split(" v=")[-1].split(" ")[0] or "?"
    v["kernel"] = os.uname().release
    return v
