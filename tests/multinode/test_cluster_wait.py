"""``wait_replicas`` on a Redis Cluster whose primary stalls long enough to be replaced.

Three primaries with a replica each; two hub processes; about 200 publications/s over twelve
channels through both. The primary of one channel is stopped (SIGSTOP) until its replica has
taken over, then resumed: the publications queued on it run there before it learns it was
demoted, and are lost when it rejoins as a replica. Without ``wait_replicas`` their publishers
may have been answered 200 with offsets the new primary then hands out again; with it, a
publication answered 200 is in the history at the position it was given, and the others were
answered 503 ``engine_unavailable`` (their publishers retry with their idempotency key).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import timeout
from ..redis_cluster import RedisCluster, command
from .conftest import CONFIG
from .helpers import Node, eventually

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="redis-server and redis-cli are needed",
    ),
]

CHANNELS = [f"w{i}" for i in range(12)]
RATE = 200.0


class Publishing:
    """Publishes ``RATE`` times a second, round robin over the channels and the nodes, without
    waiting for answers (a stalled primary holds many at once, as under real load)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        # seq -> (channel, status, error code or None, epoch, offset)
        self.answers: dict[int, tuple[str, int, str | None, str, int]] = {}
        self.answered_at: dict[int, float] = {}

    async def run(self, until: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=256)
        async with httpx.AsyncClient(timeout=timeout(20), limits=limits) as client:
            started, n, tasks = time.monotonic(), 0, set()
            while not until.is_set():
                task = asyncio.create_task(self.one(client, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
            await asyncio.gather(*tasks)

    async def one(self, client: httpx.AsyncClient, n: int) -> None:
        channel = CHANNELS[n % len(CHANNELS)]
        url = self.urls[n % len(self.urls)]
        body = {"channel": channel, "data": {"seq": n}, "id": f"p{n}"}
        r = await client.post(f"{url}/api/publish", json=body)
        out = r.json()
        if r.status_code == 200:
            self.answers[n] = (channel, 200, None, out["epoch"], out["offset"])
        else:
            self.answers[n] = (channel, r.status_code, out["error"]["code"], "", 0)
        self.answered_at[n] = time.monotonic()

    def acked(self, after: float = 0.0) -> list[int]:
        return [n for n, a in self.answers.items() if a[1] == 200 and self.answered_at[n] > after]


async def test_a_stalled_primary_replaced_meanwhile_loses_no_acknowledged_publication(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    cluster = redis_cluster
    config = tmp_path / "clarion.toml"
    config.write_text(CONFIG)
    engine = f"{cluster.url}?check_interval=0.5&presence_ttl=2&wait_replicas=1&wait_timeout=0.5"
    nodes = [Node(engine, config, tmp_path, {}) for _ in range(2)]
    try:
        for node in nodes:
            await node.wait_healthy(timeout=timeout(30))
        await run_failover(cluster, nodes)
    finally:
        for node in nodes:
            node.kill()


async def run_failover(cluster: RedisCluster, nodes: list[Node]) -> None:
    publishing = Publishing([node.http_url for node in nodes])
    stop = asyncio.Event()
    task = asyncio.create_task(publishing.run(stop))
    try:
        await eventually(lambda: len(publishing.acked()) >= 200, timeout=timeout(20))
        key = f"clarion:{{{CHANNELS[0]}}}:meta"
        victim = cluster.owner(key)
        assert victim is not None
        witness = next(p for p in cluster.ports if p != victim)
        process = cluster.processes[victim]
        os.kill(process.pid, signal.SIGSTOP)
        try:
            # Stopped until its replica has taken over, as a primary stalled by a long fork,
            # a swapped-out page or a paused VM would be.
            await eventually(
                lambda: cluster.owner(key, via=witness) not in (None, victim),
                timeout=timeout(30),
                interval=0.1,
            )
        finally:
            os.kill(process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        # It rejoins as a replica of the new primary, whose writes can then be acknowledged.
        await eventually(
            lambda: "master_link_status:up" in command(victim, "INFO", "replication"),
            timeout=timeout(30),
            interval=0.2,
        )
        # Publishing to the failed-over shard goes on.
        await eventually(
            lambda: any(publishing.answers[n][0] == CHANNELS[0] for n in publishing.acked(resumed)),
            timeout=timeout(30),
        )
    finally:
        stop.set()
        await task

    stored = await histories(nodes[0].http_url)
    answers = publishing.answers
    acked = publishing.acked()
    positions: dict[tuple[str, str, int], int] = {}
    for n in acked:
        channel, _, _, epoch, offset = answers[n]
        # No position is given to two publications, and each answered 200 is stored there.
        assert (channel, epoch, offset) not in positions, (n, positions[(channel, epoch, offset)])
        positions[(channel, epoch, offset)] = n
        assert stored.get((channel, epoch, offset)) == n, (n, answers[n])
    refused = {(a[1], a[2]) for a in answers.values() if a[1] != 200}
    assert refused == {(503, "engine_unavailable")}, refused  # the stalled ones, at least


async def histories(url: str) -> dict[tuple[str, str, int], Any]:
    """Every stored publication: (channel, epoch, offset) -> its seq."""
    out: dict[tuple[str, str, int], Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=timeout(10)) as api:
        for channel in CHANNELS:
            r = await api.get("/api/history", params={"channel": channel, "limit": "1000"})
            assert r.status_code == 200, r.text
            body = r.json()
            for pub in body["publications"]:
                out[(channel, pub["epoch"], pub["offset"])] = pub["data"]["seq"]
    return out
