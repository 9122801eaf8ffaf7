"""HTTP/1.1 on real sockets: keep-alive, pipelining, bodies, streaming, limits and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from typing import Any

import httptools
import pytest

from clarion.server.cycle import HttpCycle
from clarion.server.http import MAX_QUEUED

from ..conftest import until
from .helpers import (
    connect,
    get,
    read_body,
    read_chunk,
    read_eof,
    read_head,
    read_response,
    request,
    respond,
)


async def echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError("http only")  # how an app says it has no lifespan
    body = await read_body(receive)
    await respond(send, 200, f"{scope['method']} {scope['path']} ".encode() + body)


async def test_keep_alive_serves_two_requests_on_one_socket(start_server: Any) -> None:
    server = await start_server(echo)
    reader, writer = await connect(server.port)
    writer.write(get("/one"))
    first = await read_response(reader)
    writer.write(get("/two"))
    second = await read_response(reader)
    writer.close()
    assert (first.status, first.body) == (200, b"GET /one ")
    assert (second.status, second.body) == (200, b"GET /two ")
    assert b"connection" not in first.headers


async def test_responses_are_not_held_back_by_nagles_algorithm(start_server: Any) -> None:
    # The event loops turn it off on every TCP transport; the server counts on that.
    server = await start_server(echo)
    reader, writer = await connect(server.port)
    (conn,) = await until(lambda: list(server.registry.connections))
    sock = conn.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    writer.write(get("/one"))
    assert (await read_response(reader)).status == 200


async def test_pipelined_requests_run_one_at_a_time_in_order(start_server: Any) -> None:
    running = 0
    most = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal running, most
        if scope["type"] != "http":
            raise RuntimeError
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02 if scope["path"] == "/slow" else 0)
        running -= 1
        await respond(send, 200, scope["path"].encode())

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(get("/slow") + get("/fast") + get("/third"))
    bodies = [(await read_response(reader)).body for _ in range(3)]
    writer.close()
    assert bodies == [b"/slow", b"/fast", b"/third"]
    assert most == 1


async def test_a_long_pipeline_is_parsed_a_bounded_queue_at_a_time(start_server: Any) -> None:
    """Requests pipelined far beyond the queue's bound are all answered, in order, with their
    bodies (declared ones full of line feeds, chunked ones); the server parses no more of them
    than the bound while one is in flight."""
    queued: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        body = await read_body(receive)
        queued.extend(conn.queued for conn in server.registry.connections)
        await asyncio.sleep(0.05 if scope["path"] == "/slow" else 0)
        await respond(send, 200, scope["path"].encode() + b" " + body)

    server = await start_server(app)
    reader, writer = await connect(server.port)
    sent = [get("/slow")]
    for i in range(300):
        if i % 3 == 0:
            sent.append(get(f"/get{i}"))
        elif i % 3 == 1:
            body = b"\n\r\n" * 40 + b"%d" % i
            head = f"POST /len{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
            sent.append(head.encode() + body)
        else:
            chunks = b"2\r\n\n\n\r\n" * 30 + b"%x\r\n%d\r\n0\r\n\r\n" % (len(str(i)), i)
            head = f"POST /chunked{i} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            sent.append(head.encode() + chunks)
    writer.write(b"".join(sent))
    bodies = [(await read_response(reader)).body for _ in range(301)]
    assert bodies[0] == b"/slow "
    for i, body in enumerate(bodies[1:]):
        path, _, rest = body.partition(b" ")
        kind = ("get", "len", "chunked")[i % 3]
        assert path == f"/{kind}{i}".encode()
        if kind == "len":
            assert rest == b"\n\r\n" * 40 + b"%d" % i
        elif kind == "chunked":
            assert rest == b"\n\n" * 30 + b"%d" % i
    assert max(queued) <= MAX_QUEUED, max(queued)
    writer.write(get("/after"))  # the connection is kept, reading again
    assert (await read_response(reader)).body == b"/after "


async def test_a_request_dropped_from_the_queue_is_freed_without_the_collector(
    start_server: Any,
) -> None:
    """A queued request's scope and cycle hold no reference cycle: when its connection ends
    before its turn, reference counting frees them."""
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        await release.wait()  # the requests behind this one stay queued meanwhile
        await respond(send, 200, b"", [(b"content-length", b"0"), (b"connection", b"close")])

    server = await start_server(app)
    reader, writer = await connect(server.port)
    gc.collect()
    gc.disable()
    try:
        writer.write(get("/first") + get("/queued") * 10)
        (conn,) = await until(lambda: list(server.registry.connections))
        await until(lambda: conn.queued == 10)
        release.set()  # answered with "connection: close": the queued ten are dropped
        assert (await read_response(reader)).status == 200
        await until(lambda: not server.registry.connections)

        def alive() -> int:
            # This test's queued requests only: a cycle another test's server left behind in
            # this worker process is not this one's to count.
            return sum(
                isinstance(o, HttpCycle) and (o.scope or {}).get("path") == "/queued"
                for o in gc.get_objects()
            )

        # Freed as the loop lets go of the connection (a few callbacks later, on a loaded
        # machine): with the collector off, a cycle would keep one for ever.
        await until(lambda: alive() == 0)
    finally:
        gc.enable()


async def test_trailers_are_dropped_and_the_headers_stay_the_heads(start_server: Any) -> None:
    seen: list[tuple[list[Any], list[Any]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        before = list(scope["headers"])
        body = await read_body(receive)
        seen.append((before, list(scope["headers"])))
        await respond(send, 200, body)

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(
        b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nAuthorization: Bearer x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
        + get("/next")
    )
    assert (await read_response(reader)).body == b"abc"
    assert (await read_response(reader)).status == 200  # the next request is served as sent
    (before, after), (following, _) = seen
    assert before == after == [(b"host", b"t"), (b"transfer-encoding", b"chunked")]
    assert following == [(b"host", b"test")]


async def test_request_body_is_streamed_to_receive(start_server: Any) -> None:
    messages: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        await respond(send, 200, b"".join(m["body"] for m in messages))

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\nabc")
    await asyncio.sleep(0.05)
    writer.write(b"def")
    await asyncio.sleep(0.05)
    writer.write(b"ghi")
    response = await read_response(reader)
    writer.close()
    assert response.body == b"abcdefghi"
    assert len(messages) >= 2  # arrived in pieces, not buffered whole
    assert [m["more_body"] for m in messages][-1] is False


def echo_recording_calls() -> tuple[Any, list[str]]:
    """The echo app, and the scope types it was called with."""
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])
        await echo(scope, receive, send)

    return app, calls


async def test_declared_body_over_the_cap_is_answered_413_without_the_app(
    start_server: Any,
) -> None:
    app, calls = echo_recording_calls()
    server = await start_server(app, max_body_bytes=10)
    reader, writer = await connect(server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 413
    assert response.headers[b"connection"] == b"close"
    assert await read_eof(reader) == b""
    assert "http" not in calls


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked", b"identity"])
async def test_a_transfer_coding_besides_chunked_is_answered_501(
    start_server: Any, coding: bytes
) -> None:
    """Such a body would reach the app still coded, as if it were plain."""
    app, calls = echo_recording_calls()
    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: %s\r\n\r\n" % coding)
    writer.write(b"2\r\nab\r\n0\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 501 and "http" not in calls
    # Chunked alone is read as ever, in any case.
    reader, writer = await connect(server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n")
    writer.write(b"2\r\nab\r\n0\r\n\r\n")
    assert (await read_response(reader)).body == b"POST / ab"


async def test_streamed_body_over_the_cap_is_answered_413(start_server: Any) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await respond(send, 200, b"too late")

    server = await start_server(app, max_body_bytes=10)
    reader, writer = await connect(server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
    await asyncio.sleep(0.02)
    writer.write(b"6\r\nghijkl\r\n0\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 413
    assert await read_eof(reader) == b""
    assert seen[-1] == "http.disconnect"


async def test_chunked_response_is_flushed_chunk_by_chunk(start_server: Any) -> None:
    client_has_first = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        # The second chunk is only sent once the client has read the first: it was flushed.
        await asyncio.wait_for(client_has_first.wait(), 5)
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(get("/events"))
    head = await read_head(reader)
    assert head.headers[b"transfer-encoding"] == b"chunked"
    assert b"content-length" not in head.headers
    assert await read_chunk(reader) == b"data: 1\n\n"
    client_has_first.set()
    assert await read_chunk(reader) == b"data: 2\n\n"
    assert await read_chunk(reader) == b""
    writer.close()


async def test_headers_of_a_silent_stream_are_sent_at_once(start_server: Any) -> None:
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.wait_for(release.wait(), 5)
        await send({"type": "http.response.body", "body": b""})

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(get())
    head = await read_head(reader)  # before the app sends any body
    release.set()
    assert head.status == 200
    assert await read_chunk(reader) == b""
    writer.close()


async def test_disconnect_reaches_a_streaming_app_at_once(start_server: Any) -> None:
    loop = asyncio.get_running_loop()
    disconnected_at: asyncio.Future[float] = loop.create_future()
    send_error: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: hi\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected_at.set_result(loop.time())
        try:
            await send({"type": "http.response.body", "body": b"late", "more_body": True})
        except OSError as exc:  # ASGI 2.4: send on a closed connection raises an OSError
            send_error.append(exc)

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(get("/sse"))
    await read_head(reader)
    await read_chunk(reader)
    closed_at = loop.time()
    writer.close()
    seen = await asyncio.wait_for(disconnected_at, 2)
    assert seen - closed_at < 0.1
    await asyncio.sleep(0.01)
    assert len(send_error) == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_request_is_answered_400_and_closed(start_server: Any, raw: bytes) -> None:
    server = await start_server(echo)
    reader, writer = await connect(server.port)
    writer.write(raw)
    response = await read_response(reader)
    assert response.status == 400
    assert await read_eof(reader) == b""


async def test_request_head_trickled_past_the_handshake_timeout_is_closed(
    start_server: Any,
) -> None:
    server = await start_server(echo, handshake_timeout=0.3)
    reader, writer = await connect(server.port)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def trickle() -> None:
        writer.write(b"GET / HTTP/1.1\r\n")
        for i in range(400):
            await asyncio.sleep(0.05)
            writer.write(b"X-Slow-%d: 1\r\n" % i)

    trickler = asyncio.create_task(trickle())
    try:
        # Closed, never answered. The client is still writing when the server closes, so its
        # kernel may see a reset rather than the end of the stream: either is the close.
        with contextlib.suppress(ConnectionResetError):
            assert await read_eof(reader) == b""
    finally:
        trickler.cancel()
    # Well before the trickle ends (20 s): the deadline is for the whole head, not per line.
    assert 0.25 < loop.time() - started < 3.0


async def test_silent_connection_is_closed_after_the_handshake_timeout(start_server: Any) -> None:
    server = await start_server(echo, handshake_timeout=0.2)
    reader, _ = await connect(server.port)
    assert await read_eof(reader, timeout=2) == b""


def answering(times: list[float]) -> Any:
    """An app that answers 200, noting the time in ``times`` just before its answer is written.

    The idle timer counts from there: a stall of this process (a loaded machine) between the
    answer and the client's read of it may let the timer run out before that read, and the
    client's own clock would find the connection closed too early.
    """

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        times.append(asyncio.get_running_loop().time())
        await respond(send, 200, b"ok")

    return app


async def test_idle_keep_alive_connection_is_closed(start_server: Any) -> None:
    answered: list[float] = []
    server = await start_server(answering(answered), keepalive_timeout=0.2, handshake_timeout=5)
    reader, writer = await connect(server.port)
    loop = asyncio.get_running_loop()
    writer.write(get())
    assert (await read_response(reader)).status == 200
    assert await read_eof(reader, timeout=2) == b""
    assert loop.time() - answered[-1] > 0.15


async def test_idle_timeout_counts_from_the_last_response(start_server: Any) -> None:
    # The idle timer is not re-armed per request: it finds the connection busy, or idle for
    # less than the timeout, and waits again.
    loop = asyncio.get_running_loop()
    answered: list[float] = []
    server = await start_server(answering(answered), keepalive_timeout=0.3, handshake_timeout=5)
    reader, writer = await connect(server.port)
    first = loop.time()
    while loop.time() - first < 0.6:  # past two timeouts from the first request
        writer.write(get())
        assert (await read_response(reader)).status == 200
        await asyncio.sleep(0.05)
    assert await read_eof(reader, timeout=2) == b""
    assert loop.time() - answered[-1] > 0.2


@pytest.mark.parametrize(
    "raw",
    [
        get("/", *[f"X-H{i}: v" for i in range(10)]),  # too many headers
        get("/", "X-Big: " + "v" * 2000),  # one header too large
        b"GET / HTTP/1.1\r\nX-Endless: " + b"v" * 3000,  # an unfinished header line
    ],
)
async def test_oversized_request_head_is_answered_431(start_server: Any, raw: bytes) -> None:
    server = await start_server(echo, max_headers=8, max_header_bytes=1024)
    response = await request(server.port, raw)
    assert response.status == 431


async def test_app_error_before_the_response_is_a_plain_500(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise ValueError("secret detail")

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(get())
    response = await read_response(reader)
    assert response.status == 500
    assert b"secret" not in response.body and b"Traceback" not in response.body
    assert await read_eof(reader) == b""


async def test_app_error_mid_response_closes_the_connection(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("boom")

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(get())
    await read_head(reader)
    assert await read_chunk(reader) == b"part"
    assert await read_eof(reader) == b""  # no terminating chunk: the client sees the cut


async def test_head_response_has_headers_only(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        await respond(send, 200, b"hello")

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await read_response(reader, head_request=True)
    assert head.headers[b"content-length"] == b"5"
    writer.write(get())  # no stray body bytes in between
    response = await read_response(reader)
    writer.close()
    assert response.body == b"hello"


async def test_http_scope(start_server: Any) -> None:
    scopes: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        scopes.append(scope)
        await respond(send, 204, b"", headers=[])

    server = await start_server(app)
    response = await request(server.port, get("/a%20b/c%2Fd?x=1&y=%20", "X-Custom: Value"))
    assert response.status == 204
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/a b/c/d"
    assert scope["raw_path"] == b"/a%20b/c%2Fd"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == ""
    assert (b"x-custom", b"Value") in [tuple(h) for h in scope["headers"]]
    assert (b"host", b"test") in [tuple(h) for h in scope["headers"]]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", server.port)
    assert scope["state"] == {}


async def test_content_length_from_the_app_is_kept(start_server: Any) -> None:
    server = await start_server(echo)
    response = await request(server.port, get("/x"))
    assert response.headers[b"content-length"] == b"7"
    assert b"transfer-encoding" not in response.headers


async def test_expect_100_continue(start_server: Any) -> None:
    server = await start_server(echo)
    reader, writer = await connect(server.port)
    writer.write(
        b"POST /c HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    interim = await read_head(reader)
    assert interim.status == 100
    writer.write(b"abc")
    response = await read_response(reader)
    writer.close()
    assert response.body == b"POST /c abc"


async def test_http_10_stream_ends_with_the_connection(start_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    response = await read_response(reader)
    assert b"transfer-encoding" not in response.headers
    assert response.body == b"ab"


async def test_a_connection_leaves_nothing_for_the_collector(start_server: Any) -> None:
    """However a connection ends — the client or the server closing, an error, an upgrade to
    WebSocket, a refusal over a cap — what it held is freed by reference counting: a reconnect
    storm of 10,000 clients otherwise leaves the collector a walk over every live object for
    each few hundred of them."""
    from clarion.server.http import HttpProtocol
    from clarion.server.websocket import WebSocketProtocol

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await receive()  # until the client leaves
            return
        await read_body(receive)
        await respond(send, 200, b"ok")

    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: %s\r\n\r\n"
    )
    server = await start_server(app, max_pending_per_ip=4)
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        for _ in range(3):
            reader, writer = await connect(server.port)  # keep-alive, closed by the client
            writer.write(get("/a") + get("/b"))
            assert (await read_response(reader)).status == 200
            assert (await read_response(reader)).status == 200
            writer.close()
            # Closed by the server: asked to, or at a malformed request.
            for raw in (get("/c", "Connection: close"), b"NOT HTTP\r\n\r\n"):
                reader, writer = await connect(server.port)
                writer.write(raw)
                await read_eof(reader)
                writer.close()
            for version in (b"13", b"12"):  # the plain upgrade, and one the library refuses
                reader, writer = await connect(server.port)
                writer.write(upgrade % version)
                head = await read_head(reader)
                assert head.status == (101 if version == b"13" else 400)
                writer.close()
            # Over the cap of connections without a request: the fifth is refused at once.
            idle = [await connect(server.port) for _ in range(5)]
            assert await read_eof(idle[-1][0])
            for _, writer in idle:
                writer.close()
            await until(lambda: not server.registry.connections)
            await asyncio.sleep(0.05)  # the transports' last callbacks
        gc.collect()
        left = sorted(
            type(o).__name__
            for o in gc.garbage
            if isinstance(o, HttpProtocol | WebSocketProtocol | httptools.HttpRequestParser)
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
