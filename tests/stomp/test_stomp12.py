"""STOMP 1.2 beyond the basics, in raw frames: heart-beats, several subscriptions per destination.

The same features are exercised with real clients in ``test_interop_stomp12.py``.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from clarion.protocol.cursor import encode_single

from ..conftest import RunningHub, timeout
from ..redis_fixture import RedisServer, redis_server
from ..security.test_hooks import Backend, backend, hooked
from ..security.test_hooks import token as hook_token
from ..transports.streams import poll, sse
from .client import Received, StompClient, stomp

__all__ = ["backend", "redis_server"]
JSON = "application/json"

# ---- heart-beats -----------------------------------------------------------------------------


async def test_heart_beats_as_often_as_asked_down_to_the_floor(hub: RunningHub) -> None:
    # Defaults: WebSocket pings every 25 s, STOMP heart-beats down to 1 s.
    async with stomp(hub) as client:
        connected = await client.connect(heart_beat="0,1000")
        assert connected.headers["heart-beat"] == "1000,0"
        started = time.monotonic()
        for _ in range(2):
            assert (await client.recv(3, heart_beats=True)).command == "HEARTBEAT"
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < timeout(4), elapsed
    async with stomp(hub) as client:
        # Asking for less than the floor gets the floor; the hub wants the client's beats no
        # more often than every ping_interval.
        connected = await client.connect(heart_beat="200,200")
        assert connected.headers["heart-beat"] == "1000,25000"
    async with stomp(hub) as client:
        connected = await client.connect(heart_beat="0,4000")
        assert connected.headers["heart-beat"] == "4000,0"


# ---- several subscriptions to one destination --------------------------------------------------


async def _subscribe(client: StompClient, sub_id: str, receipt: str, **headers: str) -> str:
    await client.send("SUBSCRIBE", id=sub_id, destination="/topic/chat\\cmany", receipt=receipt,
                      **headers)  # fmt: skip
    got = await client.expect("RECEIPT")
    assert got.headers["receipt-id"] == receipt
    return got.headers["x-cursor"]


async def _messages(client: StompClient, count: int) -> list[Received]:
    return [await client.expect("MESSAGE") for _ in range(count)]


async def test_several_subscriptions_to_one_destination(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await _subscribe(client, "auto", "r1")
        await hub.publish("chat:many", "first")
        (only,) = await _messages(client, 1)
        assert only.headers["subscription"] == "auto" and "ack" not in only.headers
        start = await _subscribe(client, "manual", "r2", ack="client-individual")
        assert start == only.headers["message-id"]  # it starts where the connection is
        await _subscribe(client, "cumulative", "r3", ack="client")

        published = await hub.publish("chat:many", "second")
        got = {m.headers["subscription"]: m for m in await _messages(client, 3)}
        assert set(got) == {"auto", "manual", "cumulative"}
        assert {m.body for m in got.values()} == {b'"second"'}
        assert {m.headers["message-id"] for m in got.values()} == {published["cursor"]}
        assert "ack" not in got["auto"].headers
        # Each subscription has its own ack ids and its own acked position.
        manual, cumulative = got["manual"].headers["ack"], got["cumulative"].headers["ack"]
        assert len({manual, cumulative, published["cursor"]}) == 3
        await client.send("ACK", id=manual, receipt="a1")
        assert (await client.expect("RECEIPT")).headers["x-cursor"] == published["cursor"]
        await client.send("UNSUBSCRIBE", id="cumulative", receipt="u1")
        # Nothing acknowledged there: its position is still where it started.
        assert (await client.expect("RECEIPT")).headers["x-cursor"] == start
        # An ack of a subscription that is gone names nothing: accepted, no position.
        await client.send("ACK", id=cumulative, receipt="a2")
        assert "x-cursor" not in (await client.expect("RECEIPT")).headers

        await client.send("UNSUBSCRIBE", id="auto", receipt="u2")
        await client.expect("RECEIPT")
        await hub.publish("chat:many", "third")
        (last,) = await _messages(client, 1)
        assert last.headers["subscription"] == "manual" and last.body == b'"third"'
        await client.send("UNSUBSCRIBE", id="manual", receipt="u3")
        await client.expect("RECEIPT")
        session = next(iter(hub.hub.sessions.values()))
        assert not session.subscriptions  # the last one leaves the channel
        await hub.publish("chat:many", "unheard")
        await client.send("DISCONNECT", receipt="bye")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "bye"


async def test_a_further_subscription_resumes_on_its_own(hub: RunningHub) -> None:
    cursors = [(await hub.publish("chat:many", n))["cursor"] for n in range(3)]
    async with stomp(hub) as client:
        await client.connect()
        await _subscribe(client, "live", "r1")
        # The second one asks for what followed the first publication: only it gets the replay.
        start = await _subscribe(client, "replay", "r2", x_since=cursors[0])
        assert start == cursors[0]
        replayed = await _messages(client, 2)
        assert [(m.headers["subscription"], m.body) for m in replayed] == [
            ("replay", b"1"),
            ("replay", b"2"),
        ]
        third = await hub.publish("chat:many", 3)
        got = await _messages(client, 2)
        assert sorted(m.headers["subscription"] for m in got) == ["live", "replay"]
        assert {m.body for m in got} == {b"3"}
        # A position the history does not cover is reset, on that subscription only.
        gone = encode_single("chat:many", "another-epoch", 7)
        await client.send("SUBSCRIBE", id="stale", destination="/topic/chat\\cmany",
                          receipt="r3", x_since=gone)  # fmt: skip
        receipt = await client.expect("RECEIPT")
        assert receipt.headers["x-cursor"] == third["cursor"]  # where the reset leaves it
        reset = await client.expect("MESSAGE")
        assert reset.headers["subscription"] == "stale"
        assert reset.headers["x-reset"] == "epoch"
        assert reset.headers["x-cursor"] == receipt.headers["x-cursor"]
        last = await hub.publish("chat:many", 4)
        got = await _messages(client, 3)
        assert sorted(m.headers["subscription"] for m in got) == ["live", "replay", "stale"]
        assert {m.headers["message-id"] for m in got} == {last["cursor"]}


@pytest.mark.parametrize("count", [2, 5])
async def test_the_subscription_cap_counts_every_id(hub_factory, count: int) -> None:  # type: ignore[no-untyped-def]
    running: RunningHub = await hub_factory(limits={"max_subscriptions_per_connection": count})
    async with stomp(running) as client:
        await client.connect()
        for n in range(count):
            await _subscribe(client, f"s{n}", f"r{n}")
        await client.send("SUBSCRIBE", id="over", destination="/topic/chat\\cmany", receipt="x")
        error = await client.expect("ERROR")
        assert error.headers["x-code"] == "too_many_subscriptions"
        assert error.headers["receipt-id"] == "x"
        assert await client.closed() == 4507


# ---- transactions --------------------------------------------------------------------------------


async def test_a_transaction_takes_effect_at_commit_in_order(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await _subscribe(client, "s", "r0", ack="client-individual")
        published = await hub.publish("chat:many", "before")
        (before,) = await _messages(client, 1)
        await client.send("BEGIN", transaction="tx", receipt="b")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "b"
        for n in range(3):
            await client.send("SEND", str(n), destination="/topic/chat\\cmany", transaction="tx",
                              receipt=f"s{n}", content_type="application/json")  # fmt: skip
            receipt = await client.expect("RECEIPT")
            assert receipt.headers["receipt-id"] == f"s{n}" and "x-cursor" not in receipt.headers
        await client.send("ACK", id=before.headers["ack"], transaction="tx", receipt="a")
        assert "x-cursor" not in (await client.expect("RECEIPT")).headers
        history = await hub.hub.history("chat:many")
        assert [p.data for p in history[0].publications] == ["before"]  # nothing published yet
        await client.send("COMMIT", transaction="tx", receipt="c")
        got = [await client.recv() for _ in range(4)]
        assert [m.body for m in got[:3]] == [b"0", b"1", b"2"]
        assert got[3].command == "RECEIPT" and got[3].headers["receipt-id"] == "c"
        # The ACK took effect at COMMIT: the acked position is past "before".
        await client.send("UNSUBSCRIBE", id="s", receipt="u")
        assert (await client.expect("RECEIPT")).headers["x-cursor"] == published["cursor"]


async def test_abort_and_disconnect_discard_a_transaction(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await _subscribe(client, "s", "r0")
        await client.send("BEGIN", transaction="tx")
        await client.send("SEND", '"dropped"', destination="/topic/chat\\cmany", transaction="tx")
        await client.send("ABORT", transaction="tx", receipt="x")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "x"
        await client.send("COMMIT", transaction="tx", receipt="c")
        error = await client.expect("ERROR")
        assert (error.headers["x-code"], error.headers["receipt-id"]) == (
            "unknown_transaction",
            "c",
        )
    async with stomp(hub) as client:
        await client.connect()
        await client.send("BEGIN", transaction="tx")
        await client.send("SEND", '"left open"', destination="/topic/chat\\cmany",
                          transaction="tx")  # fmt: skip
        await client.send("DISCONNECT", receipt="bye")
        await client.expect("RECEIPT")
    async with stomp(hub) as client:  # the connection ends with the transaction open
        await client.connect()
        await client.send("BEGIN", transaction="tx")
        await client.send("SEND", '"cut off"', destination="/topic/chat\\cmany", transaction="tx",
                          receipt="held")  # fmt: skip
        await client.expect("RECEIPT")
    history, _ = await hub.hub.history("chat:many")
    assert history.publications == []


async def test_a_transaction_is_checked_as_it_goes(hub_factory) -> None:  # type: ignore[no-untyped-def]
    # A SEND the token may not publish is refused when it arrives, not at COMMIT.
    running: RunningHub = await hub_factory(namespaces={"ro": {"client_publish": False}})
    async with stomp(running) as client:
        await client.connect()
        await client.send("BEGIN", transaction="tx")
        await client.send("SEND", "1", destination="/topic/ro\\cx", transaction="tx", receipt="s")
        error = await client.expect("ERROR")
        assert error.headers["receipt-id"] == "s"
        assert error.headers["message"] == (
            "clients may not publish to 'ro:x': its namespace takes publications from the "
            "server API only (client_publish = false)"
        )
        assert await client.closed() == 4502
    async with stomp(running) as client:
        await client.connect()
        for n in range(8):
            await client.send("BEGIN", transaction=f"t{n}")
        await client.send("BEGIN", transaction="one-too-many", receipt="b")
        error = await client.expect("ERROR")
        assert (error.headers["x-code"], error.headers["receipt-id"]) == (
            "too_many_transactions",
            "b",
        )


# ---- user headers --------------------------------------------------------------------------------


async def test_user_headers_reach_subscribers_escaped(hub: RunningHub) -> None:
    async with stomp(hub) as client, stomp(hub, subprotocols=["v10.stomp"]) as old:
        await client.connect()
        await old.connect("1.0")
        await _subscribe(client, "s", "r")
        await old.send("SUBSCRIBE", destination="/topic/chat:many", receipt="r")
        await old.expect("RECEIPT")
        # Sent escaped (1.2): a colon, a line break and a backslash in values; one name repeated.
        raw = (
            "SEND\ndestination:/topic/chat\\cmany\ncontent-type:application/json\n"
            "x-trace:a\\cb\\nc\\\\d\npriority:9\nx-trace:second\nreceipt:s\n\n1\0"
        )
        await client.send_raw(raw)
        got = {m.command: m for m in [await client.recv(), await client.recv()]}
        message = got["MESSAGE"]
        assert message.headers["x-trace"] == "a:b\nc\\d"  # unescaped by the test's parser
        assert message.headers["priority"] == "9"
        assert "receipt" not in message.headers and message.body == b"1"
        wire = await old.conn.recv()  # 1.0: no escaping; a line break becomes a space
        assert isinstance(wire, str) and "\nx-trace:a:b c\\d\npriority:9\n" in wire
        # In history, and resumed like the rest of the publication.
        start = encode_single("chat:many", message.headers["x-epoch"], 0)
        await client.send("SUBSCRIBE", id="again", destination="/topic/chat\\cmany", x_since=start)
        replayed = await client.expect("MESSAGE")
        assert replayed.headers["subscription"] == "again"
        assert replayed.headers["x-trace"] == "a:b\nc\\d"


async def test_other_transports_see_a_headers_object(hub: RunningHub) -> None:
    async with hub.ws() as ws, sse(hub, "chat:many") as stream, hub.http() as http:
        await ws.subscribe("chat:many")
        await stream.opening()
        async with stomp(hub) as client:
            await client.connect()
            await client.send("SEND", '{"n":1}', destination="/topic/chat\\cmany",
                              content_type="application/json", x_a="1", receipt="r")  # fmt: skip
            cursor = (await client.expect("RECEIPT")).headers["x-cursor"]
        via_ws = await ws.recv()
        ((_, via_sse),) = await stream.messages(1)
        via_poll = (await poll(http, "chat:many", cursor=encode_single(
            "chat:many", via_ws["epoch"], 0), timeout=0))["publications"]  # fmt: skip
    assert via_ws["cursor"] == cursor
    assert via_ws["data"] == {"n": 1} and via_ws["headers"] == {"x-a": "1"}
    assert via_ws == via_sse == via_poll[0]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"message-id": "mine"}, "reserved_header"),
        ({"x-offset": "1"}, "reserved_header"),
        ({f"h{n}": "v" for n in range(33)}, "too_many_headers"),
        ({"big": "v" * 4100}, "too_many_headers"),
    ],
)
async def test_user_headers_are_bounded(
    hub: RunningHub, headers: dict[str, str], code: str
) -> None:
    async with stomp(hub) as client:
        await client.connect()
        lines = "".join(f"{k}:{v}\n" for k, v in headers.items())
        await client.send_raw(f"SEND\ndestination:/topic/chat\\cmany\n{lines}receipt:x\n\n1\0")
        error = await client.expect("ERROR")
        assert (error.headers["x-code"], error.headers["receipt-id"]) == (code, "x")
    history, _ = await hub.hub.history("chat:many")
    assert history.publications == []


# ---- bodies: text and binary, byte for byte -----------------------------------------------------

BINARY = bytes(range(256)) + b"\0\0\xff"


def _send_frame(body: bytes, destination: str = "/topic/chat\\cmany", **headers: str) -> bytes:
    lines = "".join(f"{k.replace('_', '-')}:{v}\n" for k, v in headers.items())
    head = f"SEND\ndestination:{destination}\n{lines}content-length:{len(body)}\n\n"
    return head.encode() + body + b"\0"


async def _subscribe_to(client: StompClient, destination: str) -> None:
    await client.send("SUBSCRIBE", id="s", destination=destination, receipt="sub")
    await client.expect("RECEIPT")


@pytest.mark.parametrize(
    ("body", "content_type", "published"),
    [
        (BINARY, "application/octet-stream", {"encoding": "base64"}),
        ("plain words, ünïcode\n".encode(), "text/plain;charset=utf-8", {"encoding": "utf-8"}),
        (b'{"spaced": [1, 2]}', "application/json", {"encoding": "utf-8"}),
        (b'{"compact":[1,2]}', "application/json", {}),  # a JSON publication
        (b"no type at all", None, {"encoding": "utf-8"}),
        (b"\xc3\x28 not utf-8, no type", None, {"encoding": "base64"}),
        (b"", None, {"encoding": "utf-8"}),
    ],
)
async def test_bodies_round_trip_byte_for_byte_and_show_on_other_transports(
    hub: RunningHub, body: bytes, content_type: str | None, published: dict[str, str]
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    async with hub.ws() as ws, sse(hub, "chat:many") as stream, hub.http() as http:
        await ws.subscribe("chat:many")
        await stream.opening()
        async with stomp(hub) as client:
            await client.connect()
            start = await _subscribe(client, "s", "r")
            await client.send_raw(_send_frame(body, receipt="x", **headers))
            got = {m.command: m for m in [await client.recv(), await client.recv()]}
            message = got["MESSAGE"]
            assert message.body == body
            assert message.headers.get("content-type") == (content_type or None)
            assert int(message.headers["content-length"]) == len(body)
            # Resumed from history: the same bytes.
            await client.send("SUBSCRIBE", id="again", destination="/topic/chat\\cmany",
                              x_since=start)  # fmt: skip
            replayed = await client.expect("MESSAGE")
            assert (replayed.body, replayed.headers.get("content-type")) == (
                body,
                content_type or None,
            )
        via_ws = await ws.recv()
        ((_, via_sse),) = await stream.messages(1)
        via_poll = (await poll(http, "chat:many", cursor=start, timeout=0))["publications"]
    assert via_ws == via_sse == via_poll[0]
    assert via_ws.get("encoding") == published.get("encoding")
    assert via_ws.get("content_type") == (content_type if published else None)
    if published.get("encoding") == "base64":
        assert base64.b64decode(via_ws["data"]) == body
    elif published:
        assert via_ws["data"] == body.decode()
    else:
        assert via_ws["data"] == json.loads(body)


async def test_a_body_counts_its_bytes_against_max_message_bytes(hub_factory) -> None:  # type: ignore[no-untyped-def]
    running: RunningHub = await hub_factory(limits={"max_message_bytes": 4096})
    async with stomp(running) as client:
        await client.connect()
        await _subscribe(client, "s", "r")
        # 3200 bytes: under the limit, although their base64 (4268 characters) is not.
        body = bytes(n % 7 for n in range(3199)) + b"\xff"
        await client.send_raw(_send_frame(body, content_type="application/octet-stream"))
        assert (await client.expect("MESSAGE")).body == body
        # 3000 line breaks: 3000 bytes, although 6002 as a JSON string.
        await client.send_raw(_send_frame(b"\n" * 3000, content_type="text/plain"))
        assert (await client.expect("MESSAGE")).body == b"\n" * 3000
    history, _ = await running.hub.history("chat:many")
    assert [p.attrs for p in history.publications] == [
        {"encoding": "base64", "content_type": "application/octet-stream"},
        {"encoding": "utf-8", "content_type": "text/plain"},
    ]


async def test_bodies_on_the_redis_engine(hub_factory, redis_server: RedisServer) -> None:  # type: ignore[no-untyped-def]
    running: RunningHub = await hub_factory(engine=redis_server.url)
    async with stomp(running) as client:
        await client.connect()
        start = await _subscribe(client, "s", "r")
        await client.send_raw(_send_frame(BINARY, content_type="image/x-test", x_a="1"))
        await client.send_raw(_send_frame(b"text", content_type="text/plain"))
        live = [await client.expect("MESSAGE") for _ in range(2)]
        await client.send("SUBSCRIBE", id="again", destination="/topic/chat\\cmany", x_since=start)
        replayed = [await client.expect("MESSAGE") for _ in range(2)]
    for got in (live, replayed):
        assert [(m.body, m.headers["content-type"]) for m in got] == [
            (BINARY, "image/x-test"),
            (b"text", "text/plain"),
        ]
        assert got[0].headers["x-a"] == "1"


async def test_a_body_the_publish_hook_replaces_becomes_json(hub_factory, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    running = await hooked(hub_factory, backend.url + "/hook")
    async with stomp(running) as client:
        await client.connect(passcode=hook_token("alice", publish=["room:*"]))
        await _subscribe_to(client, "/topic/room\\ccensored")
        await client.send_raw(_send_frame(b"bad words", content_type="text/plain", x_a="1",
                                          destination="/topic/room\\ccensored"))  # fmt: skip
        message = await client.expect("MESSAGE")
    assert (message.body, message.headers["content-type"]) == (b'{"text":"***"}', JSON)
    assert message.headers["x-a"] == "1"  # the headers stay
    (asked,) = [r for r in backend.requests if r["event"] == "publish"]
    assert asked["data"] == "bad words"
    history, _ = await running.hub.history("room:censored")
    assert history.publications[0].attrs == {"headers": {"x-a": "1"}}


async def test_x_latest_on_a_further_subscription(hub: RunningHub) -> None:
    for n in range(3):
        await hub.publish("chat:many", n)
    async with stomp(hub) as client:
        await client.connect()
        start = await _subscribe(client, "first", "r1")
        # The newest stored publication first, on that subscription only; then live ones.
        assert await _subscribe(client, "newest", "r2", x_latest="true") == start
        (newest,) = await _messages(client, 1)
        assert (newest.headers["subscription"], newest.body) == ("newest", b"2")
        await hub.publish("chat:many", 3)
        got = await _messages(client, 2)
        assert sorted(m.headers["subscription"] for m in got) == ["first", "newest"]
        assert {m.body for m in got} == {b"3"}
