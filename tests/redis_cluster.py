"""A real Redis Cluster (and a Sentinel set) started by the test itself, on free loopback ports.

``RedisCluster(primaries=3, replicas=1)`` starts ``redis-server --cluster-enabled yes`` six
times in temporary directories, joins them with ``redis-cli --cluster create`` and waits
until every node reports ``cluster_state:ok``. Failure detection is fast
(``cluster-node-timeout`` 1 s) so that a killed primary's replica takes over within seconds.
Every server is stopped by its pid at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from .conftest import free_port
from .redis_fixture import REDIS_SERVER

REDIS_CLI = shutil.which("redis-cli")


def command(port: int, *args: str, timeout: float = 2.0) -> str:
    """One command through ``redis-cli`` (raw output)."""
    assert REDIS_CLI is not None
    out = subprocess.run(
        [REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout
    )
    return out.stdout


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def node_port() -> int:
    """A free port for a node, whose cluster bus port (port + 10000) is free too."""
    return free_port(span=10000)


def node_ports(count: int) -> list[int]:
    """Free ports for ``count`` nodes started together: drawn at random, two may be the same
    (a node then fails to start), or one another's bus port, unless drawn again."""
    ports: list[int] = []
    while len(ports) < count:
        port = node_port()
        taken = {p for q in ports for p in (q, q + 10000)}
        if port not in taken and port + 10000 not in taken:
            ports.append(port)
    return ports


class Servers:
    """redis-server processes of one test; each stopped by pid."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="clarion-redis-")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}  # port -> process

    def start(self, port: int, *extra: str) -> None:
        assert REDIS_SERVER is not None
        folder = os.path.join(self.dir, str(port))
        os.makedirs(folder, exist_ok=True)
        # fmt: off
        args = [
            REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", folder,
            "--loglevel", "notice", "--logfile", "redis.log", *extra,
        ]
        # fmt: on
        self.processes[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_answering(self, ports: list[int], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(answers(p) for p in ports):
            exited = [p for p in ports if self.processes[p].poll() is not None]
            if exited:  # the port was taken after all: what answers there is not ours
                raise RuntimeError(f"redis-server exited at start on {exited}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on {ports}")
            time.sleep(0.02)

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(port, None)
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def cleanup(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster(Servers):
    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        super().__init__()
        self.ports = node_ports(primaries * (1 + replicas))
        self.replicas = replicas

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start_all(self, timeout: float = 60.0) -> None:
        for port in self.ports:
            self.start(
                port,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
                # A replica whose link lagged on a busy machine still takes over its primary.
                "--cluster-replica-validity-factor", "0",
                # A replica's first sync streams straight from its primary's memory into its
                # own: no wait for more replicas, and no file on disk at either end.
                "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0",
                "--repl-diskless-load", "on-empty-db",
            )  # fmt: skip
        self.wait_answering(self.ports)
        assert REDIS_CLI is not None
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        replicas = ["--cluster-replicas", str(self.replicas)]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *nodes, *replicas, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        self.wait_ok(timeout)
        self.wait_replicas_synced(timeout)

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Every replica has its primary's data: only then can it take over from a killed one."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [command(p, "INFO", "replication") for p in self.ports if p in self.processes]
            replicas = [info for info in infos if "role:slave" in info]
            if len(replicas) == self.replicas * (len(self.ports) // (1 + self.replicas)) and all(
                "master_link_status:up" in info and "master_sync_in_progress:0" in info
                for info in replicas
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the cluster's replicas did not sync with their primaries\n" + self.report()
                )
            time.sleep(0.1)

    def report(self) -> str:
        """Each live node's replication state and the end of its log, for a failed start."""
        lines = []
        for port in self.ports:
            if port not in self.processes:
                continue
            try:
                info = command(port, "INFO", "replication")
            except subprocess.TimeoutExpired:
                info = "role:no answer"
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            keys = ("role", "master_port", "master_link_status", "master_sync_in_progress")
            lines.append(f"{port}: " + " ".join(f"{k}={fields.get(k)}" for k in keys))
            try:
                with open(os.path.join(self.dir, str(port), "redis.log")) as fh:
                    lines.extend("    " + line.rstrip() for line in fh.readlines()[-15:])
            except OSError:
                pass
        return "\n".join(lines)

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            live = [p for p in self.ports if p in self.processes]
            if all("cluster_state:ok" in command(p, "CLUSTER", "INFO") for p in live):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok\n" + self.report())
            time.sleep(0.1)

    def owner(self, key: str, via: int | None = None) -> int | None:
        """The port of the primary that owns ``key``'s slot now (None: none, failing over), as
        the node on port ``via`` (by default the first running) sees it."""
        if via is None:
            via = next(p for p in self.ports if p in self.processes)
        slot = int(command(via, "CLUSTER", "KEYSLOT", key).strip())
        for line in command(via, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        return None

    def node_id(self, port: int) -> str:
        return command(port, "CLUSTER", "MYID").strip()

    def move_slot(self, key: str, to: int) -> None:
        """Migrate ``key``'s slot, keys included, to the primary on port ``to``."""
        source = self.owner(key)
        assert source is not None and source != to
        slot = command(source, "CLUSTER", "KEYSLOT", key).strip()
        src, dst = self.node_id(source), self.node_id(to)
        command(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", src)
        command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst)
        while keys := command(source, "CLUSTER", "GETKEYSINSLOT", slot, "100").split():
            command(source, "MIGRATE", "127.0.0.1", str(to), "", "0", "5000", "KEYS", *keys)
        for port in self.ports:
            if port in self.processes:
                command(port, "CLUSTER", "SETSLOT", slot, "NODE", dst)
