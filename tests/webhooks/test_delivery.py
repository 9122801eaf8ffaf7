"""Webhook delivery over real HTTP: signed, in order, at least once, retried, dead-lettered."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clarion.protocol.cursor import channel_tag

from ..conftest import RunningHub, timeout
from .conftest import (
    BACKLOG_BYTES,
    DEAD_LETTER_BYTES,
    fill_past_backlog_bytes,
    keep_newest_dead_letters_within_bytes,
    register,
    state,
    wait_state,
)
from .receiver import OK, Answer, Received, Receiver
from .test_redis_outbox import QUERY


def offsets(received: list[Received]) -> list[int]:
    return [r.payload["offset"] for r in received]


async def test_publications_arrive_signed_in_order_as_publication_json(
    webhook_hub: RunningHub,
) -> None:
    async with Receiver() as receiver:
        hook = await register(webhook_hub, receiver, ["orders:*"])
        assert hook["secret"].startswith("whsec_") and hook["id"].startswith("wh_")
        published = []
        for n in range(30):
            channel = f"orders:{n % 2}"
            published.append((channel, await webhook_hub.publish(channel, {"n": n})))
            if n == 10:
                await webhook_hub.publish("other", {"n": n})  # matches no pattern
        got = await receiver.wait_acknowledged(30)
        await asyncio.sleep(0.2)  # nothing else may follow
        assert len(receiver.received) == 30
        assert all(r.verified for r in receiver.received)
        assert [r.payload["data"]["n"] for r in got] == list(range(30))
        for r, (channel, result) in zip(got, published, strict=True):
            assert r.payload["channel"] == channel
            assert (r.payload["offset"], r.payload["epoch"]) == (result["offset"], result["epoch"])
            assert set(r.payload) == {"channel", "offset", "epoch", "data", "time"}
            tag = channel_tag(channel).hex()
            assert r.msg_id == f"msg_{hook['id']}_{tag}_{result['epoch']}_{result['offset']}"
            assert r.headers["content-type"] == "application/json"
        after = await wait_state(webhook_hub, hook["id"], lambda s: s["backlog"] == 0)
        assert after["last_delivered"]["id"] == got[-1].msg_id
        assert after["positions"]["orders:1"]["offset"] == 15
        assert after["positions"]["orders:0"]["cursor"]


async def test_a_batch_reaches_the_webhook_in_order(webhook_hub: RunningHub) -> None:
    """With an outbox, a batch's publications are started together (each waits for its
    commit): each channel's offsets still follow the list, every one is in the outbox when
    the batch is answered, and the receiver gets them in order."""
    async with Receiver() as receiver, webhook_hub.http() as http:
        await register(webhook_hub, receiver, ["orders:*"])
        items = [{"channel": f"orders:{n % 3}", "data": {"n": n}} for n in range(150)]
        items.insert(7, {"channel": "orders:0"})  # refused in its place: no data
        r = await http.post("/api/publish_batch", json={"publications": items})
        results = r.json()["results"]
        assert results[7]["error"]["code"] == "bad_request"
        del results[7]
        for channel in range(3):
            assert [x["offset"] for x in results[channel::3]] == list(range(1, 51))
        got = await receiver.wait_acknowledged(150)
        by_channel: dict[str, list[int]] = {}
        for received in got:
            by_channel.setdefault(received.payload["channel"], []).append(
                received.payload["offset"]
            )
        assert by_channel == {f"orders:{c}": list(range(1, 51)) for c in range(3)}
        assert sorted(x.payload["data"]["n"] for x in got) == list(range(150))


async def test_publication_is_in_the_outbox_when_publish_returns(
    make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    async with Receiver(lambda r: Answer(hang=True)) as receiver:
        running = await make_hub()
        hook = await register(running, receiver, ["d"])
        result = await running.publish("d", {"durable": True})
        # Read the file the way a restarted hub would: a separate connection, right away.
        db = sqlite3.connect(tmp_path / "data" / "webhooks.sqlite3")
        try:
            rows = db.execute('SELECT endpoint, "offset", body FROM outbox').fetchall()
        finally:
            db.close()
        assert len(rows) == 1
        assert rows[0][0] == hook["id"] and rows[0][1] == result["offset"]
        assert b'"durable":true' in rows[0][2]


async def test_flaky_receiver_gets_everything_in_order_duplicates_only_for_lost_acks(
    webhook_hub: RunningHub,
) -> None:
    rng = random.Random(7)

    def flaky(r: Received) -> Answer:
        roll = rng.random()
        if roll < 0.5:
            return Answer(status=500)
        if roll < 0.65:
            return Answer(drop=True)  # processed, but the 2xx never reaches the hub
        return OK

    async with Receiver(flaky) as receiver:
        hook = await register(webhook_hub, receiver, ["flaky"])
        expected = [(await webhook_hub.publish("flaky", n))["offset"] for n in range(40)]
        acked = await receiver.wait_acknowledged(40, wait=30)
        received = receiver.received
        assert all(r.verified for r in received)
        assert any(r.answer.status == 500 for r in received)
        assert any(r.answer.drop for r in received)
        # Every publication acknowledged exactly once, in publish order.
        assert offsets(acked) == expected
        # Retries never overtake: the stream of attempts is ordered too.
        assert offsets(received) == sorted(offsets(received))
        # Processed more than once only where an earlier answer was lost.
        processed = Counter(r.msg_id for r in received if r.acknowledged or r.answer.drop)
        lost = Counter(r.msg_id for r in received if r.answer.drop)
        for msg_id, count in processed.items():
            assert count - 1 == lost[msg_id], msg_id
        await wait_state(webhook_hub, hook["id"], lambda s: s["backlog"] == 0)


async def test_hanging_receiver_is_retried_without_delaying_another(
    make_hub: Callable[..., Any],
) -> None:
    hang = True

    def slow(r: Received) -> Answer:
        return Answer(hang=True) if hang else OK

    running = await make_hub(webhook_delivery={"timeout": 1.5})
    async with Receiver(slow) as stuck, Receiver() as healthy:
        stuck_hook = await register(running, stuck, ["t:*"])
        await register(running, healthy, ["t:*"])
        started = time.monotonic()
        for n in range(5):
            await running.publish("t:x", n)
        await healthy.wait_acknowledged(5, wait=5)
        # All five reached the healthy receiver while the first attempt to the other still hung.
        assert time.monotonic() - started < 1.5
        assert len(stuck.received) == 1
        await stuck.wait_until(lambda: len(stuck.received) >= 2, wait=10)
        hung = await state(running, stuck_hook["id"])
        assert "no answer within 1.5s" in hung["last_error"]
        assert hung["backlog"] == 5 and hung["attempts"] >= 1
        hang = False
        await stuck.wait_acknowledged(5, wait=10)
        assert [r.payload["data"] for r in stuck.acknowledged] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("answer", [Answer(endless=True), Answer(cut=True)], ids=["endless", "cut"])
async def test_a_2xx_whose_body_never_ends_is_delivered_not_retried(
    make_hub: Callable[..., Any], answer: Answer
) -> None:
    """The receiver said it took the message: sending it again would be a duplicate."""
    running = await make_hub(webhook_delivery={"timeout": 1})
    async with Receiver(lambda r: answer) as receiver:
        hook = await register(running, receiver, ["t:*"])
        for n in range(3):
            await running.publish("t:x", n)
        await receiver.wait_until(lambda: len(receiver.received) >= 3, wait=10)
        await wait_state(running, hook["id"], lambda s: s["backlog"] == 0, wait=10)
        await asyncio.sleep(2)  # a retry would come after a second
        assert [r.payload["data"] for r in receiver.received] == [0, 1, 2]
        assert (await state(running, hook["id"]))["last_error"] is None


async def test_gone_disables_the_endpoint_until_enabled(webhook_hub: RunningHub) -> None:
    gone = True
    async with Receiver(lambda r: Answer(status=410) if gone else OK) as receiver:
        hook = await register(webhook_hub, receiver, ["g"])
        await webhook_hub.publish("g", "first")
        disabled = await wait_state(webhook_hub, hook["id"], lambda s: s["disabled"])
        assert "410" in disabled["disabled_reason"] and disabled["backlog"] == 1
        await webhook_hub.publish("g", "while disabled")  # not queued for a disabled endpoint
        await asyncio.sleep(0.2)
        assert len(receiver.received) == 1
        assert (await state(webhook_hub, hook["id"]))["backlog"] == 1
        gone = False
        async with webhook_hub.http() as http:
            r = await http.post(f"/api/webhooks/{hook['id']}/enable")
            assert r.status_code == 200 and r.json()["disabled"] is False
        acked = await receiver.wait_acknowledged(1)
        assert [r.payload["data"] for r in acked] == ["first"]


async def test_dead_letters_after_the_schedule_then_replayed(make_hub: Callable[..., Any]) -> None:
    failing = True
    running = await make_hub(webhook_delivery={"retry_window": 0.4})
    async with Receiver(lambda r: Answer(status=500) if failing else OK) as receiver:
        hook = await register(running, receiver, ["dl"])
        for n in range(3):
            await running.publish("dl", n)
        dead = await wait_state(running, hook["id"], lambda s: s["dead_letters"] == 3)
        assert dead["backlog"] == 0 and dead["last_error"].startswith("HTTP 500")
        async with running.http() as http:
            listing = (await http.get(f"/api/webhooks/{hook['id']}/dead-letters")).json()
            letters = listing["dead_letters"]
            assert [d["payload"]["data"] for d in letters] == [0, 1, 2]
            assert all(d["attempts"] >= 1 and d["last_error"] for d in letters)
            assert all(d["cursor"] and d["kind"] == "publication" for d in letters)
            failing = False
            # The endpoint moved on: a new publication goes straight through.
            await running.publish("dl", 3)
            await receiver.wait_acknowledged(1)
            r = await http.post(f"/api/webhooks/{hook['id']}/dead-letters/replay")
            assert r.json() == {"enqueued": 3}
            acked = await receiver.wait_acknowledged(4)
            assert [a.payload["data"] for a in acked] == [3, 0, 1, 2]
            assert [a.msg_id for a in acked[1:]] == [d["id"] for d in letters]
            empty = (await http.get(f"/api/webhooks/{hook['id']}/dead-letters")).json()
            assert empty["dead_letters"] == []
        assert (await state(running, hook["id"]))["dead_letters"] == 0


async def test_replay_from_a_cursor_resends_history_with_the_same_ids(
    webhook_hub: RunningHub,
) -> None:
    async with Receiver() as receiver:
        hook = await register(webhook_hub, receiver, ["r:*"])
        first = await webhook_hub.publish("r:a", 1)
        for n in (2, 3):
            await webhook_hub.publish("r:a", n)
        original = await receiver.wait_acknowledged(3)
        async with webhook_hub.http() as http:
            url = f"/api/webhooks/{hook['id']}/replay"
            r = await http.post(url, json={"since": first["cursor"]})
            assert r.status_code == 200, r.text
            assert r.json() == {"enqueued": 2, "channels": ["r:a"], "resets": []}
            again = await receiver.wait_acknowledged(5)
            assert [a.msg_id for a in again[3:]] == [o.msg_id for o in original[1:]]
            bad = await http.post(url, json={"since": "garbage"})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_cursor"
            foreign = await http.post(url, json={"since": first["cursor"], "channels": ["zz"]})
            assert foreign.status_code == 400


async def test_lifecycle_events_with_versions(webhook_hub: RunningHub) -> None:
    async with Receiver() as receiver:
        await register(
            webhook_hub,
            receiver,
            ["chat:*"],
            events=["connect", "subscribe", "unsubscribe", "disconnect"],
        )
        async with webhook_hub.ws() as ws:
            assert "ok" in await ws.subscribe("chat:a")
            assert "ok" in await ws.subscribe("news")  # outside the patterns: no event
            await ws.call("unsubscribe", channel="chat:a")
        got = await receiver.wait_acknowledged(4)
        await asyncio.sleep(0.2)
        bodies = [r.payload for r in got]
        kinds = [(b["type"], b["data"].get("channel")) for b in bodies]
        assert kinds[:3] == [("connect", None), ("subscribe", "chat:a"), ("unsubscribe", "chat:a")]
        assert kinds[3][0] == "disconnect" and len(receiver.received) == 4
        versions = [b["version"] for b in bodies]
        assert versions == sorted(versions) and len(set(versions)) == 4
        assert len({b["data"]["client"] for b in bodies}) == 1


async def test_api_manages_endpoints_and_refuses_bad_input(make_hub: Callable[..., Any]) -> None:
    running = await make_hub(api_key="k3y")
    auth = {"Authorization": "apikey k3y"}
    async with Receiver() as receiver, running.http() as http:
        assert (await http.get("/api/webhooks")).status_code == 401
        assert (await http.get("/api/webhooks", headers=auth)).json() == {"webhooks": []}
        bad_bodies: list[dict[str, Any]] = [
            {"url": receiver.url, "channels": ["ok"], "secret": "not-a-secret"},
            {"url": receiver.url, "channels": ["ok"], "secret": "whsec_c2hvcnQ="},
            {"url": receiver.url, "channels": ["bad channel"]},
            {"url": receiver.url, "channels": ["ok"], "events": ["explode"]},
            {"url": receiver.url, "channels": []},
            {"url": "ftp://127.0.0.1/x", "channels": ["ok"]},
            {"url": "http://user:pw@127.0.0.1/x", "channels": ["ok"]},
            {"channels": ["ok"]},
        ]
        for body in bad_bodies:
            r = await http.post("/api/webhooks", json=body, headers=auth)
            assert r.status_code == 400, (body, r.text)
            assert set(r.json()["error"]) >= {"code", "message"}
        secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        r = await http.post(
            "/api/webhooks",
            json={"url": receiver.url, "channels": ["a"], "secret": secret},
            headers=auth,
        )
        assert r.status_code == 200 and r.json()["secret"] == secret
        hook_id = r.json()["id"]
        listing = (await http.get("/api/webhooks", headers=auth)).json()["webhooks"]
        assert [h["id"] for h in listing] == [hook_id] and "secret" not in listing[0]
        assert listing[0]["backlog"] == 0 and listing[0]["disabled"] is False
        assert (await http.delete(f"/api/webhooks/{hook_id}", headers=auth)).status_code == 200
        missing = await http.get(f"/api/webhooks/{hook_id}", headers=auth)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_cli_adds_lists_and_removes(webhook_hub: RunningHub) -> None:
    async def clarion(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "webhooks", *args, "--url", webhook_hub.http_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout(30))
        return proc.returncode or 0, out.decode()

    async with Receiver() as receiver:
        code, out = await clarion("add", receiver.url, "--channel", "cli:*", "--event", "join")
        assert code == 0, out
        hook_id = out.split("id: ")[1].split()[0]
        receiver.secret = out.split("secret: ")[1].split()[0]
        await webhook_hub.publish("cli:1", "hello")
        assert (await receiver.wait_acknowledged(1))[0].payload["data"] == "hello"
        code, out = await clarion("list")
        assert code == 0 and hook_id in out and "cli:*" in out and "backlog: 0" in out
        assert "last delivered: " in out
        code, out = await clarion("remove", hook_id)
        assert code == 0, out
        code, out = await clarion("remove", hook_id)
        assert code != 0 and "404" in out


CLI = [sys.executable, "-m", "clarion.cli"]


async def test_concurrent_publishes_are_stored_in_order_before_each_answers(
    make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    # Publishes made together are committed together, off the event loop: each call still
    # returns only once its delivery is in the file, and the queue keeps the offsets' order.
    async with Receiver(lambda r: Answer(hang=True)) as receiver:
        running = await make_hub()
        await register(running, receiver, ["burst:*"])
        db = sqlite3.connect(tmp_path / "data" / "webhooks.sqlite3")

        async def publish(i: int) -> tuple[str, int]:
            pub = await running.hub.publish(f"burst:{i % 3}", {"i": i})
            row = db.execute(
                'SELECT count(*) FROM outbox WHERE channel = ? AND "offset" = ?',
                (pub.channel, pub.offset),
            ).fetchone()
            assert row == (1,), (pub.channel, pub.offset)
            return pub.channel, pub.offset

        try:
            published = await asyncio.gather(*(publish(i) for i in range(60)))
            rows = db.execute('SELECT channel, "offset" FROM outbox ORDER BY seq').fetchall()
        finally:
            db.close()
        assert sorted(rows) == sorted(published)
        for channel in ("burst:0", "burst:1", "burst:2"):
            queued = [offset for c, offset in rows if c == channel]
            assert queued == sorted(queued) == list(range(1, 21))


async def test_the_answer_is_asked_for_uncompressed(webhook_hub: RunningHub) -> None:
    """The hub reads at most max_response_bytes of an answer, raw: it asks for it as it is, so
    that what it keeps of an error answer (last_error) is the receiver's words."""
    async with Receiver() as receiver:
        await register(webhook_hub, receiver, ["plain"])
        await webhook_hub.publish("plain", 1)
        (received,) = await receiver.wait_acknowledged(1)
    assert received.headers["accept-encoding"] == "identity"


async def test_a_receiver_that_is_down_is_reported_in_plain_words(
    webhook_hub: RunningHub,
) -> None:
    """The OS's reason, not the HTTP library's class and wording ("ConnectError: All connection
    attempts failed"), in last_error: what the API, the CLI and the admin page show."""
    with socket.socket() as held:  # bound, never listening: a connection here is refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        async with webhook_hub.http() as http:
            r = await http.post(
                "/api/webhooks", json={"url": f"http://127.0.0.1:{port}/hook", "channels": ["d"]}
            )
        assert r.status_code == 200, r.text
        hook = r.json()
        await webhook_hub.publish("d", "x")
        current = await wait_state(webhook_hub, hook["id"], lambda s: s["last_error"])
    assert current["last_error"] == "cannot connect: connection refused", current


# Retry-After values a receiver may send that the hub once could not read: superscript digits
# (which str.isdigit() takes and float() refuses, sent as UTF-8) and HTTP dates with a year no
# datetime holds (OverflowError).
HOSTILE_RETRY_AFTER = [
    "\u00b2",
    "1\u00b9",
    "Mon, 01 Jan 99999999999 00:00:00 GMT",
    "Fri, 31 Dec 9999999999999999999 23:59:59 GMT",
]


@pytest.mark.parametrize("engine", ["memory", "redis"])
@pytest.mark.parametrize("value", HOSTILE_RETRY_AFTER)
async def test_a_malformed_retry_after_is_a_failure_like_any_other(
    make_hub: Callable[..., Any], request: pytest.FixtureRequest, engine: str, value: str
) -> None:
    """A 503 whose Retry-After cannot be read is retried on the schedule, counted, and
    dead-lettered after the retry window; the deliveries behind it then go out."""
    extra: dict[str, Any] = {}
    if engine == "redis":
        extra["engine"] = f"{request.getfixturevalue('redis_server').url}?{QUERY}"
    running = await make_hub(webhook_delivery={"retry_window": 0.5}, **extra)

    def behave(received: Received) -> Answer:
        if received.payload["data"] == "hostile":
            return Answer(status=503, retry_after=value)
        return OK

    async with Receiver(behave) as receiver:
        hook = await register(running, receiver, ["ra:*"])
        await running.publish("ra:a", "hostile")
        await running.publish("ra:a", "next")
        acked = await receiver.wait_acknowledged(1, wait=15)
        assert [r.payload["data"] for r in acked] == ["next"]
        # The delivery after it is recorded a moment after the receiver acknowledged it.
        await wait_state(running, hook["id"], lambda s: (s["dead_letters"], s["backlog"]) == (1, 0))
        async with running.http() as http:
            letters = (await http.get(f"/api/webhooks/{hook['id']}/dead-letters")).json()
        (letter,) = letters["dead_letters"]
        assert letter["payload"]["data"] == "hostile"
        assert letter["attempts"] >= 2 and letter["last_error"].startswith("HTTP 503")
        hostile = [r for r in receiver.received if r.payload["data"] == "hostile"]
        assert len(hostile) == letter["attempts"]


async def test_the_backlog_is_bounded_in_bytes(make_hub: Callable[..., Any]) -> None:
    # Counted deliveries alone let clients publishing large payloads to a stuck endpoint fill
    # the disk: 100,000 of 64 KB each.
    failing = [True]
    running = await make_hub(webhook_delivery={"max_backlog_bytes": BACKLOG_BYTES})
    async with Receiver(lambda r: Answer(status=500) if failing[0] else OK) as receiver:
        await fill_past_backlog_bytes(running, running, receiver, failing)


async def test_dead_letters_are_bounded_in_bytes(make_hub: Callable[..., Any]) -> None:
    limits = {"max_backlog_bytes": 8_000, "max_dead_letter_bytes": DEAD_LETTER_BYTES}
    running = await make_hub(webhook_delivery=limits)
    async with Receiver(lambda r: Answer(status=500)) as receiver:
        await keep_newest_dead_letters_within_bytes(running, running, receiver)
