"""Sentinel failover: a primary, a replica and three sentinels, two hubs, SIGKILL the primary."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..conftest import timeout
from ..redis_cluster import Servers, command, node_ports
from ..redis_fixture import REDIS_SERVER
from .conftest import CONFIG
from .helpers import Node, Publisher, Tracker, eventually
from .test_multinode import run_trackers

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="redis-server and redis-cli are needed",
    ),
]


class SentinelSet(Servers):
    """A primary, its replica and three sentinels watching them as ``main``."""

    def __init__(self) -> None:
        super().__init__()
        # Chosen before the nodes bind them: below the ephemeral range (redis_cluster.node_port).
        self.primary, self.replica, *self.sentinels = node_ports(5)

    def start_all(self) -> None:
        assert REDIS_SERVER is not None
        self.start(self.primary)
        self.start(self.replica, "--replicaof", "127.0.0.1", str(self.primary))
        self.wait_answering([self.primary, self.replica])
        for port in self.sentinels:
            conf = Path(self.dir) / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor main 127.0.0.1 {self.primary} 2\n"
                "sentinel down-after-milliseconds main 1000\n"
                "sentinel failover-timeout main 5000\n"
            )
            # A sentinel rewrites its file (what it learns): one file each, passed first.
            self.processes[port] = subprocess.Popen(
                [REDIS_SERVER, str(conf), "--sentinel", "--daemonize", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self.wait_answering(self.sentinels)
        # A failover needs a majority of sentinels that know each other and the replica.
        deadline = time.monotonic() + 30
        while not all(self._ready(p) for p in self.sentinels):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not find each other and the replica")
            time.sleep(0.1)

    def _ready(self, port: int) -> bool:
        fields = command(port, "SENTINEL", "MASTER", "main").split()
        info = dict(zip(fields[::2], fields[1::2], strict=False))
        return info.get("num-other-sentinels") == "2" and info.get("num-slaves") == "1"

    def master(self) -> int | None:
        """The primary's port as the first live sentinel reports it."""
        for port in self.sentinels:
            if port in self.processes:
                out = command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main").split()
                return int(out[1]) if len(out) == 2 else None
        return None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://{hosts}/main/0"


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    s = SentinelSet()
    try:
        s.start_all()
        yield s
    finally:
        s.cleanup()


async def test_the_hubs_follow_a_failover_and_no_subscriber_has_a_silent_gap(
    sentinels: SentinelSet, tmp_path: Path
) -> None:
    nodes: list[Node] = []
    try:
        for i in range(2):
            config = tmp_path / f"clarion-{i}.toml"
            config.write_text(CONFIG)
            nodes.append(
                Node(f"{sentinels.url}?check_interval=0.5&presence_ttl=2", config, tmp_path, {})
            )
        for node in nodes:
            await node.wait_healthy(timeout=timeout(30))
        a, b = nodes
        trackers = [Tracker("s") for _ in range(6)]
        stop_clients, stop_publishing = asyncio.Event(), asyncio.Event()
        tasks = await run_trackers(trackers[::2], [a.ws_url, b.ws_url], stop_clients)
        tasks += await run_trackers(trackers[1::2], [b.ws_url, a.ws_url], stop_clients)
        publishers = [Publisher(node.http_url, "s", rate=100) for node in nodes]
        publishing = [asyncio.create_task(p.run(stop_publishing)) for p in publishers]

        def published() -> int:
            return sum(len(p.published) for p in publishers)

        await eventually(lambda: published() >= 200, timeout=timeout(20))
        assert sentinels.master() == sentinels.primary
        sentinels.kill(sentinels.primary)
        await eventually(lambda: sentinels.master() == sentinels.replica, timeout=timeout(30))
        # Publishing goes on through the new primary, on both hubs.
        goals = [(p, len(p.published) + 50) for p in publishers]
        await eventually(lambda: all(len(p.published) >= n for p, n in goals), timeout=timeout(30))
        stop_publishing.set()
        await asyncio.gather(*publishing)

        async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
            params = {"channel": "s", "limit": "1", "reverse": "1"}
            newest = (await api.get("/api/history", params=params)).json()["publications"][0]
        last = (newest["epoch"], newest["offset"])
        await eventually(lambda: all(t.last == last for t in trackers), timeout=timeout(20))
        for t in trackers:
            t.assert_clean()  # recovered, or reset: never a silent gap or a duplicate
        stop_clients.set()
        await asyncio.gather(*tasks)
    finally:
        for node in nodes:
            node.kill()
