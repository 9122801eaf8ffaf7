"""``/stomp`` over real sockets: connect, subscribe, send, receipts, resume, resets, acks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from clarion import Settings, __version__
from clarion.protocol.cursor import encode_single

from ..conftest import RunningHub, both_servers
from .client import StompClient, stomp


@both_servers
async def test_connect_subscribe_and_receive(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        assert client.conn.subprotocol == "v12.stomp"
        connected = await client.connect(heart_beat="0,0")
        assert connected.headers["version"] == "1.2"
        assert connected.headers["server"] == f"clarion/{__version__}"
        assert connected.headers["heart-beat"] == "0,0"
        assert connected.headers["session"] in {s.id for s in hub.hub.sessions.values()}
        await client.send("SUBSCRIBE", id="sub-0", destination="/topic/chat\\clobby", receipt="r1")
        await client.expect("RECEIPT")
        published = await hub.publish("chat:lobby", {"text": "hi", "n": 1})
        message = await client.expect("MESSAGE")
        assert message.headers["subscription"] == "sub-0"
        assert message.headers["message-id"] == published["cursor"]
        assert message.headers["destination"] == "/topic/chat:lobby"
        assert message.headers["content-type"] == "application/json"
        assert message.headers["x-offset"] == "1"
        assert message.headers["x-epoch"] == published["epoch"]
        assert int(message.headers["content-length"]) == len(message.body)
        assert message.json() == {"text": "hi", "n": 1}
        assert "ack" not in message.headers


@pytest.mark.parametrize(
    ("subprotocols", "version", "chosen"),
    [
        (["v10.stomp"], "1.0", "v10.stomp"),
        (["v11.stomp"], "1.1", "v11.stomp"),
        ([], "1.2", None),
        (["v12.stomp", "v11.stomp"], "1.1", "v12.stomp"),
    ],
)
async def test_versions_and_subprotocols(
    hub: RunningHub, subprotocols: list[str], version: str, chosen: str | None
) -> None:
    async with stomp(hub, subprotocols=subprotocols) as client:
        assert client.conn.subprotocol == chosen
        connected = await client.connect(version)
        assert connected.headers["version"] == version
        await client.send("SUBSCRIBE", id="s", destination="/topic/chat\\clobby"
                          if version != "1.0" else "/topic/chat:lobby", receipt="r")  # fmt: skip
        await client.expect("RECEIPT")
        await hub.publish("chat:lobby", [1])
        raw = await client.conn.recv()
        assert isinstance(raw, str)
        escaped = "destination:/topic/chat\\clobby\n" in raw
        assert escaped == (version != "1.0")
        assert ("destination:/topic/chat:lobby\n" in raw) == (version == "1.0")


async def test_no_accept_version_means_1_0(hub: RunningHub) -> None:
    async with stomp(hub, subprotocols=[]) as client:
        await client.send("CONNECT")
        assert (await client.expect("CONNECTED")).headers["version"] == "1.0"


@both_servers
async def test_send_and_receive_own_message(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="me", destination="/topic/echo")
        await client.send("SEND", '{"from":"me"}', destination="/topic/echo", receipt="s1",
                          content_type="application/json")  # fmt: skip
        got = {}
        for _ in range(2):
            frame = await client.recv()
            got[frame.command] = frame
        assert got["RECEIPT"].headers["receipt-id"] == "s1"
        assert got["RECEIPT"].headers["x-cursor"] == got["MESSAGE"].headers["message-id"]
        assert got["MESSAGE"].json() == {"from": "me"}
    async with hub.http() as http:
        history = (await http.get("/api/history", params={"channel": "echo"})).json()
    (pub,) = history["publications"]
    assert pub["data"] == {"from": "me"}


async def test_text_plain_send_arrives_as_sent(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="t", destination="/topic/t")
        await client.send("SEND", "plain words", destination="/topic/t", content_type="text/plain")
        message = await client.expect("MESSAGE")
        assert (message.body, message.headers["content-type"]) == (b"plain words", "text/plain")


@both_servers
async def test_receipts_and_disconnect(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="a", destination="/topic/a", receipt="sub")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "sub"
        await client.send("UNSUBSCRIBE", id="a", receipt="unsub")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "unsub"
        await hub.publish("a", "not delivered")
        await client.send("ACK", id=encode_single("a", "e", 1), receipt="ack")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "ack"
        await client.send("DISCONNECT", receipt="bye")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "bye"
        assert await client.closed() == 1000
    assert not hub.hub.sessions


async def test_several_frames_per_message_and_frames_split_across_messages(
    hub: RunningHub,
) -> None:
    async with stomp(hub) as client:
        await client.send_raw("CONN")
        await client.send_raw("ECT\r\naccept-version:1.2\r\nhost:x\r\n")
        await client.send_raw("\r\n\0\n")
        await client.expect("CONNECTED")
        await client.send_raw(
            "SUBSCRIBE\nid:1\ndestination:/topic/b\n\n\0\n"
            'SEND\ndestination:/topic/b\ncontent-length:3\n\n"x"\0'
            "SEND\ndestination:/topic/b\nreceipt:done\n\n"
        )
        await client.send_raw('"y"\0')
        bodies = []
        while len(bodies) < 2:
            frame = await client.recv()
            if frame.command == "MESSAGE":
                bodies.append(frame.json())
        assert bodies == ["x", "y"]


async def test_binary_websocket_messages_are_read_too(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.send_raw(b"CONNECT\naccept-version:1.2\n\n\0")
        await client.expect("CONNECTED")


@both_servers
async def test_resume_after_a_dropped_connection(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="s", destination="/topic/feed")
        await hub.publish("feed", "seen")
        last = (await client.expect("MESSAGE")).headers["message-id"]
    for n in range(3):
        await hub.publish("feed", f"missed {n}")
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="s", destination="/topic/feed", x_since=last,
                          receipt="r")  # fmt: skip
        receipt = await client.expect("RECEIPT")
        assert receipt.headers["x-cursor"] == last
        missed = [await client.expect("MESSAGE") for _ in range(3)]
        assert [m.json() for m in missed] == ["missed 0", "missed 1", "missed 2"]
        assert [m.headers["x-offset"] for m in missed] == ["2", "3", "4"]
        await hub.publish("feed", "live")
        assert (await client.expect("MESSAGE")).json() == "live"


@both_servers
async def test_a_gap_that_history_cannot_fill_is_a_reset_message(
    hub_factory: Callable[..., Any],
) -> None:
    hub: RunningHub = await hub_factory(Settings(namespaces={"tiny": {"history_size": 2}}))
    first = await hub.publish("tiny:x", 1)
    for n in range(2, 6):
        await hub.publish("tiny:x", n)
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="s", destination="/topic/tiny\\cx",
                          x_since=first["cursor"])  # fmt: skip
        reset = await client.expect("MESSAGE")
        assert reset.headers["x-reset"] == "trimmed"
        assert reset.headers["message-id"] == "reset-" + reset.headers["x-cursor"]
        assert reset.headers["content-length"] == "0" and reset.body == b""
        assert reset.headers["destination"] == "/topic/tiny:x"
        await hub.publish("tiny:x", "live")
        live = await client.expect("MESSAGE")
        assert live.json() == "live" and live.headers["x-offset"] == "6"
        # Resuming from the reset's cursor is clean: nothing missed since.
        async with stomp(hub) as again:
            await again.connect()
            await again.send("SUBSCRIBE", id="s", destination="/topic/tiny\\cx",
                             x_since=reset.headers["x-cursor"])  # fmt: skip
            assert (await again.expect("MESSAGE")).json() == "live"


async def test_a_cursor_of_another_epoch_is_a_reset(hub: RunningHub) -> None:
    await hub.publish("e", 1)
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="s", destination="/topic/e",
                          x_since=encode_single("e", "gone", 10))  # fmt: skip
        assert (await client.expect("MESSAGE")).headers["x-reset"] == "epoch"


async def test_client_acks_give_a_position_to_resume_from(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="s", destination="/topic/jobs", ack="client-individual",
                          receipt="r")  # fmt: skip
        start = (await client.expect("RECEIPT")).headers["x-cursor"]
        for n in range(1, 5):
            await hub.publish("jobs", n)
        messages = [await client.expect("MESSAGE") for _ in range(4)]
        assert all(m.headers["ack"] == m.headers["message-id"] for m in messages)
        await client.send("ACK", id=messages[0].headers["ack"], receipt="a1")
        assert (await client.expect("RECEIPT")).headers["x-cursor"] == messages[0].headers["ack"]
        await client.send("ACK", id=messages[2].headers["ack"], receipt="a3")  # out of order
        acked = (await client.expect("RECEIPT")).headers["x-cursor"]
        assert acked == messages[0].headers["ack"] != start
        await client.send("NACK", id=messages[1].headers["ack"], receipt="n2")
        assert (await client.expect("RECEIPT")).headers["x-cursor"] == acked
    # What was not acknowledged comes again when resuming from the acked position.
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="s", destination="/topic/jobs", ack="client",
                          x_since=acked)  # fmt: skip
        again = [await client.expect("MESSAGE") for _ in range(3)]
        assert [m.json() for m in again] == [2, 3, 4]
        await client.send("ACK", id=again[-1].headers["ack"], receipt="all")
        assert (await client.expect("RECEIPT")).headers["x-cursor"] == again[-1].headers["ack"]
        await client.send("UNSUBSCRIBE", id="s", receipt="u")
        assert (await client.expect("RECEIPT")).headers["x-cursor"] == again[-1].headers["ack"]


@both_servers
async def test_fan_out_to_many_subscribers_with_different_ids(hub: RunningHub) -> None:
    versions = ["1.2", "1.1", "1.0"] * 3
    async with contextlib.AsyncExitStack() as stack:
        clients: list[StompClient] = []
        for i, version in enumerate(versions):
            client = await stack.enter_async_context(stomp(hub))
            clients.append(client)
            await client.connect(version)
            ack = "client" if i % 2 else "auto"
            await client.send("SUBSCRIBE", id=f"id-{'x' * i}", destination="/topic/wide",
                              ack=ack, receipt="r")  # fmt: skip
            await client.expect("RECEIPT")
        payload = {"big": "y" * 300}  # a 16-bit WebSocket length for everyone
        await hub.publish("wide", payload)
        await hub.publish("wide", "small")
        for i, client in enumerate(clients):
            first, second = await client.expect("MESSAGE"), await client.expect("MESSAGE")
            assert first.headers["subscription"] == f"id-{'x' * i}"
            assert (first.json(), second.json()) == (payload, "small")
            assert ("ack" in first.headers) == bool(i % 2)


async def test_connections_show_in_presence_and_metrics(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SUBSCRIBE", id="p", destination="/topic/room", receipt="r")
        await client.expect("RECEIPT")
        await hub.publish("room", 1)
        await client.expect("MESSAGE")
        async with hub.http() as http:
            clients = (await http.get("/api/presence", params={"channel": "room"})).json()
            metrics = (await http.get("/metrics")).text
    assert [c["transport"] for c in clients["clients"]] == ["stomp"]
    assert 'clarion_deliveries_total{transport="stomp"} 1.0' in metrics
