"""Real clients (``@stomp/stompjs`` in Node, ``stomp.py``) on the STOMP 1.2 features beyond a
JSON round trip: heart-beats below the WebSocket ping interval, several subscriptions to one
destination. The raw-frame tests of the same features are in ``test_stomp12.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from clarion import Settings, mint_token

from ..conftest import RunningHub, timeout
from .interop import Listener, node_project, run_node

SECRET = "interop-secret-long-enough-for-hs256-keys"


@pytest.fixture
async def full(hub_factory: Callable[..., Any]) -> RunningHub:
    # Default limits: WebSocket pings every 25 s, STOMP heart-beats down to 1 s.
    running: RunningHub = await hub_factory(
        Settings(token_secret=SECRET, api_key="k", allowed_origins=["http://127.0.0.1:*"])
    )
    return running


def token(user: str = "client") -> str:
    return mint_token(SECRET, user, ["chat:*"], publish=["chat:*"])


async def stompjs(hub: RunningHub, *features: str) -> dict[str, Any]:
    project = node_project()
    return await run_node(project / "stomp12.mjs", hub.http_url, token(), "k", *features)


async def test_stompjs_heart_beats(full: RunningHub) -> None:
    report = (await stompjs(full, "heartbeat"))["heartbeat"]
    assert report["header"] == "1000,25000"
    assert report["beats"] >= 2 and report["lost"] is False


async def test_stompjs_several_subscriptions(full: RunningHub) -> None:
    report = (await stompjs(full, "subscriptions"))["subscriptions"]
    assert report["a"] == {"subscription": "a", "body": '"both"', "ack": None}
    assert report["b"]["subscription"] == "b" and report["b"]["body"] == '"both"'
    assert report["messageIds"] == [report["expectedId"]] * 2
    assert report["b"]["ack"] not in (None, report["expectedId"])  # b's own ack id
    assert report["ackCursor"] == report["expectedId"]
    assert report["afterUnsubscribe"] == {"b": '"only b"', "a": 0}


# ---- stomp.py ------------------------------------------------------------------------------------


def _stomp_py(
    port: int,
    run: Callable[[Any, Listener], Any],
    heartbeats: tuple[int, int] = (0, 0),
    binary: bool = False,
) -> Any:
    import stomp

    # binary: bytes in and out (stomp.py decodes bodies as UTF-8 and sends text WebSocket
    # messages unless told otherwise).
    conn = stomp.WSStompConnection(
        [("127.0.0.1", port)],
        ws_path="/stomp",
        heartbeats=heartbeats,
        auto_decode=not binary,
        binary_mode=binary,
    )
    listener = Listener()
    conn.set_listener("", listener)
    conn.connect(passcode=token("py"), wait=True)
    try:
        return run(conn, listener)
    finally:
        conn.disconnect()


async def in_thread(hub: RunningHub, run: Callable[[Any, Listener], Any], **kw: Any) -> Any:
    pytest.importorskip("stomp", reason="stomp.py is not installed")
    return await asyncio.wait_for(asyncio.to_thread(_stomp_py, hub.port, run, **kw), timeout(60))


def publisher(hub: RunningHub) -> Callable[[str, Any], dict[str, Any]]:
    loop = asyncio.get_running_loop()

    def publish(channel: str, data: Any) -> dict[str, Any]:
        future = asyncio.run_coroutine_threadsafe(hub.publish(channel, data), loop)
        return future.result(timeout(5))

    return publish


async def test_stomp_py_heart_beats(full: RunningHub) -> None:
    def run(conn: Any, listener: Listener) -> tuple[int, bool]:
        time.sleep(3.5)
        return listener.heart_beats, conn.is_connected()

    beats, still = await in_thread(full, run, heartbeats=(1000, 1000))
    assert beats >= 2 and still


async def test_stomp_py_several_subscriptions(full: RunningHub) -> None:
    publish = publisher(full)

    def run(conn: Any, listener: Listener) -> dict[str, Any]:
        conn.subscribe("/topic/chat:twice", id="a", headers={"receipt": "ra"})
        conn.subscribe("/topic/chat:twice", id="b", ack="client", headers={"receipt": "rb"})
        listener.wait_for(lambda: {"ra", "rb"} <= listener.receipts.keys(), "receipts")
        published = publish("chat:twice", {"n": 1})
        listener.wait_for(lambda: len(listener.messages) == 2, "two messages")
        by_sub = {m.headers["subscription"]: m for m in listener.messages}
        conn.ack(by_sub["b"].headers["ack"], receipt="ack")
        listener.wait_for(lambda: "ack" in listener.receipts, "the ACK receipt")
        conn.unsubscribe("b", headers={"receipt": "ub"})
        listener.wait_for(lambda: "ub" in listener.receipts, "the UNSUBSCRIBE receipt")
        publish("chat:twice", {"n": 2})
        listener.wait_for(lambda: len(listener.messages) == 3, "a third message")
        return {
            "subs": sorted(by_sub),
            "ids": {m.headers["message-id"] for m in by_sub.values()} == {published["cursor"]},
            "acked": listener.receipts["ack"]["x-cursor"] == published["cursor"],
            "kept": listener.receipts["ub"]["x-cursor"] == published["cursor"],
            "last": (listener.messages[2].headers["subscription"], listener.messages[2].body),
        }

    seen = await in_thread(full, run)
    assert seen["subs"] == ["a", "b"] and seen["ids"] and seen["acked"] and seen["kept"]
    assert seen["last"] == ("a", '{"n":2}')


async def test_stompjs_transactions(full: RunningHub) -> None:
    report = (await stompjs(full, "transactions"))["transactions"]
    assert report == {"beforeCommit": 0, "bodies": ["1", "2", "3", "4"]}
    history, _ = await full.hub.history("chat:tx")
    # The last SEND had no content-type: its body is carried as text, not as JSON.
    assert [p.data for p in history.publications] == [1, 2, 3, "4"]
    assert [p.attrs for p in history.publications] == [None] * 3 + [{"encoding": "utf-8"}]


async def test_stomp_py_transactions(full: RunningHub) -> None:
    def run(conn: Any, listener: Listener) -> dict[str, Any]:
        conn.subscribe("/topic/chat:tx", id="s", ack="client", headers={"receipt": "rs"})
        listener.wait_for(lambda: "rs" in listener.receipts, "the SUBSCRIBE receipt")
        dropped = conn.begin()
        conn.send("/topic/chat:tx", '"never"', transaction=dropped)
        conn.abort(dropped)
        tx = conn.begin()
        conn.send("/topic/chat:tx", "1", content_type="application/json", transaction=tx)
        conn.send("/topic/chat:tx", "2", content_type="application/json", transaction=tx,
                  headers={"receipt": "held"})  # fmt: skip
        listener.wait_for(lambda: "held" in listener.receipts, "the held SEND's receipt")
        time.sleep(0.3)
        before = len(listener.messages)
        conn.commit(tx, headers={"receipt": "commit"})
        listener.wait_for(lambda: "commit" in listener.receipts, "the COMMIT receipt")
        listener.wait_for(lambda: len(listener.messages) == 2, "the committed messages")
        # An ACK in a transaction moves the acked position only at COMMIT.
        last = listener.messages[-1].headers["ack"]
        ack_tx = conn.begin()
        conn.ack(last, transaction=ack_tx, receipt="held-ack")
        listener.wait_for(lambda: "held-ack" in listener.receipts, "the held ACK's receipt")
        conn.commit(ack_tx)
        conn.unsubscribe("s", headers={"receipt": "u"})
        listener.wait_for(lambda: "u" in listener.receipts, "the UNSUBSCRIBE receipt")
        return {
            "before": before,
            "bodies": [m.body for m in listener.messages],
            "held_ack_cursor": listener.receipts["held-ack"].get("x-cursor"),
            "acked": listener.receipts["u"]["x-cursor"] == last,
        }

    seen = await in_thread(full, run)
    assert seen == {"before": 0, "bodies": ["1", "2"], "held_ack_cursor": None, "acked": True}


async def test_stompjs_user_headers(full: RunningHub) -> None:
    report = (await stompjs(full, "headers"))["headers"]
    assert report == {"trace": "a:b\nc", "priority": "5", "body": '{"n":1}'}


async def test_stomp_py_user_headers(full: RunningHub) -> None:
    def run(conn: Any, listener: Listener) -> dict[str, str]:
        conn.subscribe("/topic/chat:headers", id="s", headers={"receipt": "rs"})
        listener.wait_for(lambda: "rs" in listener.receipts, "the SUBSCRIBE receipt")
        conn.send("/topic/chat:headers", "[1]", content_type="application/json",
                  headers={"x-trace": "a:b\nc", "priority": "5"})  # fmt: skip
        listener.wait_for(lambda: len(listener.messages) == 1, "the message")
        message = listener.messages[0]
        return {k: message.headers[k] for k in ("x-trace", "priority")}

    assert await in_thread(full, run) == {"x-trace": "a:b\nc", "priority": "5"}


@pytest.fixture
async def roomy(hub_factory: Callable[..., Any]) -> RunningHub:
    # Frames of 100 KiB and more: the limit is max_message_bytes, counted in bytes.
    running: RunningHub = await hub_factory(
        Settings(
            token_secret=SECRET,
            api_key="k",
            allowed_origins=["http://127.0.0.1:*"],
            limits={"max_message_bytes": 256 * 1024},
        )
    )
    return running


async def test_stompjs_bodies(roomy: RunningHub) -> None:
    report = (await stompjs(roomy, "bodies"))["bodies"]
    assert report == {
        "binary": [0, 1, 2, 255, 0, 128, 10, 0],
        "binaryType": "application/octet-stream",
        "text": "plain text, not JSON",
        "textType": "text/plain",
        "large": True,
        "largeType": None,
    }
    history, _ = await roomy.hub.history("chat:bodies")
    assert history.publications[0].to_dict()["data"] == "AAEC/wCACgA="


async def test_stomp_py_bodies(roomy: RunningHub) -> None:
    def run(conn: Any, listener: Listener) -> list[tuple[Any, Any]]:
        conn.subscribe("/topic/chat:bodies", id="s", headers={"receipt": "rs"})
        listener.wait_for(lambda: "rs" in listener.receipts, "the SUBSCRIBE receipt")
        conn.send("/topic/chat:bodies", b"\x00\xff\x00 bytes", content_type="image/x-raw")
        conn.send("/topic/chat:bodies", "text: ü", content_type="text/plain; charset=utf-8")
        conn.send("/topic/chat:bodies", "y" * 100_000)
        listener.wait_for(lambda: len(listener.messages) == 3, "the messages")
        return [(m.body, m.headers.get("content-type")) for m in listener.messages]

    got = await in_thread(roomy, run, binary=True)
    assert got == [
        (b"\x00\xff\x00 bytes", "image/x-raw"),
        ("text: ü".encode(), "text/plain; charset=utf-8"),
        (b"y" * 100_000, None),
    ]
