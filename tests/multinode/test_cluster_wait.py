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
# Requests in flight at most. Past it, the publisher waits: a stall's pile-up would otherwise
# open hundreds of connections, whose answers all come at once at its end.
IN_FLIGHT = 64
# A connection idle this long is not used again: the hub closes one idle for 5 s, and a request
# sent as it does would find it closed (HTTP/1.1's keep-alive race, no fault of the hub's). The
# client's idle time runs from when it read an answer, the hub's from when it wrote it: the
# margin covers this test's own event loop reading late under load.
REUSE_WITHIN = 1.0


class Connections:
    """Keep-alive HTTP/1.1 connections to one hub, each used by one request at a time.

    Not httpx: its connection pool can close a connection that it has already handed to a
    request, once that request is on its way (encode/httpcore#1110, a connection kept alive
    past its expiry, or closed to make room for another hub's). The request then fails with a
    ``ReadError`` although the hub answered it; this test would call that a lost answer.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: bytes, within: float) -> tuple[int, bytes]:
        """``POST`` ``body`` as JSON: the answer's status and body, within ``within`` seconds.
        A failure says whether its connection was a reused one (in a note)."""
        reused, writer = False, None
        try:
            async with asyncio.timeout(within):
                reader, writer, reused = await self._take()
                head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                writer.write(head.encode() + body)
                status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                headers = dict(line.lower().split(": ", 1) for line in lines if line)
                answer = await reader.readexactly(int(headers["content-length"]))
        except BaseException as exc:
            if writer is not None:
                writer.close()
            exc.add_note(f"on a {'reused' if reused else 'new'} connection")
            raise
        if headers.get("connection") == "close":
            writer.close()
        else:
            self.idle.append((time.monotonic(), reader, writer))
        return int(status_line.split()[1]), answer

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        while self.idle:
            since, reader, writer = self.idle.pop()  # the last used: the others age out
            if time.monotonic() - since < REUSE_WITHIN and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return reader, writer, False

    def close(self) -> None:
        for _, _, writer in self.idle:
            writer.close()
        self.idle.clear()


class Publishing:
    """Publishes ``RATE`` times a second, round robin over the channels and the nodes, without
    waiting for answers (a stalled primary holds many at once, as under real load)."""

    def __init__(self, ports: list[int]) -> None:
        self.hubs = [Connections(port) for port in ports]
        # seq -> (channel, status, error code or None, epoch, offset)
        self.answers: dict[int, tuple[str, int, str | None, str, int]] = {}
        self.answered_at: dict[int, float] = {}
        self.failures: list[str] = []  # requests that got no answer, or none it could read
        self.slots = asyncio.Semaphore(IN_FLIGHT)

    async def run(self, until: asyncio.Event) -> None:
        started, n, tasks = time.monotonic(), 0, set()
        try:
            while not until.is_set():
                task = asyncio.create_task(self.one(n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
            await asyncio.gather(*tasks)
        finally:
            for hub in self.hubs:
                hub.close()

    async def one(self, n: int) -> None:
        channel = CHANNELS[n % len(CHANNELS)]
        hub = self.hubs[n % len(self.hubs)]
        body = json.dumps({"channel": channel, "data": {"seq": n}, "id": f"p{n}"}).encode()
        try:
            async with self.slots:
                status, answer = await hub.post("/api/publish", body, timeout(20))
            out = json.loads(answer)
            if status == 200:
                self.answers[n] = (channel, 200, None, out["epoch"], out["offset"])
            else:
                self.answers[n] = (channel, status, out["error"]["code"], "", 0)
        except Exception as exc:  # whatever it was, this request got no answer it could read
            at = time.monotonic()
            said = " ".join(getattr(exc, "__notes__", []))
            self.failures.append(f"#{n} to port {hub.port} {said} at {at:.3f}: {exc!r}")
            return
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
    """The longest this test's own event loop could not run, in ``worst[0]``: it reads the
    hub's answers late by as much (REUSE_WITHIN)."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.05)
        worst[0] = max(worst[0], loop.time() - before - 0.05)


async def run_failover(cluster: RedisCluster, nodes: list[Node]) -> None:
    publishing = Publishing([node.port for node in nodes])
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
