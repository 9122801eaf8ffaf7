"""The wall clock stepped under running hubs and under Redis: durations hold, tokens follow the
clock within their leeway, and no client is left with a silent gap.

Real ``clarion serve`` and ``redis-server`` processes run with libfaketime preloaded
(:mod:`tests.support.clock`): rewriting a file steps their ``CLOCK_REALTIME`` while they run —
an hour forward, an hour back, a few seconds either way — and leaves ``CLOCK_MONOTONIC``
alone, as a real step does. The rules checked here are written in docs/operations.md
("Clocks").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from clarion.core.auth import LEEWAY
from clarion.webhooks import generate_secret

from ..conftest import clarion_server, timeout, until
from ..multinode.conftest import Cluster
from ..multinode.helpers import Node, Publisher, Tracker
from ..multinode.test_multinode import run_trackers
from ..redis_fixture import RedisServer
from ..support.clock import LIBFAKETIME, SteppedClock
from ..support.proxy import FaultProxy
from ..webhooks.receiver import OK, Answer, Received, Receiver
from .test_redis_faults import finish, more

pytestmark = [
    pytest.mark.timeout(int(timeout(150))),
    clarion_server("`clarion serve` processes under a stepped clock"),
]

HOUR = 3600
SECRET = "clock-steps-secret-of-32-bytes!!"


@pytest.fixture
def clock(tmp_path: Path) -> SteppedClock:
    if LIBFAKETIME is None:
        pytest.skip("libfaketime is not installed (Debian: faketime)")
    stepped = SteppedClock(tmp_path / "faketime")
    stepped.check()
    return stepped


@contextlib.asynccontextmanager
async def node_under(
    clock: SteppedClock, tmp_path: Path, config: str, engine: str = "memory"
) -> AsyncIterator[Node]:
    """One ``clarion serve`` whose wall clock is ``clock``."""
    path = tmp_path / f"clock-{len(list(tmp_path.glob('clock-*.toml')))}.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n' + config)
    node = Node(engine, path, tmp_path, clock.env)
    try:
        await node.wait_healthy()
        yield node
    finally:
        node.kill()


# ---- tokens --------------------------------------------------------------------------------


def token(exp: float, nbf: float | None = None, jti: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": "u", "channels": ["*"], "exp": int(exp)}
    if nbf is not None:
        claims["nbf"] = int(nbf)
    if jti is not None:
        claims["jti"] = jti
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def session(node: Node, tok: str) -> tuple[Any, int | None]:
    """A subscribed WebSocket with ``tok``; or the close code the hub refused it with."""
    ws = await websockets.connect(
        f"{node.ws_url}?token={tok}", subprotocols=[websockets.Subprotocol("clarion.v1")]
    )
    with contextlib.suppress(websockets.ConnectionClosed):  # a refusal may close it first
        await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": "t"}))
    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
    if "disconnect" in msg:
        await ws.close()
        return None, msg["disconnect"]["code"]
    assert "ok" in msg, msg
    return ws, None


async def disconnect_code(ws: Any, wait: float) -> int:
    """The code of the ``disconnect`` push that ends ``ws``, within ``timeout(wait)``."""
    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout(wait)))
    assert "disconnect" in msg, msg
    return int(msg["disconnect"]["code"])


async def test_tokens_follow_the_hubs_clock_within_the_leeway(
    clock: SteppedClock, tmp_path: Path
) -> None:
    """Whatever the step, a token is judged by the hub's wall clock: within LEEWAY seconds
    past ``exp`` (or before ``nbf``) accepted, beyond it refused; a session whose token the
    clock overtakes is closed with 4004 no earlier than LEEWAY seconds past ``exp``."""
    config = f'token_secret = "{SECRET}"\napi_key = "key"\n'
    async with node_under(clock, tmp_path, config) as node:
        for step in (HOUR, -2 * HOUR, HOUR + 3, -6, 3):
            clock.step(step)
            now = clock.now()
            # Margins of a few seconds either side of the leeway, for a loaded machine.
            for tok, refused in (
                (token(now - 1), None),
                (token(now - LEEWAY - 10), 4004),
                (token(now + 60, nbf=now + LEEWAY - 1), None),
                (token(now + 60, nbf=now + LEEWAY + 10), 4500),
            ):
                ws, code = await session(node, tok)
                assert code == refused, (step, clock.offset)
                if ws is not None:
                    await ws.close()
        clock.step(-clock.offset)

        # Accepted within the leeway, the session lasts until the leeway is past too.
        exp = int(clock.now()) - 1
        ws, _ = await session(node, token(exp))
        assert await disconnect_code(ws, LEEWAY + 10) == 4004
        assert clock.now() >= exp + LEEWAY
        await ws.close()

        # A token revoked until its exp stays revoked while the leeway would still accept it.
        exp = int(clock.now()) - 1
        revoked = token(exp, jti="j1")
        async with httpx.AsyncClient(base_url=node.http_url, timeout=timeout(5)) as api:
            r = await api.post(
                "/api/disconnect",
                json={"jti": "j1", "exp": exp},
                headers={"Authorization": "apikey key"},
            )
            assert r.status_code == 200, r.text
        assert (await session(node, revoked))[1] == 4501

        # The clock stepped forward past a live session's exp: closed at the next sweep.
        ws, _ = await session(node, token(clock.now() + 60))
        clock.step(HOUR)
        assert await disconnect_code(ws, 10) == 4004
        await ws.close()
        clock.step(-HOUR)

        # Stepped back, the same token lasts by the hub's clock: the step lengthens it.
        exp = clock.now() + 1
        ws, _ = await session(node, token(exp))
        clock.step(-HOUR)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1 + LEEWAY + 2)
        await ws.close()


# ---- durations on the hub ------------------------------------------------------------------


DURATIONS = """
[limits]
ping_interval = 1
pong_timeout = 3
[namespaces.default]
history_size = 10000
"""


async def test_sessions_history_and_pings_ignore_steps_of_the_hubs_clock(
    clock: SteppedClock, tmp_path: Path
) -> None:
    """Hour-long steps both ways while clients are subscribed and publishing goes on: no
    session is closed for silence or idleness, a client that reconnects after each step
    resumes from history without a reset (history_ttl is 600 s, less than a step), and a
    half-open client is still found out by the pings after the clock went back."""
    async with node_under(clock, tmp_path, DURATIONS) as node:
        to_mover = await FaultProxy(node.port).start()
        to_silent = await FaultProxy(node.port).start()
        direct = [Tracker("d") for _ in range(3)]
        mover = Tracker("d")
        stop_clients, stop_publisher = asyncio.Event(), asyncio.Event()
        tasks = await run_trackers(direct, [node.ws_url], stop_clients)
        tasks += await run_trackers([mover], [f"ws://127.0.0.1:{to_mover.port}/ws"], stop_clients)
        idle = await websockets.connect(node.ws_url, subprotocols=["clarion.v1"])  # type: ignore[list-item]
        silent = await websockets.connect(
            f"ws://127.0.0.1:{to_silent.port}/ws",
            subprotocols=["clarion.v1"],  # type: ignore[list-item]
            ping_interval=None,
        )
        await silent.send(json.dumps({"id": 1, "op": "subscribe", "channel": "s"}))
        assert "ok" in json.loads(await asyncio.wait_for(silent.recv(), timeout(5)))
        publisher = Publisher(node.http_url, "d", rate=50)
        publishing = asyncio.create_task(publisher.run(stop_publisher))
        try:
            async with httpx.AsyncClient(base_url=node.http_url, timeout=timeout(5)) as api:

                async def sessions() -> int:
                    r = await api.get("/api/presence", params={"channel": "d"})
                    return len(r.json()["clients"])

                for step in (HOUR, -2 * HOUR, HOUR, 5, -10):
                    await more(publisher, 25)
                    clock.step(step)
                    before = mover.connections
                    assert to_mover.reset() == 1  # the mover resumes under the new clock
                    await until(lambda: mover.connections > before, wait=10)  # noqa: B023
                    await more(publisher, 25)
                assert await sessions() == 4

                # Its last sign of life was an hour "later" than now by the wall clock.
                clock.step(-HOUR)
                to_silent.stall()
                await until(lambda: silent_gone(node), wait=20)

            await finish([*direct, mover], publisher, publishing, stop_publisher, node.http_url)
            assert publisher.failures == []
            for t in direct:
                assert (t.connections, t.disconnects, t.resets) == (1, [], [])
            assert mover.resets == []
            assert mover.connections == 6
            assert idle.state is websockets.protocol.State.OPEN  # idle_timeout is 300 s
        finally:
            stop_clients.set()
            stop_publisher.set()
            await asyncio.gather(*tasks, publishing, return_exceptions=True)
            await idle.close()
            silent.transport.abort()
            for proxy in (to_mover, to_silent):
                await proxy.close()


def silent_gone(node: Node) -> Any:
    async def check() -> bool:
        async with httpx.AsyncClient(base_url=node.http_url, timeout=timeout(5)) as api:
            r = await api.get("/api/presence", params={"channel": "s"})
            return r.json()["clients"] == []

    return check()


# ---- webhook retries -----------------------------------------------------------------------


async def test_a_webhook_retry_is_not_delayed_by_the_clock_going_back(
    clock: SteppedClock, tmp_path: Path
) -> None:
    """A retry is scheduled in wall-clock time, to survive a restart; the hub restarted with
    its clock minutes behind still retries within the schedule's ceiling, not minutes later."""
    secret = generate_secret()
    failing = True

    def behave(r: Received) -> Answer:
        return Answer(status=503) if failing else OK

    async with Receiver(behave) as receiver:
        receiver.secret = secret
        config = (
            'webhook_allow_hosts = ["127.0.0.1"]\n'
            "[webhook_delivery]\nretry_base = 3\nretry_cap = 3\nretry_window = 600\ntimeout = 3\n"
            f'[[webhooks]]\nid = "wh_clock"\nurl = "{receiver.url}"\nchannels = ["orders:*"]\n'
            f'secret = "{secret}"\n'
        )
        async with node_under(clock, tmp_path, config) as node:
            async with httpx.AsyncClient(base_url=node.http_url, timeout=timeout(5)) as api:
                r = await api.post("/api/publish", json={"channel": "orders:1", "data": 1})
                assert r.status_code == 200

                async def failed_once() -> bool:
                    state = (await api.get("/api/webhooks/wh_clock")).json()
                    return bool(state["attempts"] >= 1)

                await until(failed_once, wait=15)
            node.kill(signal.SIGTERM)  # the retry's time is in the outbox, in wall-clock time
        # Four minutes: receivers refuse signatures more than five minutes off their clock.
        clock.step(-240)
        failing = False
        async with node_under(clock, tmp_path, config):
            # At most retry_cap after the restart, whatever the clock did.
            await until(lambda: receiver.acknowledged, wait=3 + 10)
        assert [r.payload["data"] for r in receiver.acknowledged] == [1]


async def resume(tracker: Tracker, url: str, stop: asyncio.Event, tasks: list[Any]) -> None:
    """Start ``tracker`` again (from its cursor, if it has one) and wait for its subscribe."""
    stop.clear()
    tracker.subscribed.clear()
    tasks += await run_trackers([tracker], [url], stop)


# ---- nodes on Redis ------------------------------------------------------------------------


async def test_nodes_on_redis_whose_clocks_step_apart_lose_nothing(
    clock: SteppedClock, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The Redis engine takes time from Redis (TIME, key expiry), never from the nodes: two
    nodes whose clocks step an hour apart each way keep history, resume and presence as if
    nothing happened — no reset, no silent gap.

    (Redis' own clock is not stepped here: redis-server, linked with jemalloc, does not start
    under libfaketime 0.9.10. What a step of it does is written in docs/operations.md.)"""
    other = SteppedClock(tmp_path / "faketime-b")
    cluster = Cluster(redis_server, tmp_path)
    try:
        a = await cluster.start(env=clock.env)
        b = await cluster.start(env=other.env)
        direct = [Tracker("r"), Tracker("r")]
        away = Tracker("r")
        stop_clients, stop_away, stop_publisher = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = await run_trackers(direct, [a.ws_url], stop_clients)
        publisher = Publisher(b.http_url, "r", rate=50)
        publishing = asyncio.create_task(publisher.run(stop_publisher))
        try:
            async with httpx.AsyncClient(base_url=a.http_url, timeout=timeout(5)) as api:

                async def present(n: int) -> bool:
                    r = await api.get("/api/presence", params={"channel": "r"})
                    return len(r.json()["clients"]) == n

                for step, node in ((HOUR, b), (-HOUR, a), (HOUR, b), (-HOUR, a)):
                    await resume(away, node.ws_url, stop_away, tasks)
                    await more(publisher, 25)
                    await until(lambda: present(len(direct) + 1), wait=10)
                    stop_away.set()  # away while the clocks step
                    await more(publisher, 25)
                    clock.step(step)
                    other.step(-step)
                    await more(publisher, 25)
                    await until(lambda: present(len(direct)), wait=10)
                    # Each node's age is measured on Redis' clock: both are up, seen from either.
                    for seen_from in (a, b):
                        r = await api.get(seen_from.http_url + "/api/info")
                        assert [n["state"] for n in r.json()["nodes"]] == ["up", "up"], r.json()
            await resume(away, b.ws_url, stop_away, tasks)
            await finish([*direct, away], publisher, publishing, stop_publisher, b.http_url)
            assert publisher.failures == []
            for t in direct:
                assert (t.connections, t.resets) == (1, [])
            assert (away.connections, away.resets) == (5, [])
        finally:
            stop_clients.set()
            stop_away.set()
            stop_publisher.set()
            await asyncio.gather(*tasks, publishing, return_exceptions=True)
    finally:
        cluster.stop_all()
