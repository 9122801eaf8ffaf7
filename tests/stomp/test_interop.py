"""Real STOMP clients against a hub on loopback: ``@stomp/stompjs`` (Node, ``ws``) and ``stomp.py``.

Both do the same round trip: connect with a token, subscribe, receive a publication made through
the HTTP API, send and receive their own message with a receipt, keep heart-beats going, resume
with ``x-since`` after the connection is gone, and get an ``ERROR`` for a wrong token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from clarion import Settings, mint_token

from ..conftest import RunningHub, timeout
from .interop import Listener, node_project, run_node

SECRET = "interop-secret-long-enough-for-hs256-keys"


@pytest.fixture
async def secure(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(
        Settings(
            token_secret=SECRET,
            api_key="k",
            # stomp.py's WebSocket client sends the Origin of the URL it connects to.
            allowed_origins=["http://127.0.0.1:*"],
            limits={"ping_interval": 0.5, "pong_timeout": 1.5, "stomp_min_heart_beat": 0.5},
        )
    )
    return running


def token(user: str = "js") -> str:
    return mint_token(SECRET, user, ["chat:*"], publish=["chat:*"])


async def test_stompjs(secure: RunningHub) -> None:
    project = node_project()
    bad = mint_token("not-the-secret-but-long-enough-for-hs256", "x", ["*"])
    report = await run_node(project / "interop.mjs", secure.http_url, token(), bad, "k")
    assert report["version"] == "1.2"
    assert report["server"].startswith("clarion/")
    assert report["heartBeat"] == "500,500"
    assert report["user"] == "js"
    api = report["fromApi"]
    assert api["body"] == {"text": "from the API"}
    assert api["messageId"] == api["expectedId"]
    assert api["destination"] == "/topic/chat:lobby"  # sent as chat\c..., unescaped by stompjs
    assert api["contentType"] == "application/json"
    own = report["own"]
    assert own["body"] == {"text": "from stompjs"} and own["receiptCursor"] == own["messageId"]
    assert report["heartBeatsReceived"] >= 2 and report["heartBeatLost"] is False
    assert report["resumed"] == ["missed 1", "missed 2"]
    assert report["wrongToken"]["message"] == "invalid token: Signature verification failed"
    assert report["wrongToken"]["closeCode"] == 4500


def _connection(port: int, **kw: Any) -> Any:
    import stomp

    return stomp.WSStompConnection(
        [("127.0.0.1", port)], ws_path="/stomp", heartbeats=(500, 500), **kw
    )


def _stomp_py_round_trip(port: int, publish: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The blocking stomp.py side, run in a thread."""
    seen: dict[str, Any] = {}
    conn = _connection(port)
    listener = Listener()
    conn.set_listener("", listener)
    conn.connect(passcode=token("py"), wait=True, headers={"host": "clarion"})
    conn.subscribe("/topic/chat:py", id="s1", headers={"receipt": "sub"})
    listener.wait_for(lambda: "sub" in listener.receipts, "the SUBSCRIBE receipt")
    published = publish({"from": "api"})
    listener.wait_for(lambda: len(listener.messages) == 1, "the API's message")
    first = listener.messages[0]
    seen["api"] = (json.loads(first.body), first.headers["message-id"] == published["cursor"])
    seen["destination"] = first.headers["destination"]
    conn.send("/topic/chat:py", json.dumps({"from": "py"}), content_type="application/json",
              headers={"receipt": "send"})  # fmt: skip
    listener.wait_for(lambda: len(listener.messages) == 2 and "send" in listener.receipts, "own")
    own = listener.messages[1]
    seen["own"] = json.loads(own.body)
    seen["receipt_cursor"] = listener.receipts["send"]["x-cursor"] == own.headers["message-id"]
    time.sleep(1.5)  # several heart-beat periods
    seen["heart_beats"] = listener.heart_beats
    seen["connected"] = conn.is_connected()
    last = own.headers["message-id"]
    conn.disconnect(receipt="bye")
    # stomp.py marks itself disconnected (which ends disconnect()) before it hands the RECEIPT
    # to its listeners, on its receiving thread: the receipt may still be on its way here.
    with listener.lock:
        seen["bye"] = listener.lock.wait_for(lambda: "bye" in listener.receipts, timeout(5))

    publish("missed 1")
    publish("missed 2")
    again = _connection(port)
    resumed = Listener()
    again.set_listener("", resumed)
    again.connect(passcode=token("py"), wait=True)
    again.subscribe("/topic/chat:py", id="s1", headers={"x-since": last})
    resumed.wait_for(lambda: len(resumed.messages) == 2, "the resumed messages")
    seen["resumed"] = [json.loads(m.body) for m in resumed.messages]
    again.disconnect()

    refused = _connection(port)
    failing = Listener()
    refused.set_listener("", failing)
    try:
        refused.connect(passcode="wrong", wait=True)
    except Exception as exc:  # stomp.py raises once the hub closes the connection
        seen["refusal"] = type(exc).__name__
    failing.wait_for(lambda: bool(failing.errors), "the ERROR frame")
    seen["error"] = failing.errors[0].headers["message"]
    return seen


async def test_stomp_py(secure: RunningHub) -> None:
    pytest.importorskip("stomp", reason="stomp.py is not installed")
    loop = asyncio.get_running_loop()

    def publish(data: Any) -> dict[str, Any]:
        future = asyncio.run_coroutine_threadsafe(secure.publish("chat:py", data), loop)
        return future.result(timeout(5))

    seen = await asyncio.wait_for(
        asyncio.to_thread(_stomp_py_round_trip, secure.port, publish), timeout(60)
    )
    assert seen["api"] == ({"from": "api"}, True)
    assert seen["destination"] == "/topic/chat:py"
    assert seen["own"] == {"from": "py"} and seen["receipt_cursor"] is True
    assert seen["heart_beats"] >= 2 and seen["connected"] is True
    assert seen["bye"] is True
    assert seen["resumed"] == ["missed 1", "missed 2"]
    assert seen["error"] == (
        "invalid token: not a JWT (three base64url parts, the first two JSON): Not enough segments"
    )


def _stomp_py_at_the_json_endpoint(port: int) -> tuple[str, float]:
    import stomp

    conn = stomp.WSStompConnection([("127.0.0.1", port)], ws_path="/ws")
    began = time.monotonic()
    try:
        conn.connect(passcode=token("py"), wait=True, headers={"host": "clarion"})
    except Exception as exc:
        return type(exc).__name__, time.monotonic() - began
    finally:
        conn.disconnect()
    return "connected", time.monotonic() - began


async def test_a_stomp_client_at_the_json_endpoint_is_told_and_closed(
    secure: RunningHub,
) -> None:
    """It once waited for a CONNECTED frame for ever: the hub answered its CONNECT with a JSON
    error that a STOMP client cannot read, and kept the connection."""
    pytest.importorskip("stomp", reason="stomp.py is not installed")
    outcome, took = await asyncio.wait_for(
        asyncio.to_thread(_stomp_py_at_the_json_endpoint, secure.port), timeout(30)
    )
    assert outcome == "ConnectFailedException" and took < timeout(5)
    # What a client that reads it is told, and how the connection ends.
    import websockets

    async with websockets.connect(secure.ws_url, origin="http://127.0.0.1:1") as ws:
        await ws.send("CONNECT\naccept-version:1.2\nhost:clarion\n\n\x00")
        reply = json.loads(await ws.recv())
        assert "STOMP is served at the hub's /stomp" in reply["error"]["message"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:  # the disconnect message, then the close
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4507
