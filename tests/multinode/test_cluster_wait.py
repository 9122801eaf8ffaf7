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
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from clarion.engines.redis import RedisEngine
from clarion.errors import EngineUnavailable
from clarion.settings import NamespaceOptions, Settings

from ..conftest import timeout
from ..engines.helpers import RecordingSink
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
# Requests in flight at most, one per connection of the client's. httpcore's pool looks at every
# connection it holds (a poll(2) each) whenever a request starts or ends: with the 256 that a
# stall's pile-up made, the answers that came at its end held this test's event loop for 2-3 s.
# It read them late, and reused connections that the hub had closed as idle meanwhile (5 s
# after it answered): a ReadError with no fault of the hub's. Past it, the publisher waits.
IN_FLIGHT = 64


class Publishing:
    """Publishes ``RATE`` times a second, round robin over the channels and the nodes, without
    waiting for answers (a stalled primary holds many at once, as under real load)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        # seq -> (channel, status, error code or None, epoch, offset)
        self.answers: dict[int, tuple[str, int, str | None, str, int]] = {}
        self.answered_at: dict[int, float] = {}
        self.failures: list[str] = []  # requests that got no answer at all
        self.slots = asyncio.Semaphore(IN_FLIGHT)

    async def run(self, until: asyncio.Event) -> None:
        # The stall leaves many connections idle once it ends. Each is let go before the hub's
        # keep-alive timeout (5 s) can close it under a request reusing it (a ReadError).
        limits = httpx.Limits(max_connections=IN_FLIGHT, keepalive_expiry=2)
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
        reused = True

        async def trace(event: str, _info: dict[str, Any]) -> None:
            nonlocal reused
            if event.startswith("connection.connect_tcp"):
                reused = False

        try:
            async with self.slots:
                r = await client.post(f"{url}/api/publish", json=body, extensions={"trace": trace})
        except httpx.TransportError as exc:
            # Said with what tells a hub's fault from the keep-alive race of HTTP/1.1 (a
            # connection the hub closed as idle while a request was on its way on it).
            kind = "a reused" if reused else "a new"
            at = time.monotonic()
            self.failures.append(f"#{n} to {url} on {kind} connection at {at:.3f}: {exc!r}")
            return
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


def stop_owner(cluster: RedisCluster, key: str) -> tuple[int, int]:
    """SIGSTOP the primary that holds ``key``: its port, and another node's to ask through."""
    victim = cluster.owner(key)
    assert victim is not None
    witness = next(p for p in cluster.ports if p != victim)
    os.kill(cluster.processes[victim].pid, signal.SIGSTOP)
    return victim, witness


async def lag(worst: list[float]) -> None:
    """The longest this test's own event loop could not run, in ``worst[0]``: a stall of its
    HTTP client makes it reuse connections the hub has closed as idle meanwhile (IN_FLIGHT)."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.05)
        worst[0] = max(worst[0], loop.time() - before - 0.05)


async def run_failover(cluster: RedisCluster, nodes: list[Node]) -> None:
    publishing = Publishing([node.http_url for node in nodes])
    stop = asyncio.Event()
    task = asyncio.create_task(publishing.run(stop))
    worst = [0.0]
    watch = asyncio.create_task(lag(worst))
    try:
        await eventually(lambda: len(publishing.acked()) >= 200, timeout=timeout(20))
        key = f"clarion:{{{CHANNELS[0]}}}:meta"
        victim, witness = stop_owner(cluster, key)
        stalled = time.monotonic()
        process = cluster.processes[victim]
        try:
            # Stopped until its replica has taken over, as a primary stalled by a long fork,
            # a swapped-out page or a paused VM would be. redis-cli runs beside the loop: a
            # resumed primary may take seconds to answer it, and the publishing client, on
            # the loop, would hold answers unread meanwhile (see lag).
            await eventually(
                lambda: asyncio.to_thread(
                    lambda: cluster.owner(key, via=witness) not in (None, victim)
                ),
                timeout=timeout(30),
                interval=0.1,
            )
        finally:
            os.kill(process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        # It rejoins as a replica of the new primary, whose writes can then be acknowledged.
        await eventually(
            lambda: asyncio.to_thread(
                lambda: "master_link_status:up" in command(victim, "INFO", "replication")
            ),
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
        watch.cancel()

    # Every request was answered (a 503 at worst); the nodes' logs say what they saw if not.
    assert not publishing.failures, (
        f"stalled at {stalled:.3f}, resumed at {resumed:.3f}; the test's loop stalled "
        f"{worst[0]:.3f} s at most",
        publishing.failures,
        [node.log() for node in nodes],
    )
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


class Subscriber:
    """One WebSocket subscription: what it was sent, in order."""

    def __init__(self, url: str, channel: str) -> None:
        self.url, self.channel = url, channel
        self.received: list[tuple[str, int, Any]] = []  # epoch, offset, data
        self.resets: list[str] = []
        self.subscribed = asyncio.Event()

    async def run(self, until: asyncio.Event) -> None:
        protocols = [websockets.Subprotocol("clarion.v1")]
        async with websockets.connect(self.url, subprotocols=protocols) as ws:
            await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": self.channel}))
            stop = asyncio.ensure_future(until.wait())
            try:
                while True:
                    recv = asyncio.ensure_future(ws.recv())
                    await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if not recv.done():
                        recv.cancel()
                        return
                    msg = json.loads(recv.result())
                    if msg.get("id") == 1:
                        assert "ok" in msg, msg
                        self.subscribed.set()
                    elif "reset" in msg:
                        self.resets.append(msg["reset"]["reason"])
                    elif msg.get("channel") == self.channel and "offset" in msg:
                        self.received.append((msg["epoch"], msg["offset"], msg["data"]))
            finally:
                stop.cancel()

    def data(self) -> list[Any]:
        return [data for _, _, data in self.received]


def replica_online(port: int) -> bool:
    info = command(port, "INFO", "replication")
    return "role:master" in info and "state=online" in info


async def test_a_stalled_primary_shows_subscribers_nothing_they_would_skip_later(
    tmp_path: Path,
) -> None:
    """The stalled primary runs a publication queued on it and, unaware that a replica took
    over meanwhile, announced it to the subscribers still on its pub/sub; the new primary had
    given that offset to a publication answered 200, which they then skipped as delivered.

    Two replicas per primary, so that the new primary has one to acknowledge its writes at once
    and gives the stalled publication's offset to a publication answered 200 before the stalled
    primary resumes. The subscriber's node checks positions rarely (``check_interval``), so its
    pub/sub connection to the stalled primary outlives the stall, as it does whenever the stall
    is shorter than its heartbeats or the link reconnects to the stopped process.
    """
    cluster = RedisCluster(primaries=3, replicas=2)
    tasks: list[asyncio.Task[Any]] = []
    engines: list[RedisEngine] = []
    node: Node | None = None
    stop = asyncio.Event()
    try:
        cluster.start_all()
        config = tmp_path / "clarion.toml"
        config.write_text(CONFIG)
        query = "wait_replicas=1&wait_timeout=1"
        node = Node(f"{cluster.url}?{query}&check_interval=30", config, tmp_path, {})
        await node.wait_healthy(timeout=timeout(30))
        subscriber = Subscriber(node.ws_url, "stall")
        tasks.append(asyncio.create_task(subscriber.run(stop)))
        await asyncio.wait_for(subscriber.subscribed.wait(), timeout(10))

        opts = NamespaceOptions()
        # Its commands wait on the stopped primary until it resumes, not time out before.
        first = RedisEngine(f"{cluster.url}?{query}&socket_timeout=60", Settings())
        engines.append(first)
        await first.start(RecordingSink())
        for i in range(3):
            await first.publish("stall", f"p{i}", opts)
        await eventually(lambda: subscriber.data() == ["p0", "p1", "p2"], timeout(10))

        key = "clarion:{stall}:meta"
        victim, witness = stop_owner(cluster, key)
        stalled = time.monotonic()
        process = cluster.processes[victim]
        try:
            stalled = asyncio.create_task(first.publish("stall", "stalled", opts))
            tasks.append(stalled)
            await asyncio.sleep(0.2)  # sent: queued on the stopped primary
            await eventually(
                lambda: cluster.owner(key, via=witness) not in (None, victim),
                timeout=timeout(30),
                interval=0.1,
            )
            promoted = cluster.owner(key, via=witness)
            assert promoted is not None
            await eventually(lambda: replica_online(promoted), timeout(30), interval=0.1)
            # A node that reads the slot map now publishes on the new primary: answered 200,
            # at the offset the stalled publication has on the stopped one.
            others = ",".join(f"127.0.0.1:{p}" for p in cluster.ports if p != victim)
            second = RedisEngine(f"redis+cluster://{others}?{query}", Settings())
            engines.append(second)
            await second.start(RecordingSink())
            fresh = await second.publish("stall", "fresh", opts)
            assert fresh.offset == 4
        finally:
            os.kill(process.pid, signal.SIGCONT)
        # The stalled primary runs it, then learns it was replaced: WAIT fails, answered 503.
        with pytest.raises(EngineUnavailable):
            await asyncio.wait_for(stalled, timeout(30))
        last = await second.publish("stall", "last", opts)
        assert last.offset == 5
        await eventually(lambda: "last" in subscriber.data(), timeout(30), interval=0.1)
        # Every publication answered 200, in order, none skipped, no reset.
        assert subscriber.data() == ["p0", "p1", "p2", "fresh", "last"]
        assert subscriber.resets == []
    finally:
        stop.set()
        for engine in engines:
            await engine.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if node is not None:
            node.kill()
        cluster.cleanup()
