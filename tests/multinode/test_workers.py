"""``clarion serve --workers 2``: two processes on one port, one Redis, one supervisor."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from ..conftest import timeout
from ..redis_fixture import RedisServer, free_port
from .helpers import CLARION, Publisher, Tracker, eventually
from .test_multinode import run_trackers

pytestmark = pytest.mark.timeout(90)

CONFIG = """
[namespaces.default]
history_size = 10000
"""


class Workers:
    """A ``clarion serve --workers 2`` process tree on a loopback port."""

    def __init__(self, engine: str, tmp_path: Path) -> None:
        self.port = free_port()
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        config = tmp_path / "clarion.toml"
        config.write_text(CONFIG)
        self.log_path = tmp_path / "workers.log"
        self._log = self.log_path.open("wb")
        args = [CLARION, "serve", "--config", str(config), "--engine", engine]
        args += ["--port", str(self.port), "--workers", "2", "--log-level", "info"]
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def pids(self) -> dict[int, int]:
        """The latest pid of each worker, from the supervisor's log."""
        found = re.findall(r"worker (\d+) started \(pid (\d+)\)", self.log())
        return {int(n): int(pid) for n, pid in found}

    async def metrics(self) -> dict[str, float]:
        """``clarion_connections{transport="ws"}`` by worker, over fresh connections until
        both workers have answered (the kernel spreads connections by their addresses)."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout(15)
        while len(seen) < 2 and time.monotonic() < deadline:
            async with httpx.AsyncClient(timeout=2) as client:
                r = await client.get(self.http_url + "/metrics")
            samples = [line for line in r.text.splitlines() if not line.startswith("#")]
            unlabelled = [line for line in samples if 'worker="' not in line]
            assert samples and unlabelled == [], unlabelled[:3]
            for worker, n in re.findall(
                r'clarion_connections\{transport="ws",worker="(\d+)"\} (\S+)', r.text
            ):
                seen[worker] = float(n)
        assert len(seen) == 2, f"only workers {sorted(seen)} answered /metrics"
        return seen

    async def wait_listening(self) -> None:
        await eventually(
            lambda: "2 workers listening" in self.log() or self.process.poll() is not None,
            timeout=timeout(30),
        )
        assert self.process.poll() is None, self.log()[-3000:]

    def stop(self) -> None:
        pids = self.pids()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for pid in pids.values():  # orphans would end on their own; do not wait for it
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


class Reconnecting(Publisher):
    """A publisher whose connection may land on the worker that is killed: it reconnects."""

    def __init__(self, url: str, channel: str, rate: float) -> None:
        super().__init__(url, channel, rate)
        self.cut = 0  # requests whose connection died under them (stored or not)

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set():
            try:
                await super().run(until)
            except httpx.TransportError:
                self.cut += 1


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) no longer runs.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Workers:  # type: ignore[misc]
    w = Workers(f"{redis_server.url}?check_interval=0.5&presence_ttl=2", tmp_path)
    try:
        yield w
    finally:
        w.stop()


async def test_one_port_two_workers_share_channels_and_a_killed_worker_comes_back(
    workers: Workers,
) -> None:
    await workers.wait_listening()
    trackers = [Tracker("w") for _ in range(16)]
    stop_clients, stop_publisher = asyncio.Event(), asyncio.Event()
    tasks = await run_trackers(trackers, [workers.ws_url], stop_clients)
    # Subscribers on both workers (16 connections all on one would be 1 chance in 32,768).
    connections = await workers.metrics()
    assert sum(connections.values()) == 16 and all(connections.values()), connections

    publisher = Reconnecting(workers.http_url, "w", rate=100)
    publishing = asyncio.create_task(publisher.run(stop_publisher))
    await eventually(lambda: len(publisher.published) >= 50, timeout=timeout(10))
    before = workers.pids()
    victim = before[1]
    os.kill(victim, signal.SIGKILL)
    # Its clients reconnect to the same port and resume from their cursors.
    await eventually(lambda: workers.pids()[1] != victim, timeout=timeout(15))
    assert f"worker 1 (pid {victim}) exited (signal 9)" in workers.log()
    await eventually(lambda: sum(t.connections for t in trackers) > 16, timeout=timeout(15))
    moved = len(publisher.published)
    await eventually(lambda: len(publisher.published) >= moved + 50, timeout=timeout(15))
    # The new worker 1 serves: it answers on the shared port.
    await eventually(
        lambda: "[worker 1] clarion.cli: clarion" in workers.log().rsplit(f"pid {victim}", 1)[1],
        timeout=timeout(30),
    )
    stop_publisher.set()
    await publishing
    assert publisher.failures == []
    last = publisher.published[-1]
    await eventually(lambda: all(t.last == last for t in trackers), timeout=timeout(15))
    for t in trackers:
        t.assert_clean()
        assert t.resets == []
        first = t.offsets[0][1]
        assert [o for _, o in t.offsets] == list(range(first, last[1] + 1))
    stop_clients.set()
    await asyncio.gather(*tasks)

    # SIGTERM to the supervisor drains every worker and ends the tree.
    pids = workers.pids()
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(timeout=timeout(30)) == 0
    await eventually(lambda: not any(_running(p) for p in pids.values()), timeout=timeout(10))
    log = workers.log()
    for n in (1, 2):
        assert f"[worker {n}] clarion.cli: stopped" in log
    assert " ERROR " not in log, log[-3000:]


async def test_workers_end_when_their_supervisor_is_killed(workers: Workers) -> None:
    await workers.wait_listening()
    pids = workers.pids()
    workers.process.kill()
    workers.process.wait(timeout=10)
    await eventually(lambda: not any(_running(p) for p in pids.values()), timeout=timeout(20))
    assert "the supervising process is gone" in workers.log()


def test_several_workers_refuse_the_memory_engine(tmp_path: Path) -> None:
    out = subprocess.run(
        [CLARION, "serve", "--workers", "2", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "--workers 2 needs an engine the workers share" in out.stderr
    assert "Redis engine" in out.stderr
