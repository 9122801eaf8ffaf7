"""``/stomp`` under another ASGI server (uvicorn): the portable path, without the fast extension."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from clarion import Settings, mint_token

from ..conftest import RunningHub, start_portable_hub, stop_hub
from .client import stomp
from .interop import node_project, run_node

SECRET = "portable-secret-long-enough-for-hs256-keys"
API_KEY = "portable-api-key"


@pytest.fixture
async def portable() -> AsyncIterator[RunningHub]:
    settings = Settings(
        token_secret=SECRET,
        api_key=API_KEY,
        limits={"ping_interval": 0.5, "pong_timeout": 1.5, "stomp_min_heart_beat": 0.5},
    )
    running = await start_portable_hub(settings, mount=False)
    try:
        yield running
    finally:
        await stop_hub(running)


def _token(user: str = "u") -> str:
    return mint_token(SECRET, user, ["chat:*"], publish=["chat:*"])


async def test_round_trip_heart_beats_and_disconnect(portable: RunningHub) -> None:
    async with stomp(portable) as client:
        connected = await client.connect(passcode=_token(), heart_beat="200,200")
        assert connected.headers["heart-beat"] == "500,500"
        await client.send("SUBSCRIBE", id="0", destination="/topic/chat\\cp", ack="client",
                          receipt="r")  # fmt: skip
        await client.expect("RECEIPT")
        published = await portable.publish("chat:p", {"n": 1})
        message = await client.expect("MESSAGE")
        assert message.json() == {"n": 1}
        assert message.headers["message-id"] == message.headers["ack"] == published["cursor"]
        await client.send("SEND", '"mine"', destination="/topic/chat\\cp", receipt="s")
        frames = {(await client.recv()).command for _ in range(2)}
        assert frames == {"MESSAGE", "RECEIPT"}
        beats = 0
        while beats < 2:  # the hub's EOL heart-beats, through websocket.send
            await client.send_raw("\n")
            if (await client.recv(heart_beats=True)).command == "HEARTBEAT":
                beats += 1
        await client.send("DISCONNECT", receipt="bye")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "bye"
        assert await client.closed() == 1000


async def test_errors_close_the_connection(portable: RunningHub) -> None:
    async with stomp(portable) as client:
        await client.connect(passcode=_token())
        await client.send("SEND", "{}", destination="/topic/elsewhere")
        error = await client.expect("ERROR")
        assert error.headers["message"] == (
            "not allowed to publish to 'elsewhere': the token's publish claim does not cover it"
        )
        assert await client.closed() == 4502


async def test_stompjs_under_uvicorn(portable: RunningHub) -> None:
    project = node_project()
    bad = mint_token("not-the-secret-but-long-enough-for-hs256", "x", ["*"])
    report: dict[str, Any] = await run_node(
        project / "interop.mjs", portable.http_url, _token("js"), bad, API_KEY
    )
    assert report["own"]["body"] == {"text": "from stompjs"}
    assert report["resumed"] == ["missed 1", "missed 2"]
    assert report["heartBeatLost"] is False and report["heartBeatsReceived"] >= 2
    assert report["wrongToken"]["closeCode"] == 4500


async def test_bodies_headers_and_several_subscriptions_under_uvicorn(portable: RunningHub) -> None:
    body = b"\x00\xff binary \x00"
    async with stomp(portable) as client:
        await client.connect(passcode=_token())
        for sub_id in ("a", "b"):
            await client.send("SUBSCRIBE", id=sub_id, destination="/topic/chat\\cp",
                              ack="client-individual", receipt=sub_id)  # fmt: skip
            await client.expect("RECEIPT")
        head = (
            "SEND\ndestination:/topic/chat\\cp\ncontent-type:application/x-test\nx-k:v\n"
            f"content-length:{len(body)}\n\n"
        )
        await client.send_raw(head.encode() + body + b"\0")  # a binary WebSocket message
        got = {m.headers["subscription"]: m for m in [await client.recv(), await client.recv()]}
        await client.send_raw("SEND\ndestination:/topic/chat\\cp\n\ntext\0")
        texts = [await client.recv() for _ in range(2)]
    assert {m.body for m in got.values()} == {body}
    assert {m.headers["content-type"] for m in got.values()} == {"application/x-test"}
    assert {m.headers["x-k"] for m in got.values()} == {"v"}
    assert got["a"].headers["ack"] != got["b"].headers["ack"]
    assert [(m.body, "content-type" in m.headers) for m in texts] == [(b"text", False)] * 2
