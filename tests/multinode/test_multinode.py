"""Two hub processes behind no sticky load balancer, one Redis: nothing is lost silently."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from clarion import CloseCode, mint_token
from clarion.webhooks import generate_secret

from ..conftest import STRESS_RUNS, timeout
from ..webhooks.receiver import Receiver
from .conftest import CONFIG, Cluster
from .helpers import Publisher, Tracker, assert_history, eventually

pytestmark = pytest.mark.timeout(30)


async def run_trackers(trackers: list[Tracker], urls: list[str], stop: asyncio.Event) -> list:
    tasks = [asyncio.create_task(t.run(urls, until=stop)) for t in trackers]
    subscribed = asyncio.ensure_future(asyncio.gather(*(t.subscribed.wait() for t in trackers)))
    done, _ = await asyncio.wait(
        [subscribed, *tasks], timeout=timeout(10), return_when=asyncio.FIRST_COMPLETED
    )
    for task in tasks:
        if task in done:
            task.result()  # raises what ended it, e.g. a refused subscribe
    if subscribed not in done:
        subscribed.cancel()
        raise AssertionError("the trackers did not subscribe in time")
    return tasks


async def test_subscribe_on_one_node_publish_through_another(cluster: Cluster) -> None:
    a = await cluster.start()
    b = await cluster.start()
    tracker = Tracker("c")
    stop = asyncio.Event()
    tasks = await run_trackers([tracker], [a.ws_url], stop)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
        for i in range(5):
            r = await api.post("/api/publish", json={"channel": "c", "data": {"i": i}})
            assert r.status_code == 200
    await eventually(lambda: len(tracker.offsets) == 5, timeout=5)
    tracker.assert_clean()
    assert [o for _, o in tracker.offsets] == [1, 2, 3, 4, 5]
    stop.set()
    await asyncio.gather(*tasks)


# The node-kill scenario repeated on demand, each run with its own Redis and nodes; best on a
# loaded machine, where races show: CLARION_STRESS=50 ./scripts/test tests/multinode -k stress
STRESS = (
    range(STRESS_RUNS)
    if STRESS_RUNS > 0
    else [pytest.param(0, marks=pytest.mark.skip(reason="set CLARION_STRESS=N to run it N times"))]
)


async def test_node_killed_clients_resume_on_the_other_without_gap_or_duplicate(
    cluster: Cluster,
) -> None:
    await node_killed_clients_resume_on_the_other(cluster)


@pytest.mark.parametrize("run", STRESS)
async def test_node_killed_stress(cluster: Cluster, run: int) -> None:
    await node_killed_clients_resume_on_the_other(cluster)


async def node_killed_clients_resume_on_the_other(cluster: Cluster) -> None:
    a = await cluster.start()
    b = await cluster.start()
    trackers = [Tracker("c") for _ in range(5)]
    stop_clients, stop_publisher = asyncio.Event(), asyncio.Event()
    tasks = await run_trackers(trackers, [a.ws_url, b.ws_url], stop_clients)
    publisher = Publisher(b.http_url, "c", rate=200)
    publishing = asyncio.create_task(publisher.run(stop_publisher))
    # Counted in publications, not seconds: a loaded machine publishes fewer per second.
    await eventually(lambda: len(publisher.published) >= 100, timeout=timeout(30))
    a.kill()  # SIGKILL: no goodbye to clients, no presence cleanup
    await eventually(lambda: all(t.connections == 2 for t in trackers), timeout=timeout(10))
    moved = len(publisher.published)  # the clients moved while the publisher went on
    await eventually(lambda: len(publisher.published) >= moved + 100, timeout=timeout(30))
    stop_publisher.set()
    await publishing
    assert publisher.failures == []
    last = publisher.published[-1]
    await eventually(lambda: all(t.last == last for t in trackers), timeout=timeout(10))
    # No gap, duplicate or silent reset; nothing the publisher was answered for missing.
    assert_history(trackers, [publisher])
    for t in trackers:
        assert t.resets == []
        assert t.connections == 2  # moved to b once
        assert t.offsets[-1] == last
    # Everything published after each client first subscribed arrived, exactly once.
    for t in trackers:
        first = t.offsets[0][1]
        assert [o for _, o in t.offsets] == list(range(first, last[1] + 1))
    # The killed node's sessions leave presence within its TTL (2 s here).
    async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:

        async def presence_is_b_only() -> bool:
            r = await api.get("/api/presence", params={"channel": "c"})
            return len(r.json()["clients"]) == len(trackers)

        await eventually(presence_is_b_only, timeout=5)
    stop_clients.set()
    await asyncio.gather(*tasks)


async def test_redis_restarted_without_persistence_means_reset_never_silent_gap(
    cluster: Cluster,
) -> None:
    a = await cluster.start()
    b = await cluster.start()
    live = Tracker("c")  # stays connected through the restart
    stop_live = asyncio.Event()
    tasks = await run_trackers([live], [a.ws_url], stop_live)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
        for i in range(5):
            assert (await api.post("/api/publish", json={"channel": "c", "data": i})).is_success
        await eventually(lambda: len(live.offsets) == 5)
        # A client that was away during the restart, resuming from its cursor.
        away = Tracker("c")
        away.cursor, away.last = live.cursor, live.last

        cluster.redis.restart()  # empty: epochs and history are gone

        async def published() -> bool:
            r = await api.post("/api/publish", json={"channel": "c", "data": "after"})
            return r.status_code == 200

        await eventually(published, timeout=10)
        await eventually(lambda: live.offsets[-1][1] == 1 and live.resets != [], timeout=10)
        live.assert_clean()
        assert live.offsets[-1][0] != live.offsets[0][0]

        # Until its pub/sub link is back, b answers a subscribe engine_unavailable (retry).
        async def b_healthy() -> bool:
            return (await api.get("/healthz")).status_code == 200

        await eventually(b_healthy, timeout=timeout(10))
        stop_away = asyncio.Event()
        tasks += await run_trackers([away], [b.ws_url], stop_away)
        assert away.resets == ["epoch"]
        assert (await api.post("/api/publish", json={"channel": "c", "data": "x"})).is_success
        await eventually(lambda: away.offsets != [] and live.offsets[-1][1] == 2)
        away.assert_clean()
        assert away.offsets == [live.offsets[-1]]
    stop_live.set()
    stop_away.set()
    await asyncio.gather(*tasks)


async def test_redis_stopped_and_started_mid_run(cluster: Cluster) -> None:
    a = await cluster.start()
    b = await cluster.start()
    tracker = Tracker("c")
    stop = asyncio.Event()
    tasks = await run_trackers([tracker], [a.ws_url], stop)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
        assert (await api.post("/api/publish", json={"channel": "c", "data": 0})).is_success
        await eventually(lambda: len(tracker.offsets) == 1)

        cluster.redis.stop()
        r = await api.post("/api/publish", json={"channel": "c", "data": 1})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "engine_unavailable"
        for node in (a, b):

            async def unhealthy(url: str = node.http_url) -> bool:
                return (await api.get(url + "/healthz")).status_code == 503

            await eventually(unhealthy, timeout=5)
        await asyncio.sleep(1.0)
        assert tracker.connections == 1  # the session was kept through the outage
        assert tracker.disconnects == []

        cluster.redis.start()
        for node in (a, b):

            async def healthy(url: str = node.http_url) -> bool:
                return (await api.get(url + "/healthz")).status_code == 200

            await eventually(healthy, timeout=10)
        r = await api.post("/api/publish", json={"channel": "c", "data": 2})
        assert r.status_code == 200
        await eventually(lambda: tracker.offsets[-1][1] == 1 and tracker.resets != [], timeout=5)
    tracker.assert_clean()
    assert tracker.connections == 1
    stop.set()
    await asyncio.gather(*tasks)


async def test_dropped_pubsub_messages_are_recovered_from_the_stream(cluster: Cluster) -> None:
    a = await cluster.start()
    b = await cluster.start()
    trackers = [Tracker("c") for _ in range(3)]
    stop_clients, stop_publisher = asyncio.Event(), asyncio.Event()
    tasks = await run_trackers(trackers, [a.ws_url], stop_clients)
    publisher = Publisher(b.http_url, "c", rate=200)
    publishing = asyncio.create_task(publisher.run(stop_publisher))
    redis = aioredis.Redis(port=cluster.redis.port)
    try:
        for _ in range(3):
            await asyncio.sleep(0.4)
            # Every node's pub/sub connection dies; messages published meanwhile are lost.
            assert await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
        await asyncio.sleep(0.4)
        stop_publisher.set()
        await publishing
        # The last publication after a kill: only the position check can bring it.
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
            r = await api.post("/api/publish", json={"channel": "c", "data": "last"})
            body = r.json()
        last = (body["epoch"], body["offset"])
        started = time.monotonic()
        await eventually(lambda: all(t.last == last for t in trackers), timeout=10)
        assert time.monotonic() - started < 5
    finally:
        await redis.aclose()
    for t in trackers:
        t.assert_clean()
        assert t.resets == []
        assert t.connections == 1
    stop_clients.set()
    await asyncio.gather(*tasks)


async def test_disconnect_a_user_on_every_node(cluster: Cluster) -> None:
    config = "[namespaces.default]\nanonymous = false\n"
    env = {"CLARION_TOKEN_SECRET": "s" * 32, "CLARION_API_KEY": "k" * 32}
    a = await cluster.start(config=config, env=env)
    b = await cluster.start(config=config, env=env)
    token = mint_token("s" * 32, "u1", ["c"])
    tracker = Tracker("c", headers={"Authorization": f"Bearer {token}"})
    stop = asyncio.Event()
    tasks = await run_trackers([tracker], [a.ws_url], stop)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=5) as api:
        r = await api.post(
            "/api/disconnect", json={"user": "u1"}, headers={"Authorization": "apikey " + "k" * 32}
        )
        assert r.status_code == 200
    await eventually(lambda: tracker.disconnects != [], timeout=5)
    assert tracker.disconnects[0]["code"] == CloseCode.DISCONNECTED
    stop.set()
    await asyncio.gather(*tasks)


async def test_unreachable_redis_at_start_fails_the_node(cluster: Cluster) -> None:
    cluster.redis.stop()
    with pytest.raises(RuntimeError, match="cannot reach Redis"):
        await cluster.start()
    assert cluster.nodes[-1].process.wait(timeout=10) != 0


async def test_connection_caps_are_shared_by_every_node(cluster: Cluster) -> None:
    env = {"CLARION_LIMITS__MAX_CONNECTIONS_PER_USER": "2"}
    config = "[namespaces.default]\nanonymous = false\n"
    env |= {"CLARION_TOKEN_SECRET": "s" * 32, "CLARION_API_KEY": "k" * 32}
    a = await cluster.start(config=config, env=env)
    b = await cluster.start(config=config, env=env)
    headers = {"Authorization": f"Bearer {mint_token('s' * 32, 'u1', ['c'])}"}
    first = await websockets.connect(a.ws_url, additional_headers=headers)
    second = await websockets.connect(b.ws_url, additional_headers=headers)
    try:
        await asyncio.sleep(0.5)  # both admitted, one per node: within the cap of 2
        third = await websockets.connect(a.ws_url, additional_headers=headers)
        push = json.loads(await asyncio.wait_for(third.recv(), 5))
        assert push["disconnect"]["code"] == CloseCode.TOO_MANY_CONNECTIONS
        await third.close()
        for ws in (first, second):  # the two within the cap are untouched
            await ws.send('{"id": 1, "op": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"id": 1, "ok": {}}
    finally:
        await first.close()
        await second.close()

    # Closing gives the slots back, cluster-wide.
    async def admitted() -> bool:
        async with websockets.connect(b.ws_url, additional_headers=headers) as ws:
            await ws.send('{"id": 1, "op": "ping"}')
            return "ok" in json.loads(await asyncio.wait_for(ws.recv(), 5))

    await asyncio.sleep(0.5)
    assert await admitted()


@pytest.mark.parametrize("kind", ["user", "ip"])
async def test_a_killed_nodes_connections_stop_counting_before_its_clients_are_refused(
    cluster: Cluster, kind: str
) -> None:
    # Leases that would count for 30 s: a refusal (4503) would end the clients' reconnecting.
    query = "check_interval=0.5&presence_ttl=30"
    if kind == "user":
        env = {"CLARION_LIMITS__MAX_CONNECTIONS_PER_USER": "2"}
        config = "[namespaces.default]\nanonymous = false\n"
        env |= {"CLARION_TOKEN_SECRET": "s" * 32, "CLARION_API_KEY": "k" * 32}
        headers = {"Authorization": f"Bearer {mint_token('s' * 32, 'u1', ['c'])}"}
        key = "clarion:{conn:user:u1}"
    else:
        env = {"CLARION_LIMITS__MAX_CONNECTIONS_PER_IP": "2"}
        config, headers, key = CONFIG, {}, "clarion:{conn:ip:127.0.0.1}"
    a = await cluster.start(config=config, env=env, query=query)
    b = await cluster.start(config=config, env=env, query=query)
    store = aioredis.from_url(cluster.redis.url)
    held: list[websockets.ClientConnection] = []
    try:
        for _ in range(2):
            held.append(await websockets.connect(a.ws_url, additional_headers=headers))
        await eventually(lambda: _counted(store, key, 2), timeout=timeout(10))
        a.kill()  # SIGKILL: its two connections stay counted
        for ws in held:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), timeout(5))
        # Their clients come back on b at once, and are admitted once a is known to be gone.
        moved = [await websockets.connect(b.ws_url, additional_headers=headers) for _ in range(2)]
        held += moved
        await _members_when(store, key, 2, timeout(15))  # b's own: a's are gone
        for ws in moved:
            await ws.send('{"id": 1, "op": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), timeout(5))) == {"id": 1, "ok": {}}
        # The cap holds: b is running, so a third is refused.
        third = await websockets.connect(b.ws_url, additional_headers=headers)
        held.append(third)
        push = json.loads(await asyncio.wait_for(third.recv(), timeout(10)))
        assert push["disconnect"]["code"] == CloseCode.TOO_MANY_CONNECTIONS
    finally:
        for ws in held:
            await ws.close()
        await store.aclose()


async def _counted(store: aioredis.Redis, key: str, n: int) -> bool:
    return int(await store.zcard(key)) == n


async def _members_when(store: aioredis.Redis, key: str, n: int, within: float) -> list[str]:
    """The live members of ``key`` once there are ``n``, all of one node."""
    deadline = time.monotonic() + within
    while True:
        members = [m.decode() for m in await store.zrange(key, 0, -1)]
        if len(members) == n and len({m.split(":")[0] for m in members}) == 1:
            return members
        if time.monotonic() > deadline:
            raise AssertionError(f"still counted: {members}")
        await asyncio.sleep(0.1)


PRESENCE_CONFIG = """
[namespaces.room]
presence = true
join_leave = "{mode}"
presence_grace = 0.5
"""


@pytest.mark.parametrize("mode", ["client", "user"])
async def test_a_killed_nodes_members_leave_with_an_event(cluster: Cluster, mode: str) -> None:
    """A member list built from joins and leaves loses the clients of a node killed without a
    goodbye: their leave comes once their lease has ended, once, not only their absence from
    presence reads."""
    env = {"CLARION_TOKEN_SECRET": "s" * 32, "CLARION_API_KEY": "k" * 32}
    config = PRESENCE_CONFIG.format(mode=mode)
    a = await cluster.start(config=config, env=env)
    b = await cluster.start(config=config, env=env)

    def as_user(user: str) -> dict[str, str]:
        token = mint_token("s" * 32, user, ["room:*"], presence=["room:*"])
        return {"Authorization": f"Bearer {token}"}

    async def subscribed(url: str, user: str) -> Any:
        ws = await websockets.connect(url, additional_headers=as_user(user))
        await ws.send('{"id": 1, "op": "subscribe", "channel": "room:1"}')
        while "ok" not in (reply := json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))):
            assert "join" in reply or "leave" in reply, reply
        return ws

    watcher = await subscribed(b.ws_url, "bob")
    try:
        alice = await subscribed(a.ws_url, "alice")
        events: list[dict[str, Any]] = []

        async def heard(kind: str, within: float) -> dict[str, Any]:
            deadline = time.monotonic() + within
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"no {kind} among {events}"
                msg = json.loads(await asyncio.wait_for(watcher.recv(), left))
                events.append(msg)
                if kind in msg and msg[kind].get("user") == "alice":
                    return msg[kind]

        await heard("join", timeout(10))
        a.kill()  # SIGKILL: alice's entry stays until its lease ends (presence_ttl=2 here)
        left = await heard("leave", timeout(15))
        assert left["channel"] == "room:1"
        if mode == "client":
            assert left["transport"] == "ws" and left["client"]
        # Once: nothing more about alice while b's next looks pass.
        with pytest.raises(TimeoutError):
            await heard("leave", 3.0)
        await alice.close()
    finally:
        await watcher.close()


WEBHOOK_CONFIG = """
webhook_allow_hosts = ["127.0.0.1"]

[namespaces.room]
presence = true

[[webhooks]]
url = "{url}"
channels = ["room:*"]
events = ["join", "leave"]
id = "wh_presence"
secret = "{secret}"
"""


@pytest.mark.parametrize("others", ["nobody", "a subscriber"])
async def test_a_killed_nodes_clients_leave_for_the_webhooks(cluster: Cluster, others: str) -> None:
    """A backend that keeps who is online from its webhooks hears the clients of a node killed
    without a goodbye leave too, once their lease has ended: whether or not another node
    subscribes to their channel (``nobody``: the channel is on no node left), and without
    ``join_leave`` (which only subscribers' events need)."""
    async with Receiver() as receiver:
        receiver.secret = generate_secret()
        env = {"CLARION_TOKEN_SECRET": "s" * 32, "CLARION_API_KEY": "k" * 32}
        config = WEBHOOK_CONFIG.format(url=receiver.url, secret=receiver.secret)
        a = await cluster.start(config=config, env=env)
        b = await cluster.start(config=config, env=env)

        def connected(url: str, user: str) -> Any:
            token = mint_token("s" * 32, user, ["room:*"])
            return websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"})

        def about(kind: str) -> list[dict[str, Any]]:
            return [
                r.payload["data"]
                for r in receiver.received
                if r.payload.get("type") == kind and r.payload["data"].get("user") == "alice"
            ]

        async with connected(b.ws_url, "bob") as bob:
            if others == "a subscriber":
                await bob.send('{"id": 1, "op": "subscribe", "channel": "room:1"}')
                assert "ok" in json.loads(await asyncio.wait_for(bob.recv(), timeout(5)))
            alice = await connected(a.ws_url, "alice")
            await alice.send('{"id": 1, "op": "subscribe", "channel": "room:1"}')
            assert "ok" in json.loads(await asyncio.wait_for(alice.recv(), timeout(5)))
            await receiver.wait_until(lambda: bool(about("join")), wait=15)
            (joined,) = about("join")
            a.kill()  # SIGKILL: alice's entry stays until its lease ends (presence_ttl=2 here)
            # The webhooks' lease moves to b too, if a held it: within presence_ttl more.
            await receiver.wait_until(lambda: bool(about("leave")), wait=20)
            (left,) = about("leave")
            assert (left["client"], left["channel"]) == (joined["client"], "room:1")
            # Once: nothing more about alice while b's next looks pass (every 2/3 s).
            await asyncio.sleep(2.5)
            assert len(about("leave")) == 1
            await alice.close()
