"""Live signals that skip history: ``publish`` with ``ephemeral``, over real sockets on both
engines (on Redis, published on one node and received on another)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.typing import Subprotocol

from clarion.client import connect

from ..conftest import RunningHub, timeout, until
from ..stomp.client import Received, frame, parse, stomp
from ..transports.streams import poll, sse

pytestmark = pytest.mark.timeout(90)


async def ws_until_offset(ws: Any, offset: int) -> list[dict[str, Any]]:
    """Pushes up to the publication at ``offset``."""
    got = []
    while True:
        msg = await ws.recv()
        got.append(msg)
        if msg.get("offset") == offset:
            return got


async def test_an_ephemeral_publication_reaches_live_subscribers_on_every_transport(
    nodes: Callable[..., Any],
) -> None:
    writer: RunningHub = await nodes()
    reader: RunningHub = await nodes()
    first = await writer.publish("room:a", "stored 1")
    async with (
        reader.ws() as ws,
        sse(reader, "room:a") as one,
        sse(reader, "room:a", "room:b") as two,
        stomp(reader) as client,
        writer.ws() as publisher,
        writer.http() as http,
    ):
        await ws.subscribe("room:a")
        await one.opening()
        await two.opening()
        before_two = two.last_id
        await client.connect()
        await client.send("SUBSCRIBE", id="s", destination="/topic/room:a", receipt="r")
        await client.expect("RECEIPT")
        async with stomp(writer) as sender:
            await sender.connect()
            # One signal through each way of publishing.
            api = await writer.publish("room:a", {"x": 1}, ephemeral=True, key="alice")
            assert api == {"ephemeral": True}
            op = await publisher.call("publish", channel="room:a", data={"x": 2}, ephemeral=True)
            assert op["ok"] == {"ephemeral": True}
            r = await http.post(
                "/client/publish",
                json={"channel": "room:a", "data": {"x": 3}, "ephemeral": True, "key": "bob"},
            )
            assert r.status_code == 200 and r.json() == {"ephemeral": True}, r.text
            await sender.send(
                "SEND",
                '{"x":4}',
                destination="/topic/room:a",
                receipt="p",
                content_type="application/json",
                x_ephemeral="true",
            )
            receipt = await sender.expect("RECEIPT")
            assert receipt.headers["x-ephemeral"] == "true" and "x-cursor" not in receipt.headers
        last = await writer.publish("room:a", "stored 2")
        assert last["offset"] == first["offset"] + 1  # no offset was taken by the signals

        signals = [{"x": n} for n in (1, 2, 3, 4)]
        got = await ws_until_offset(ws, last["offset"])
        assert [m["data"] for m in got] == [*signals, "stored 2"]
        for msg in got[:-1]:
            assert msg["ephemeral"] is True and msg["channel"] == "room:a"
            assert not {"offset", "epoch", "cursor"} & set(msg)
        assert [m.get("key") for m in got[:-1]] == ["alice", None, "bob", None]

        for stream, last_id in ((one, first["cursor"]), (two, before_two)):
            events = [await stream.next() for _ in range(5)]
            assert [e.json()["data"] for e in events] == [*signals, "stored 2"]
            # No id: on the signals the last event id stays where the stored ones left it.
            assert all(e.id == last_id and e.json()["ephemeral"] for e in events[:4])
            assert events[4].id != last_id

        messages = [await client.expect("MESSAGE") for _ in range(5)]
        assert [m.json() for m in messages] == [*signals, "stored 2"]
        for m in messages[:4]:
            assert m.headers["x-ephemeral"] == "true" and "x-offset" not in m.headers
            assert m.headers["message-id"].startswith("ephemeral-")
        assert messages[0].headers["x-key"] == "alice"
        assert messages[4].headers["x-offset"] == str(last["offset"])

    # Never stored: absent from history and from a resume.
    async with reader.ws() as ws:
        history = (await ws.call("history", channel="room:a"))["ok"]
        assert [p["data"] for p in history["publications"]] == ["stored 1", "stored 2"]
        await ws.subscribe("room:a", since=first["cursor"])
        resumed = await ws.recv()
        assert resumed["data"] == "stored 2"
        with pytest.raises(asyncio.TimeoutError):
            await ws.recv(wait=0.3)
    async with reader.http() as http:
        body = await poll(http, "room:a", cursor=first["cursor"], timeout="0")
        assert [p["data"] for p in body["publications"]] == ["stored 2"]


async def test_a_waiting_long_poll_answers_with_a_signal_and_keeps_its_cursor(
    nodes: Callable[..., Any],
) -> None:
    writer: RunningHub = await nodes()
    reader: RunningHub = await nodes()
    stored = await writer.publish("room:p", "stored")
    async with reader.http() as http:
        waiting = asyncio.create_task(poll(http, "room:p", cursor=stored["cursor"], timeout="20"))
        # Signals reach live subscribers only: send until the poll is waiting to get one.
        deadline = asyncio.get_running_loop().time() + timeout(10)
        while not waiting.done():
            assert asyncio.get_running_loop().time() < deadline, "the poll got no signal"
            await writer.publish("room:p", {"at": 1}, ephemeral=True, key="k")
            await asyncio.wait({waiting}, timeout=0.05)
        body = waiting.result()
    assert body["publications"] and all(p["ephemeral"] for p in body["publications"])
    assert body["publications"][0] == {
        "channel": "room:p",
        "ephemeral": True,
        "key": "k",
        "data": {"at": 1},
        "time": body["publications"][0]["time"],
    }
    assert body["cursor"] == stored["cursor"]  # a signal moves no cursor


async def test_a_namespace_of_signals(nodes: Callable[..., Any]) -> None:
    settings = {"namespaces": {"cursors": {"ephemeral": True}}}
    writer: RunningHub = await nodes(**settings)
    reader: RunningHub = await nodes(**settings)
    async with reader.ws() as ws, writer.ws() as publisher:
        await ws.subscribe("cursors:doc1")
        assert await writer.publish("cursors:doc1", {"x": 5}) == {"ephemeral": True}
        op = await publisher.call("publish", channel="cursors:doc1", data={"x": 6}, key="u")
        assert op["ok"] == {"ephemeral": True}
        got = [await ws.recv(), await ws.recv()]
        assert [(m["data"], m["ephemeral"], m.get("key")) for m in got] == [
            ({"x": 5}, True, None),
            ({"x": 6}, True, "u"),
        ]
        history = (await ws.call("history", channel="cursors:doc1"))["ok"]
        assert history["publications"] == [] and history["more"] is False
        async with writer.http() as http:
            r = await http.post(
                "/api/broadcast", json={"channels": ["cursors:doc1", "plain"], "data": 7}
            )
            assert r.json()["results"][0] == {"channel": "cursors:doc1", "ephemeral": True}
            assert r.json()["results"][1]["offset"] == 1
        assert (await ws.recv())["data"] == 7
    async with reader.http() as http:
        metrics = (await http.get("/metrics")).text
        signals = re.search(r"^clarion_ephemeral_publications_total (\S+)$", metrics, re.M)
        assert signals is not None and float(signals.group(1)) >= 3
        # An id asks for a stored publication: refused where nothing is stored.
        async with writer.http() as http:
            r = await http.post("/api/publish", json={"channel": "cursors:x", "data": 1, "id": "a"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


async def test_bad_ephemeral_fields_are_refused(hub: RunningHub) -> None:
    async with hub.ws() as ws, hub.http() as http:
        for fields in ({"ephemeral": "yes"}, {"ephemeral": True, "key": ""}, {"key": 5}):
            reply = await ws.call("publish", channel="room:x", data=1, **fields)
            assert reply["error"]["code"] == "bad_request", fields
            r = await http.post("/api/publish", json={"channel": "room:x", "data": 1, **fields})
            assert r.status_code == 400, fields
        # A key belongs to a signal.
        reply = await ws.call("publish", channel="room:x", data=1, key="k")
        assert reply["error"]["code"] == "bad_request"
    async with stomp(hub) as client:
        await client.connect()
        await client.send("SEND", "1", destination="/topic/room:x", x_ephemeral="maybe")
        assert (await client.expect("ERROR")).headers["message"]


async def test_a_signal_leaves_a_shared_stomp_destination_where_it_stood(hub: RunningHub) -> None:
    """Two STOMP subscriptions of one connection to one channel share the hub's; a signal to it
    has no place in the stream, so a third subscription still starts where the stream stands,
    and one resuming from before gets each stored publication once."""
    async with stomp(hub) as client, hub.http() as http:
        await client.connect()
        first = (await hub.publish("room:s", "stored 1"))["cursor"]
        for sub in ("a", "b"):
            await client.send("SUBSCRIBE", id=sub, destination="/topic/room:s", receipt=sub)
            await client.expect("RECEIPT")
        second = await hub.publish("room:s", "stored 2")
        await http.post(
            "/api/publish", json={"channel": "room:s", "data": "sig", "ephemeral": True}
        )
        got = [await client.expect("MESSAGE") for _ in range(4)]
        assert [m.body for m in got] == [b'"stored 2"'] * 2 + [b'"sig"'] * 2
        await client.send("SUBSCRIBE", id="c", destination="/topic/room:s", receipt="c")
        receipt = await client.expect("RECEIPT")
        assert receipt.headers["x-cursor"] == second["cursor"]
        await client.send(
            "SUBSCRIBE", id="d", destination="/topic/room:s", receipt="d", x_since=first
        )
        await client.expect("RECEIPT")
        replayed = await client.expect("MESSAGE")
        assert (replayed.headers["subscription"], replayed.body) == ("d", b'"stored 2"')
        await hub.publish("room:s", "stored 3")
        live = [await client.expect("MESSAGE") for _ in range(4)]
        assert sorted(m.headers["subscription"] for m in live) == ["a", "b", "c", "d"]
        assert {m.body for m in live} == {b'"stored 3"'}


async def test_ephemeral_publishes_have_their_own_rate_per_channel(
    hub_factory: Callable[..., Any],
) -> None:
    hub: RunningHub = await hub_factory(
        limits={
            "client_ephemeral_rate": 0.01,
            "client_ephemeral_burst": 3,
            "client_publish_rate": 0.01,
            "client_publish_burst": 2,
        }
    )
    async with hub.ws() as ws:

        async def signal(channel: str) -> str:
            reply = await ws.call("publish", channel=channel, data=1, ephemeral=True)
            return "ok" if "ok" in reply else str(reply["error"]["code"])

        assert [await signal("room:a") for _ in range(4)] == ["ok"] * 3 + ["ephemeral_rate_limited"]
        assert await signal("room:b") == "ok"  # per channel
        # The ordinary budget is untouched by the signals, and the other way round.
        assert "ok" in await ws.call("publish", channel="room:a", data=2)
        assert "ok" in await ws.call("publish", channel="room:a", data=3)
        refused = await ws.call("publish", channel="room:a", data=4)
        assert refused["error"]["code"] == "rate_limited"
        assert await signal("room:b") == "ok"
    async with hub.http() as http:
        codes = []
        for _ in range(4):
            r = await http.post(
                "/client/publish", json={"channel": "room:c", "data": 1, "ephemeral": True}
            )
            codes.append(r.status_code if r.status_code == 200 else r.json()["error"]["code"])
        assert codes == [200, 200, 200, "ephemeral_rate_limited"]
    async with stomp(hub) as client:
        await client.connect()
        for _ in range(3):
            await client.send(
                "SEND", "1", destination="/topic/room:d", receipt="r", x_ephemeral="true"
            )
            await client.expect("RECEIPT")
        await client.send("SEND", "1", destination="/topic/room:d", x_ephemeral="true")
        error = await client.expect("ERROR")
        assert error.headers["x-code"] == "ephemeral_rate_limited"
        assert error.headers["x-close-code"] == "4505" and await client.closed() == 4505


async def test_the_python_client_sends_and_receives_signals(nodes: Callable[..., Any]) -> None:
    writer: RunningHub = await nodes()
    reader: RunningHub = await nodes()
    for transport in ("ws", "sse", "poll"):
        channel = f"room:py-{transport}"
        async with (
            connect(reader.http_url, transport=transport) as client,
            connect(writer.http_url, transport=transport) as publisher,
            client.subscribe(channel) as sub,
        ):
            stored = await publisher.publish(channel, "stored")
            assert (await asyncio.wait_for(anext(sub), timeout(10))).offset == stored.offset
            cursor = sub.cursor
            # A poll sees the signals that come while it waits: send until one arrives.
            got = None
            for _ in range(100):
                sent = await publisher.publish(channel, {"x": 1}, ephemeral=True, key="me")
                assert sent.ephemeral and sent.cursor is None and sent.offset == 0
                try:
                    got = await asyncio.wait_for(anext(sub), 0.2)
                    break
                except TimeoutError:
                    continue
            assert got is not None, transport
            assert (got.ephemeral, got.key, got.data) == (True, "me", {"x": 1}), transport
            assert got.cursor == cursor and sub.cursor == cursor, transport
            after = await publisher.publish(channel, "stored again")
            assert after.offset == stored.offset + 1
            while (message := await asyncio.wait_for(anext(sub), timeout(10))).ephemeral:
                pass
            assert message.offset == after.offset and sub.cursor == after.cursor, transport


async def test_signals_over_many_channels_share_one_total(
    hub_factory: Callable[..., Any],
) -> None:
    """Each channel's bucket comes back full once the hub has forgotten it among many: one
    connection sent 1,700 signals a second into one channel so, against 60. All its channels
    together now take four channels' worth."""
    rate, burst = 0.01, 5
    hub: RunningHub = await hub_factory(
        limits={
            "client_ephemeral_rate": rate,
            "client_ephemeral_burst": burst,
            "max_subscriptions_per_connection": 4,
        }
    )
    accepted: dict[str, int] = {}
    async with hub.ws() as ws:
        for _ in range(6):  # the victim's burst, then enough others to make it forgotten
            for channel in ["room:victim"] * burst + [f"room:o{n}" for n in range(5)]:
                reply = await ws.call("publish", channel=channel, data=1, ephemeral=True)
                if "ok" in reply:
                    accepted[channel] = accepted.get(channel, 0) + 1
                elif reply["error"]["code"] != "ephemeral_rate_limited":
                    raise AssertionError(reply)
    assert sum(accepted.values()) == 4 * burst  # the total's burst, and nothing more


async def test_signals_over_http_to_many_channels_share_one_total(
    hub_factory: Callable[..., Any],
) -> None:
    """``/client/publish`` gives a client the budgets of one connection: its signals to
    channels it names afresh at every request stop at the total, not at one burst per
    channel (6,000 signals to 100 channels went through before)."""
    rate, burst = 0.01, 5
    hub: RunningHub = await hub_factory(
        limits={"client_ephemeral_rate": rate, "client_ephemeral_burst": burst}
    )
    codes: list[int | str] = []
    async with hub.http() as http:
        for n in range(30):
            for _ in range(2):
                r = await http.post(
                    "/client/publish", json={"channel": f"room:h{n}", "data": 1, "ephemeral": True}
                )
                codes.append(r.status_code if r.status_code == 200 else r.json()["error"]["code"])
    assert codes.count(200) == 4 * burst
    assert codes.count("ephemeral_rate_limited") == len(codes) - 4 * burst


async def test_a_stalled_subscriber_keeps_the_latest_signal_per_key(
    nodes: Callable[..., Any],
) -> None:
    settings: dict[str, Any] = {
        "limits": {
            "send_queue_bytes": 32 * 1024 * 1024,
            "client_ephemeral_rate": 100_000,
            "client_ephemeral_burst": 100_000,
        },
        "namespaces": {"cur": {"history_size": 4}},
    }
    writer: RunningHub = await nodes(**settings)
    reader: RunningHub = await nodes(**settings)
    # A reader that stops reading: the client takes no frame off the socket once one waits.
    async with websockets.connect(reader.ws_url, subprotocols=["clarion.v1"], **STALLED) as conn:
        small_receive_buffer(conn)
        await conn.send(json.dumps({"id": 1, "op": "subscribe", "channel": "cur:doc"}))
        assert "ok" in json.loads(await asyncio.wait_for(conn.recv(), timeout(5)))
        session = next(s for s in reader.hub.sessions.values() if "cur:doc" in s.subscriptions)
        await fill_until_behind(writer, session)
        # 1,000 cursor signals from 10 keys while it is behind.
        signals_before = reader.hub.stats.signals
        async with writer.ws() as publisher:
            for i in range(1000):
                signal = {"op": "publish", "channel": "cur:doc", "ephemeral": True}
                await publisher.send({**signal, "id": i, "data": {"i": i}, "key": f"k{i % 10}"})
            replies = [await publisher.recv() for _ in range(1000)]
            assert all(r.get("ok") == {"ephemeral": True} for r in replies)
        await writer.publish("cur:doc", "done")
        # Every signal is at the reader's node (through pub/sub, on Redis) before it reads.
        await until(lambda: reader.hub.stats.signals >= signals_before + 1000, wait=20)
        assert not session.closed  # held signals stay within the send budget
        # It reads again: every stored publication, and the newest signal of each key.
        signals: list[dict[str, Any]] = []
        done = False
        while not (done and len(signals) >= 10):
            msg = json.loads(await asyncio.wait_for(conn.recv(), timeout(20)))
            if msg.get("ephemeral"):
                signals.append(msg)
            elif msg.get("data") == "done":
                done = True
        with pytest.raises(asyncio.TimeoutError):
            more = json.loads(await asyncio.wait_for(conn.recv(), 0.5))
            raise AssertionError(f"more than the latest per key: {more}")
    assert sorted((s["key"], s["data"]["i"]) for s in signals) == [
        (f"k{k}", 990 + k) for k in range(10)
    ]


async def test_a_stalled_stomp_subscriber_keeps_the_latest_signal_per_key(
    nodes: Callable[..., Any],
) -> None:
    settings: dict[str, Any] = {
        "limits": {
            "send_queue_bytes": 32 * 1024 * 1024,
            "client_ephemeral_rate": 100_000,
            "client_ephemeral_burst": 100_000,
        },
        "namespaces": {"cur": {"history_size": 4}},
    }
    writer: RunningHub = await nodes(**settings)
    reader: RunningHub = await nodes(**settings)
    async with stomp_reader(reader.port) as conn:
        session = next(s for s in reader.hub.sessions.values() if "cur:doc" in s.subscriptions)
        await fill_until_behind(writer, session)
        signals_before = reader.hub.stats.signals
        async with writer.ws() as publisher:
            for i in range(1000):
                signal = {"op": "publish", "channel": "cur:doc", "ephemeral": True}
                await publisher.send({**signal, "id": i, "data": {"i": i}, "key": f"k{i % 10}"})
            replies = [await publisher.recv() for _ in range(1000)]
            assert all(r.get("ok") == {"ephemeral": True} for r in replies)
        await writer.publish("cur:doc", "done")
        # Every signal is at the reader's node (through pub/sub, on Redis) before it reads.
        await until(lambda: reader.hub.stats.signals >= signals_before + 1000, wait=20)
        signals: list[tuple[str, int]] = []
        done = False
        while not (done and len(signals) >= 10):
            for got in await stomp_frames(conn, 20):
                if got.headers.get("x-ephemeral") == "true":
                    signals.append((got.headers["x-key"], got.json()["i"]))
                elif got.body == b'"done"':
                    done = True
        with pytest.raises(asyncio.TimeoutError):
            more = await asyncio.wait_for(conn.recv(), 0.5)
            raise AssertionError(f"more than the latest per key: {more!r}")
    assert sorted(signals) == [(f"k{k}", 990 + k) for k in range(10)]


async def stomp_frames(conn: Any, wait: float = 5) -> list[Received]:
    raw = await asyncio.wait_for(conn.recv(), timeout(wait))
    return parse(raw.encode() if isinstance(raw, str) else raw)


SIGNAL_EVENT = re.compile(rb'"data":\{"i":(\d+)\},"time":\d+,"key":"(k\d)"')


@pytest.mark.parametrize("channels", [["cur:doc"], ["cur:doc", "cur:other"]])
async def test_a_stalled_sse_stream_keeps_the_latest_signal_per_key(
    nodes: Callable[..., Any], channels: list[str]
) -> None:
    settings: dict[str, Any] = {
        "limits": {"send_queue_bytes": 32 * 1024 * 1024},
        "namespaces": {"cur": {"history_size": 4}},
    }
    writer: RunningHub = await nodes(**settings)
    reader: RunningHub = await nodes(**settings)
    # A reader that reads the response head, then nothing until told.
    stream_reader, stream_writer = await asyncio.open_connection("127.0.0.1", reader.port)
    try:
        query = "&".join(f"channel={c}" for c in channels)
        stream_writer.write(f"GET /sse?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(stream_reader.readuntil(b"\r\n\r\n"), timeout(5))
        assert head.startswith(b"HTTP/1.1 200"), head
        await until(lambda: any("cur:doc" in s.subscriptions for s in reader.hub.sessions.values()))
        session = next(s for s in reader.hub.sessions.values() if "cur:doc" in s.subscriptions)
        await fill_until_behind(writer, session)
        signals_before = reader.hub.stats.signals
        for i in range(1000):
            await writer.hub.publish("cur:doc", {"i": i}, ephemeral=True, key=f"k{i % 10}")
        await writer.publish("cur:doc", "done")
        # Every signal is at the reader's node (through pub/sub, on Redis) before it reads.
        await until(lambda: reader.hub.stats.signals >= signals_before + 1000, wait=20)
        received = b""
        while b'"data":"done"' not in received or len(SIGNAL_EVENT.findall(received)) < 10:
            received += await asyncio.wait_for(stream_reader.read(1 << 20), timeout(20))
        with pytest.raises(asyncio.TimeoutError):
            more = await asyncio.wait_for(stream_reader.read(1 << 20), 0.5)
            received += more
            raise AssertionError(f"more than the latest per key: {more[:200]!r}")
    finally:
        stream_writer.close()
    got = sorted((key.decode(), int(i)) for i, key in SIGNAL_EVENT.findall(received))
    assert got == [(f"k{k}", 990 + k) for k in range(10)]


def small_receive_buffer(conn: Any) -> None:
    """Cap the reader's socket buffer: once it stops reading, what the hub sends waits on the
    hub's side within a test's time, whichever server writes it (the kernel would otherwise take
    megabytes first). The reader does not offer compression either: the filler would shrink to
    almost nothing on a server that compresses (uvicorn does by default)."""
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)


# A client that takes no frame off its socket once one waits (a reader that stops reading).
STALLED: dict[str, Any] = {
    "max_queue": 1,
    "max_size": None,
    "ping_interval": None,
    "compression": None,
}


@asynccontextmanager
async def stomp_reader(port: int) -> AsyncIterator[Any]:
    """A STOMP connection subscribed to ``cur:doc`` that reads only when asked, with a small
    receive buffer: the hub falls behind on it at once."""
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/stomp", subprotocols=[Subprotocol("v12.stomp")], **STALLED
    ) as conn:
        small_receive_buffer(conn)
        await conn.send(frame("CONNECT", accept_version="1.2", host="clarion").decode())
        assert (await stomp_frames(conn))[0].command == "CONNECTED"
        subscribe = frame("SUBSCRIBE", id="s", destination="/topic/cur:doc", receipt="r")
        await conn.send(subscribe.decode())
        assert (await stomp_frames(conn))[0].command == "RECEIPT"
        yield conn


async def fill_until_behind(writer: RunningHub, session: Any) -> None:
    """Stored publications on ``cur:doc`` until what the hub sent ``session`` waits in the
    hub's buffer (its reader does not read)."""
    stored = 0
    while not await behind(session):
        assert stored < 512, "the reader never fell behind"
        for _ in range(16):
            await writer.publish("cur:doc", "x" * 32_000)
        stored += 16


async def behind(session: Any) -> bool:
    """Whether what the hub wrote to ``session`` waits in its socket's buffer: what a flush
    left there, well past what the kernel might still take as its buffers grow."""
    await asyncio.sleep(0.05)  # the iteration's writes are flushed
    backlog: int = session.transport.backlog()
    return backlog > 256 * 1024
