"""The shared outbox of the Redis engine: endpoints known to every node, one deliverer at a time.

Two hubs share one test-started ``redis-server``; receivers verify every signature with
``standardwebhooks``. The takeover test runs real ``clarion serve`` processes to ``kill -9`` one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import redis.asyncio

from clarion.webhooks import WebhookService, generate_secret
from clarion.webhooks.endpoint import Delivery
from clarion.webhooks.redis_outbox_store import encode_delivery
from clarion.webhooks.signing import publication_msg_id

from ..conftest import RunningHub, timeout
from ..multinode.helpers import Node
from ..redis_fixture import RedisServer
from .conftest import (
    BACKLOG_BYTES,
    DEAD_LETTER_BYTES,
    fill_past_backlog_bytes,
    keep_newest_dead_letters_within_bytes,
    register,
    wait_state,
)
from .receiver import OK, Answer, Received, Receiver

# Short leases so a dead node's endpoints move on within the test's bounds.
QUERY = "presence_ttl=1&check_interval=0.5"


async def two_nodes(
    make_hub: Callable[..., Any], redis_server: RedisServer, tmp_path: Path, **extra: Any
) -> tuple[RunningHub, RunningHub]:
    engine = f"{redis_server.url}?{QUERY}"
    a: RunningHub = await make_hub(engine=engine, data_dir=str(tmp_path / "a"), **extra)
    b: RunningHub = await make_hub(engine=engine, data_dir=str(tmp_path / "b"), **extra)
    return a, b


async def eventually(predicate: Callable[[], bool], wait: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout(wait)
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.01)


def first_seen(received: list[Received]) -> list[str]:
    """Message ids in the order they were first acknowledged (a repeat is a duplicate)."""
    return list(dict.fromkeys(r.msg_id for r in received if r.acknowledged))


async def test_endpoint_registered_on_one_node_serves_both(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    a, b = await two_nodes(make_hub, redis_server, tmp_path)
    async with Receiver() as receiver:
        created = await register(a, receiver, ["orders:*"])
        async with b.http() as http:
            listed = (await http.get("/api/webhooks")).json()["webhooks"]
            one = (await http.get(f"/api/webhooks/{created['id']}")).json()
        assert [w["id"] for w in listed] == [created["id"]]
        assert one["secret"] == created["secret"]

        # Published through both nodes, one after the other, on several channels.
        expected = []
        for i in range(30):
            node = a if i % 2 == 0 else b
            await node.publish(f"orders:{i % 3}", {"i": i})
            expected.append(i)
        await receiver.wait_acknowledged(30, wait=15)
        assert all(r.verified for r in receiver.received)
        order = [r.payload["data"]["i"] for r in receiver.acknowledged]
        assert list(dict.fromkeys(order)) == expected
        # Every answer was a 2xx, so nothing was sent twice.
        assert len(receiver.received) == 30
        assert len(first_seen(receiver.received)) == 30

        # The other node sees the delivery state the delivering node wrote.
        last = receiver.acknowledged[-1].msg_id
        await wait_state(b, created["id"], lambda s: (s["last_delivered"] or {}).get("id") == last)

        # Removed through the other node: gone everywhere, and no longer delivered.
        async with b.http() as http:
            assert (await http.delete(f"/api/webhooks/{created['id']}")).status_code == 200
        async with a.http() as http:
            assert (await http.get(f"/api/webhooks/{created['id']}")).status_code == 404
        await a.publish("orders:0", {"i": 99})
        await asyncio.sleep(0.5)
        assert len(receiver.received) == 30


async def test_failing_head_holds_back_queue_and_dead_letters_are_shared(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    failing = {"on": True}

    def behave(r: Received) -> Answer:
        return Answer(status=503) if failing["on"] else OK

    a, b = await two_nodes(make_hub, redis_server, tmp_path)
    async with Receiver(behave) as receiver:
        created = await register(b, receiver, ["jobs"])
        # The other node learns of the endpoint by itself, without an API call to catch up.
        await eventually(
            lambda: created["id"] in a.hub.extension(WebhookService).endpoints, wait=0.5
        )
        queue = f"clarion:{{wh:{created['id']}}}:q"
        store = redis.Redis.from_url(redis_server.url)
        try:
            for i in range(5):
                await (a if i % 2 else b).publish("jobs", {"i": i})
                # Stored in Redis by the time the publish call has answered.
                assert store.zcard(queue) == i + 1
        finally:
            store.close()
        # Retried in order: only the head is ever attempted while it fails.
        await receiver.wait_until(lambda: len(receiver.received) >= 4)
        assert {r.payload["data"]["i"] for r in receiver.received} == {0}
        state = await wait_state(a, created["id"], lambda s: s["backlog"] == 5)
        assert state["last_error"].startswith("HTTP 503")
        failing["on"] = False
        await receiver.wait_acknowledged(5)
        assert [r.payload["data"]["i"] for r in receiver.acknowledged] == [0, 1, 2, 3, 4]
        await wait_state(b, created["id"], lambda s: s["backlog"] == 0)


async def test_configured_endpoint_applied_once_by_every_node(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    secret = generate_secret()
    async with Receiver() as receiver:
        receiver.secret = secret
        static = [{"url": receiver.url, "channels": ["news"], "secret": secret, "id": "wh_news"}]
        a, b = await two_nodes(make_hub, redis_server, tmp_path, webhooks=static)
        for node in (a, b):
            async with node.http() as http:
                listed = (await http.get("/api/webhooks")).json()["webhooks"]
            assert [(w["id"], w["source"]) for w in listed] == [("wh_news", "config")]
        await a.publish("news", {"n": 1})
        await b.publish("news", {"n": 2})
        await receiver.wait_acknowledged(2)
        assert [r.payload["data"]["n"] for r in receiver.acknowledged] == [1, 2]


async def test_lifecycle_versions_grow_across_nodes(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    a, b = await two_nodes(make_hub, redis_server, tmp_path)
    async with Receiver() as receiver:
        await register(a, receiver, [], events=["connect"])
        await wait_state(b, (await _only_id(b)), lambda s: s["events"] == ["connect"])
        await asyncio.sleep(1.2)  # b's routes follow the registry within a second
        for node in (a, b, a):
            async with node.ws() as ws:
                await ws.call("connect")
            # The connect event is written before the next one is made.
            await node.hub.extension(WebhookService).outbox.flush()
        await receiver.wait_acknowledged(3)
        # One counter for the cluster: distinct versions, growing in the order events happen
        # (events of different nodes may be queued in another order than their versions).
        versions = [r.payload["version"] for r in receiver.acknowledged]
        assert versions == sorted(set(versions))
        for r in receiver.acknowledged:
            assert r.msg_id.endswith(f"_evt_{r.payload['version']}")


async def test_redis_losing_its_data_loses_no_configured_endpoint_nor_reuses_an_event_id(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    """A Redis restarted without its data (here: emptied) took the shared registry and the
    event counter with it: each node saves its configured endpoints again, with their secret,
    and event versions go on past every one made before, so no event id comes back."""
    async with Receiver() as receiver:
        static = [{"url": receiver.url, "channels": ["news"], "events": ["connect"]}]
        a, b = await two_nodes(make_hub, redis_server, tmp_path, webhooks=static)
        async with a.ws() as ws:
            await ws.call("connect")
        await a.publish("news", {"n": 1})
        secret = await _configured_secret(a)
        receiver.secret = secret
        await receiver.wait_acknowledged(2)
        await asyncio.to_thread(redis_server.restart)  # killed, started again empty

        async def listed(node: RunningHub) -> list[str]:
            async with node.http() as http:
                body = (await http.get("/api/webhooks")).json()
            return [w["id"] for w in body["webhooks"]]

        deadline = asyncio.get_running_loop().time() + timeout(10)
        while not (await listed(a) and await listed(b)):
            assert asyncio.get_running_loop().time() < deadline, "never saved again"
            await asyncio.sleep(0.1)
        assert await _configured_secret(b) == secret  # the same secret: signatures still verify
        async with b.ws() as ws:
            await ws.call("connect")
        await b.publish("news", {"n": 2})
        got = await receiver.wait_acknowledged(4)
        assert all(r.verified for r in got)
        events = [r for r in got if r.payload.get("type") == "connect"]
        assert len(events) == 2 and events[1].payload["version"] > events[0].payload["version"]
        assert len({r.msg_id for r in got}) == 4  # no id came back


async def _configured_secret(node: RunningHub) -> str:
    (endpoint,) = node.hub.extension(WebhookService).endpoints.values()
    return endpoint.secret


async def _only_id(node: RunningHub) -> str:
    async with node.http() as http:
        listed = (await http.get("/api/webhooks")).json()["webhooks"]
    assert len(listed) == 1
    endpoint_id: str = listed[0]["id"]
    return endpoint_id


CONFIG = """
data_dir = "{data}"
webhook_allow_hosts = ["127.0.0.1"]

[webhook_delivery]
timeout = 3.0
retry_base = 0.05
retry_cap = 0.2
retry_window = 60

[[webhooks]]
id = "wh_jobs"
url = "{url}"
channels = ["jobs"]
secret = "{secret}"
"""


async def test_kill_9_of_the_delivering_node_moves_its_lease(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    failing = {"on": False}

    def behave(r: Received) -> Answer:
        return Answer(status=503) if failing["on"] else OK

    secret = generate_secret()
    engine = f"{redis_server.url}?check_interval=0.5&presence_ttl=2"
    lease_key = "clarion:{wh:wh_jobs}:lease"
    store = redis.Redis.from_url(redis_server.url)
    nodes: list[Node] = []
    try:
        async with Receiver(behave) as receiver, httpx.AsyncClient(timeout=timeout(5)) as http:
            receiver.secret = secret
            config = tmp_path / "clarion.toml"
            config.write_text(
                CONFIG.format(data=tmp_path / "data", url=receiver.url, secret=secret)
            )

            async def publish(node: Node, i: int) -> None:
                r = await http.post(
                    node.http_url + "/api/publish", json={"channel": "jobs", "data": {"i": i}}
                )
                assert r.status_code == 200, r.text

            # Alone, the first node takes the endpoint's lease.
            nodes.append(Node(engine, config, tmp_path, {}))
            first = nodes[0]
            await first.wait_healthy()
            await publish(first, 0)
            await receiver.wait_acknowledged(1)
            holder = store.get(lease_key)
            assert holder is not None

            nodes.append(Node(engine, config, tmp_path, {}))
            second = nodes[1]
            await second.wait_healthy()
            # A backlog made through both nodes, held back by a failing receiver.
            failing["on"] = True
            for i in range(1, 11):
                await publish(first if i % 2 else second, i)
            await receiver.wait_until(lambda: len(receiver.received) >= 4)
            assert store.get(lease_key) == holder

            first.kill()  # SIGKILL: no lease release, no goodbye
            failing["on"] = False
            await receiver.wait_until(lambda: len(first_seen(receiver.received)) >= 11, wait=15)
            assert store.get(lease_key) not in (None, holder)
            assert all(r.verified for r in receiver.received)
            order = [r.payload["data"]["i"] for r in receiver.acknowledged]
            assert list(dict.fromkeys(order)) == list(range(11))
    finally:
        for node in nodes:
            node.kill()
        with contextlib.suppress(Exception):
            store.close()


async def test_dead_letters_replay_and_enable_through_either_node(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    answer = {"status": 500}

    def behave(r: Received) -> Answer:
        return Answer(status=answer["status"])

    a, b = await two_nodes(make_hub, redis_server, tmp_path, webhook_delivery={"retry_window": 0.4})
    async with Receiver(behave) as receiver:
        hook = await register(a, receiver, ["dl"])
        await eventually(lambda: hook["id"] in b.hub.extension(WebhookService).endpoints, wait=0.5)
        first = await a.publish("dl", 0)
        for n in (1, 2):
            await (b if n % 2 else a).publish("dl", n)
        await wait_state(b, hook["id"], lambda s: s["dead_letters"] == 3 and s["backlog"] == 0)
        answer["status"] = 200
        async with b.http() as http:
            listing = (await http.get(f"/api/webhooks/{hook['id']}/dead-letters")).json()
            letters = listing["dead_letters"]
            assert [d["payload"]["data"] for d in letters] == [0, 1, 2]
            assert all(d["attempts"] >= 1 and d["last_error"] for d in letters)
            r = await http.post(f"/api/webhooks/{hook['id']}/dead-letters/replay")
            assert r.json() == {"enqueued": 3}
        acked = await receiver.wait_acknowledged(3)
        assert [x.msg_id for x in acked] == [d["id"] for d in letters]

        # Positions recorded by whichever node delivered; replay asked of the other.
        async with a.http() as http:
            url = f"/api/webhooks/{hook['id']}/replay"
            r = await http.post(url, json={"since": first["cursor"]})
            assert r.status_code == 200, r.text
            assert r.json() == {"enqueued": 2, "channels": ["dl"], "resets": []}
        again = await receiver.wait_acknowledged(5)
        assert [x.msg_id for x in again[3:]] == [x.msg_id for x in acked[1:]]

        # 410 disables the endpoint for every node; enabling it on either resumes it.
        answer["status"] = 410
        await b.publish("dl", 3)
        await wait_state(a, hook["id"], lambda s: s["disabled"] and s["backlog"] == 1)
        await eventually(
            lambda: b.hub.extension(WebhookService).endpoints[hook["id"]].disabled, wait=2
        )
        answer["status"] = 200
        async with b.http() as http:
            r = await http.post(f"/api/webhooks/{hook['id']}/enable")
            assert r.status_code == 200 and r.json()["disabled"] is False
        done = await receiver.wait_acknowledged(6)
        assert done[-1].payload["data"] == 3


async def test_concurrent_publishes_are_stored_before_each_answers(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    # Publishes made together share one pipeline; each call returns once its delivery is in
    # Redis, also when Redis has lost the outbox's scripts. (Their order in the queue is the
    # order their publishes completed, which for concurrent publishes on one channel need not
    # be the order of their offsets.)
    async with Receiver(lambda r: Answer(hang=True)) as receiver:
        node = await make_hub(engine=f"{redis_server.url}?{QUERY}")
        hook = await register(node, receiver, ["burst:*"])
        queue = f"clarion:{{wh:{hook['id']}}}:q"
        store = redis.asyncio.Redis.from_url(redis_server.url)

        async def publish(i: int) -> str:
            pub = await node.hub.publish(f"burst:{i % 3}", {"i": i})
            msg_id = publication_msg_id(hook["id"], pub.channel, pub.epoch, pub.offset)
            assert await store.zscore(queue, msg_id) is not None, msg_id
            return msg_id

        try:
            await store.script_flush()  # as after a Redis restart: the scripts are loaded again
            published = await asyncio.gather(*(publish(i) for i in range(60)))
            queued = [m.decode() for m in await store.zrange(queue, 0, -1)]
        finally:
            await store.aclose()
        assert sorted(queued) == sorted(published) and len(set(published)) == 60


async def test_ended_leases_are_looked_for_where_a_webhook_wants_the_leaves(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    """A node looks for the ended leases of its channels (the clients of a node that stopped
    without removing them) where someone hears of their leaves: a webhook that asks for
    ``connect`` alone, or for the leaves of other channels, costs it no look."""
    a, _ = await two_nodes(make_hub, redis_server, tmp_path)
    async with Receiver() as receiver, a.ws() as ws:
        for channel in ("room:1", "news:1"):
            assert "ok" in await ws.subscribe(channel)
        engine = a.hub.engine

        def looked_at() -> list[str]:
            return sorted(a.hub.roster._lapsing(engine))

        assert looked_at() == []
        await register(a, receiver, ["room:*", "news:*"], events=["connect"])
        await eventually(lambda: bool(a.hub.lifecycle_listeners), 5)
        assert looked_at() == []
        await register(a, receiver, ["room:*"], events=["join", "leave"])
        await eventually(lambda: looked_at() == ["room:1"], 5)


async def test_the_backlog_is_bounded_in_bytes_across_nodes(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    failing = [True]
    limits = {"max_backlog_bytes": BACKLOG_BYTES}
    a, b = await two_nodes(make_hub, redis_server, tmp_path, webhook_delivery=limits)
    async with Receiver(lambda r: Answer(status=500) if failing[0] else OK) as receiver:
        hook_id = await fill_past_backlog_bytes(a, b, receiver, failing)
    # The scripts that change the pending deliveries keep their byte count exact: enqueued,
    # rewritten by each failed attempt, delivered.
    store = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        (counter,) = [k async for k in store.scan_iter(match=f"*{{wh:{hook_id}}}:bytes")]
        assert int(await store.hget(counter, "n")) == 0
    finally:
        await store.aclose()


async def test_dead_letters_are_bounded_in_bytes_across_nodes(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    limits = {"max_backlog_bytes": 8_000, "max_dead_letter_bytes": DEAD_LETTER_BYTES}
    a, b = await two_nodes(make_hub, redis_server, tmp_path, webhook_delivery=limits)
    async with Receiver(lambda r: Answer(status=500)) as receiver:
        await keep_newest_dead_letters_within_bytes(a, b, receiver)
        (hook_id,) = b.hub.extension(WebhookService).endpoints
    store = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        (dead,) = [k async for k in store.scan_iter(match=f"*{{wh:{hook_id}}}:dead")]
        (held,) = [k async for k in store.scan_iter(match=f"*{{wh:{hook_id}}}:dbytes")]
        letters = await store.zrange(dead, 0, -1)
        assert int(await store.hget(held, "n")) == sum(len(m) for m in letters) <= DEAD_LETTER_BYTES
    finally:
        await store.aclose()


async def test_byte_counts_leave_out_what_was_stored_before_them(
    redis_server: RedisServer, make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    # A hub upgraded with a backlog: deliveries and dead letters written by scripts that kept
    # no byte counts. Taking them off counts that never had them would drive the counts below
    # zero, and the bounds would allow that much more for good.
    failing = [True]
    limits = {"retry_window": 0.4}
    a, b = await two_nodes(make_hub, redis_server, tmp_path, webhook_delivery=limits)
    store = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        async with Receiver(lambda r: Answer(status=500) if failing[0] else OK) as receiver:
            hook = await register(a, receiver, ["up:*"])
            keys = [k async for k in store.scan_iter(match=f"*{{wh:{hook['id']}}}*")]
            key = keys[0].decode()
            prefix = key[: key.index("{wh:")]

            def at(name: str) -> str:
                return f"{prefix}{{wh:{hook['id']}}}:{name}"

            for n in range(5):  # as the scripts before byte counts wrote them
                body = orjson.dumps({"channel": "up:x", "data": {"old": n, "pad": "x" * 400}})
                old = Delivery(hook["id"], f"old_{n}", "publication", body)
                seq = await store.incr(at("seq"))
                await store.zadd(at("q"), {old.msg_id: seq})
                await store.hset(at("d"), old.msg_id, encode_delivery(old))
                dseq = await store.incr(at("dseq"))
                letter = encode_delivery(Delivery(hook["id"], f"dead_{n}", "publication", body))
                await store.zadd(at("dead"), {b"%d:%s" % (dseq, letter): dseq})
            for n in range(3):
                await a.publish("up:x", {"n": n})
            # Everything pending dies (the retry window is short): old and new alike.
            await wait_state(b, hook["id"], lambda s: s["backlog"] == 0, wait=15)
            assert int(await store.hget(at("bytes"), "n")) == 0
            letters = await store.zrange(at("dead"), 0, -1)
            counted = int(await store.hget(at("dbytes"), "from"))
            new = [m for m in letters if int(m.split(b":", 1)[0]) >= counted]
            assert len(letters) == 13 and len(new) == 8, (len(letters), len(new))
            assert int(await store.hget(at("dbytes"), "n")) == sum(len(m) for m in new)
            # Revived, delivered: both counts back at zero, none below.
            failing[0] = False
            async with b.http() as http:
                r = await http.post(f"/api/webhooks/{hook['id']}/dead-letters/replay")
                assert r.json() == {"enqueued": 13}, r.text
            await receiver.wait_acknowledged(13, wait=15)
            await wait_state(b, hook["id"], lambda s: s["backlog"] == 0, wait=10)
            assert int(await store.hget(at("bytes"), "n")) == 0
            assert int(await store.hget(at("dbytes"), "n")) == 0
    finally:
        await store.aclose()
