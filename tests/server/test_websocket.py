"""WebSocket through the standard ASGI path, driven by the ``websockets`` client library."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from clarion.server import ClientDisconnected

from .helpers import TIMEOUT, connect, get, read_response, request


def open_ws(port: int, path: str = "/ws", **kw: Any) -> Any:
    kw.setdefault("proxy", None)
    kw.setdefault("open_timeout", TIMEOUT)
    kw.setdefault("close_timeout", 1)
    return ws_connect(f"ws://127.0.0.1:{port}{path}", **kw)


async def recv(ws: ClientConnection) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Wait for the server to close ``ws``; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            await recv(ws)
    return ws.close_code, ws.close_reason


class Recorder:
    """An echo app that records what it received."""

    def __init__(self) -> None:
        self.scopes: list[Any] = []
        self.messages: list[Any] = []
        self.ended = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("websocket only")
        self.scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        try:
            while True:
                message = await receive()
                self.messages.append(message)
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await send({"type": "websocket.send", "text": message["text"]})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
        finally:
            self.ended.set()


async def test_echo_text_and_binary(start_server: Any) -> None:
    app = Recorder()
    server = await start_server(app, max_message_bytes=1 << 17)
    async with open_ws(server.port, "/ws?room=1") as ws:
        await ws.send("héllo")
        assert await recv(ws) == "héllo"
        await ws.send(b"\x00\x01\xff")
        assert await recv(ws) == b"\x00\x01\xff"
        await ws.send(["frag", "mented"])  # one message in three frames (two + empty final)
        assert await recv(ws) == "fragmented"
        await ws.send("x" * 65000)  # a 16-bit length frame
        assert await recv(ws) == "x" * 65000
        await ws.send("y" * 70000)  # a 64-bit length frame
        assert await recv(ws) == "y" * 70000
    scope = app.scopes[0]
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/ws"
    assert scope["query_string"] == b"room=1"
    assert scope["asgi"]["version"] == "3.0"
    assert "clarion.fast_websocket" in scope["extensions"]


async def test_client_close_code_reaches_the_app(start_server: Any) -> None:
    app = Recorder()
    server = await start_server(app)
    async with open_ws(server.port) as ws:
        await ws.close(4321, "bye")
    await asyncio.wait_for(app.ended.wait(), TIMEOUT)
    assert app.messages[-1] == {"type": "websocket.disconnect", "code": 4321, "reason": "bye"}


async def test_subprotocol_and_extra_headers(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError
        await receive()
        assert scope["subprotocols"] == ["x.v1", "clarion.v1"]
        await send(
            {"type": "websocket.accept", "subprotocol": "clarion.v1", "headers": [(b"x-n", b"7")]}
        )
        await receive()

    server = await start_server(app)
    async with open_ws(server.port, subprotocols=["x.v1", "clarion.v1"]) as ws:
        assert ws.subprotocol == "clarion.v1"
        assert ws.response is not None
        assert ws.response.headers["x-n"] == "7"


@pytest.mark.parametrize(("behaviour", "status"), [("close", 403), ("return", 403), ("raise", 500)])
async def test_refusing_before_accept_is_an_http_error(
    start_server: Any, behaviour: str, status: int
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError
        await receive()
        if behaviour == "close":
            await send({"type": "websocket.close", "code": 1008})
        elif behaviour == "raise":
            raise ValueError("no")

    server = await start_server(app)
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(server.port):
            pass
    assert refused.value.response.status_code == status


async def test_the_app_may_refuse_the_handshake_with_its_own_response(start_server: Any) -> None:
    # The ASGI denial response extension: status, headers and a body sent in parts.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        headers = [(b"content-type", b"text/plain"), (b"x-why", b"teapot"), (b"connection", b"x")]
        await send({"type": "websocket.http.response.start", "status": 418, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": b"short ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"and stout"})

    server = await start_server(app)
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(server.port):
            pass
    response = refused.value.response
    assert (response.status_code, response.reason_phrase) == (418, "I'm a Teapot")
    assert response.headers["x-why"] == "teapot" and response.headers["connection"] == "close"
    assert response.headers["content-length"] == "15" and response.body == b"short and stout"


async def test_a_refusal_once_begun_is_not_accepted_nor_sent_twice(start_server: Any) -> None:
    refused: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError
        await receive()
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        with pytest.raises(RuntimeError) as caught:
            await send({"type": "websocket.accept"})
        refused.append(str(caught.value))
        await send({"type": "websocket.http.response.body", "body": b"no"})
        with pytest.raises(RuntimeError):  # the response is whole: nothing may follow it
            await send({"type": "websocket.http.response.body", "body": b"more"})
        refused.append("after the end")

    server = await start_server(app)
    with pytest.raises(InvalidStatus) as caught:
        async with open_ws(server.port):
            pass
    assert (caught.value.response.status_code, caught.value.response.body) == (403, b"no")
    assert refused == ["websocket.accept after websocket.http.response.start", "after the end"]


async def test_invalid_handshake_is_refused_without_the_app(start_server: Any) -> None:
    app = Recorder()
    server = await start_server(app)
    raw = b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    response = await request(server.port, raw)  # no Sec-WebSocket-Key
    assert response.status == 400
    assert app.scopes == []


async def test_oversized_message_is_closed_with_1009(start_server: Any) -> None:
    app = Recorder()
    server = await start_server(app, max_message_bytes=1024)
    async with open_ws(server.port, max_size=None) as ws:
        await ws.send("small")
        assert await recv(ws) == "small"
        await ws.send("x" * 2000)
        code, _ = await closed(ws)
    assert code == 1009
    await asyncio.wait_for(app.ended.wait(), TIMEOUT)
    assert app.messages[-1]["code"] == 1009


async def test_oversized_fragmented_message_is_closed_with_1009(start_server: Any) -> None:
    server = await start_server(Recorder(), max_message_bytes=1024)
    async with open_ws(server.port, max_size=None) as ws:
        await ws.send(["x" * 600, "y" * 600])
        code, _ = await closed(ws)
    assert code == 1009


async def test_invalid_utf8_is_closed_with_1007(start_server: Any) -> None:
    server = await start_server(Recorder())
    async with open_ws(server.port) as ws:
        await ws.send(b"\xff\xfe", text=True)
        code, _ = await closed(ws)
    assert code == 1007


async def test_client_ping_is_answered(start_server: Any) -> None:
    server = await start_server(Recorder())
    async with open_ws(server.port) as ws:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, TIMEOUT)


@pytest.mark.parametrize(("ending", "code"), [("return", 1000), ("raise", 1011), ("close", 4000)])
async def test_app_ending_closes_the_websocket(start_server: Any, ending: str, code: int) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "last words"})
        if ending == "raise":
            raise ValueError("boom")
        if ending == "close":
            await send({"type": "websocket.close", "code": 4000, "reason": "done"})

    server = await start_server(app)
    async with open_ws(server.port) as ws:
        assert await recv(ws) == "last words"
        got, reason = await closed(ws)
    assert got == code
    if ending == "close":
        assert reason == "done"


async def test_send_after_the_client_left_raises_an_oserror(start_server: Any) -> None:
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    server = await start_server(app)
    async with open_ws(server.port):
        pass
    assert isinstance(await asyncio.wait_for(outcome, TIMEOUT), ClientDisconnected)


async def test_reading_pauses_while_the_app_does_not_receive(start_server: Any) -> None:
    conns: list[Any] = []
    release = asyncio.Event()
    received: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError
        await receive()
        await send({"type": "websocket.accept"})
        conns.append(scope["extensions"]["clarion.fast_websocket"]["connection"])
        await release.wait()
        while (message := await receive())["type"] == "websocket.receive":
            received.append(message["text"])

    server = await start_server(app)
    async with open_ws(server.port) as ws:
        for i in range(200):
            await ws.send(str(i))
        await asyncio.sleep(0.1)
        assert not conns[0].transport.is_reading()  # backpressure reached the socket
        release.set()
        for _ in range(100):
            if len(received) == 200:
                break
            await asyncio.sleep(0.02)
    assert received == [str(i) for i in range(200)]


async def test_frames_sent_before_accept_are_kept(start_server: Any) -> None:
    app = Recorder()

    async def slow_accept(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.05)
        await app(scope, receive, send)

    server = await start_server(slow_accept)
    reader, writer = await connect(server.port)
    key = base64.b64encode(os.urandom(16))
    frame = Frame(Opcode.TEXT, b"early").serialize(mask=True, extensions=[])
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame
    )
    response = await read_response(reader, head_request=True)
    assert response.status == 101
    echoed = await asyncio.wait_for(reader.readexactly(7), TIMEOUT)
    writer.close()
    assert echoed == b"\x81\x05early"


def masked(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_upgrade_pipelined_behind_a_request_waits_its_turn(start_server: Any) -> None:
    app = Recorder()

    async def mixed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(0.02)
            body = b"plain"
            headers = [(b"content-length", b"5")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        else:
            await app(scope, receive, send)

    server = await start_server(mixed)
    reader, writer = await connect(server.port)
    writer.write(get("/first") + UPGRADE + masked(Opcode.TEXT, b"hi"))
    first = await read_response(reader)
    assert first.body == b"plain"
    switched = await read_response(reader, head_request=True)
    assert switched.status == 101
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"\x81\x02hi"
    writer.close()


async def test_other_upgrades_are_served_as_http_then_closed(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"h1"})

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(get("/", "Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings"))
    response = await read_response(reader)
    assert (response.status, response.body) == (200, b"h1")
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
