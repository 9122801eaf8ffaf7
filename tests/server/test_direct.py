"""Direct routes on real sockets: a ``POST`` with its body in hand answered without ASGI, in
order with the ASGI requests around it, and everything unusual left to the app."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from .conftest import BUILT, on_both_loops
from .helpers import TIMEOUT, connect, get, read_eof, read_response, request


@pytest.fixture(params=["compiled", "python"])
def start_server(request: Any, start_server: Any) -> Any:
    """Every test here runs with the compiled reader of whole requests and without it (every
    request through httptools): the answers must be the same."""
    return on_both_loops(request, start_server, "the compiled reader")


class Route:
    """A direct route answering what it was sent; ``wait`` seconds of suspension first (an
    engine on the network), raising on a body of ``b"boom"``."""

    def __init__(self, *, eager: bool = True, wait: float | None = None) -> None:
        self.eager = eager
        self.wait = wait
        self.calls: list[bytes] = []
        self.running = 0
        self.most = 0

    async def respond(self, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
        self.calls.append(body)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.wait is not None:
                await asyncio.sleep(self.wait)
            if body == b"boom":
                raise RuntimeError("boom")
            names = [name.decode() for name, _ in headers]
            return 201, json.dumps({"body": body.decode(), "headers": names}).encode()
        finally:
            self.running -= 1


class App:
    """An ASGI app that says which path reached it, with ``route`` as its direct route."""

    def __init__(self, route: Route) -> None:
        self.direct_routes = {b"/d": route}
        self.asgi: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.asgi.append(f"{scope['method']} {scope['path']}")
        payload = b"asgi " + body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(payload))],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: t", *headers, f"Content-Length: {len(body)}"]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


async def test_a_post_to_a_direct_route_is_answered_by_it(start_server: Any) -> None:
    route = Route()
    app = App(route)
    server = await start_server(app)
    response = await request(server.port, post("/d?q=1", b"hello", "X-Custom: 1"))
    assert response.status == 201
    assert json.loads(response.body) == {
        "body": "hello",
        "headers": ["host", "x-custom", "content-length"],
    }
    assert response.headers[b"content-type"] == b"application/json"
    assert response.headers[b"cache-control"] == b"no-store"
    assert b"date" in response.headers and b"connection" not in response.headers
    assert app.asgi == []


async def test_everything_unusual_goes_to_the_app(start_server: Any) -> None:
    route = Route()
    app = App(route)
    server = await start_server(app, max_body_bytes=100_000)
    chunked = (
        b"POST /d HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert (await request(server.port, chunked)).body == b"asgi abc"
    assert (await request(server.port, get("/d"))).body == b"asgi "
    assert (await request(server.port, post("/e", b"x"))).body == b"asgi x"
    large = b"x" * 70_000
    assert (await request(server.port, post("/d", large))).body == b"asgi " + large
    reader, writer = await connect(server.port)
    writer.write(post("/d", b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 2"))
    assert (await read_response(reader)).status == 100
    writer.write(b"ok")
    assert (await read_response(reader)).body == b"asgi ok"
    assert app.asgi == ["POST /d", "GET /d", "POST /e", "POST /d", "POST /d"]
    assert route.calls == []


async def test_a_body_in_pieces_is_answered_once_whole(start_server: Any) -> None:
    route = Route()
    server = await start_server(App(route))
    reader, writer = await connect(server.port)
    raw = post("/d", b"in two pieces")
    writer.write(raw[:-5])
    await asyncio.sleep(0.05)
    assert route.calls == []
    writer.write(raw[-5:])
    assert json.loads((await read_response(reader)).body)["body"] == "in two pieces"


async def test_pipelined_requests_are_answered_in_order_one_at_a_time(start_server: Any) -> None:
    route = Route(wait=0.01)  # each suspends: the next waits for its answer
    app = App(route)
    server = await start_server(app)
    reader, writer = await connect(server.port)
    writer.write(post("/d", b"1") + get("/asgi") + post("/d", b"2") + post("/d", b"3"))
    bodies = [(await read_response(reader)).body for _ in range(4)]
    assert [json.loads(b)["body"] if b.startswith(b"{") else b.decode() for b in bodies] == [
        "1",
        "asgi ",
        "2",
        "3",
    ]
    assert route.most == 1


async def test_a_long_pipeline_of_direct_requests_is_answered_whole(start_server: Any) -> None:
    route = Route()
    server = await start_server(App(route))
    reader, writer = await connect(server.port)
    # Behind an ASGI request, so that all of them wait in the pipeline and are answered one
    # after the other once it is done.
    writer.write(get("/first") + b"".join(post("/d", b"%d" % i) for i in range(3000)))
    assert (await read_response(reader)).body == b"asgi "
    for i in range(3000):
        assert json.loads((await read_response(reader)).body)["body"] == str(i)


async def test_a_route_that_suspends_or_is_not_eager_still_answers(start_server: Any) -> None:
    for route in (Route(wait=0.01), Route(eager=False)):
        server = await start_server(App(route))
        response = await request(server.port, post("/d", b"later"))
        assert (response.status, json.loads(response.body)["body"]) == (201, "later")


async def test_a_route_that_raises_is_a_plain_500_and_the_connection_ends(
    start_server: Any,
) -> None:
    for route in (Route(), Route(wait=0.01)):
        server = await start_server(App(route))
        reader, writer = await connect(server.port)
        writer.write(post("/d", b"boom"))
        response = await read_response(reader)
        assert response.status == 500 and response.headers[b"connection"] == b"close"
        assert await read_eof(reader) == b""


async def test_connection_close_and_http_10(start_server: Any) -> None:
    server = await start_server(App(Route()))
    closing = await request(server.port, post("/d", b"a", "Connection: close"))
    assert closing.headers[b"connection"] == b"close"
    reader, writer = await connect(server.port)
    writer.write(post("/d", b"b", "Connection: keep-alive", version="1.0"))
    kept = await read_response(reader)
    assert kept.headers[b"connection"] == b"keep-alive"
    writer.write(post("/d", b"c", version="1.0"))
    last = await read_response(reader)
    assert json.loads(last.body)["body"] == "c" and last.headers[b"connection"] == b"close"
    assert await read_eof(reader) == b""


async def test_a_request_behind_one_that_closes_is_not_run(start_server: Any) -> None:
    route = Route()
    server = await start_server(App(route))
    reader, writer = await connect(server.port)
    writer.write(post("/d", b"1", "Connection: close") + post("/d", b"2"))
    assert json.loads((await read_response(reader)).body)["body"] == "1"
    assert await read_eof(reader) == b""
    assert route.calls == [b"1"]


async def test_a_client_that_does_not_read_its_answers_is_not_read_either(
    start_server: Any,
) -> None:
    """Answers a client leaves unread wait in a bounded buffer: the route stops running and
    the connection stops being read, other connections are served meanwhile, and once the
    client reads, every request is answered, in order."""
    route = Route()
    server = await start_server(App(route))
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Small kernel buffers on the client's side, so that what the hub holds shows sooner.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", server.port)), TIMEOUT)
        body = b"x" * 4000
        count = 6000  # 24 MB each way if all were answered: more than any kernel buffers
        requests = b"".join(post("/d", body) for _ in range(count))
        sending: asyncio.Future[None] = asyncio.ensure_future(loop.sock_sendall(sock, requests))
        # The route runs until the unread answers fill the kernel's buffers and the hub's
        # bounded one; then neither the route nor the reading goes on.
        seen = -1
        while len(route.calls) != seen:
            seen = len(route.calls)
            await asyncio.sleep(0.5)
        assert 0 < seen < count
        assert not sending.done()
        # Another client is served meanwhile.
        other = await request(server.port, post("/d", b"other"))
        assert json.loads(other.body)["body"] == "other"
        # Reading the answers lets everything through.
        answers = await read_answers(sock, count)
        assert [status for status, _ in answers] == [201] * count
        await asyncio.wait_for(sending, TIMEOUT)
    finally:
        sock.close()
    assert len(route.calls) == count + 1


async def read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """The statuses and bodies of ``count`` responses of known length read from a non-blocking
    socket."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    answers: list[tuple[int, bytes]] = []
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(data[:end]).lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(data) >= end + 4 + length:
                answers.append((int(head.split(b" ")[1]), bytes(data[end + 4 : end + 4 + length])))
                del data[: end + 4 + length]
                continue
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), TIMEOUT)
        assert chunk, f"closed after {len(answers)} answers"
        data += chunk
    return answers


async def test_answers_to_many_clients_behind_on_reading_arrive_whole_and_in_order(
    start_server: Any,
) -> None:
    """Clients with long pipelines each have an answer in every flush, and read none for a
    while: their sockets fill, a write's rest waits in its transport, reading stops. Every
    answer arrives whole, in order."""
    route = Route()
    server = await start_server(App(route))
    loop = asyncio.get_running_loop()
    clients, count = 4, 2000
    pad = "x" * 3000  # ~6 MB of answers each, more than loopback's buffers hold
    socks = []
    try:
        for _ in range(clients):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", server.port)), TIMEOUT)
            socks.append(sock)
        sending = [
            asyncio.ensure_future(
                loop.sock_sendall(
                    sock,
                    b"".join(post("/d", f"{c} {i} {pad}".encode()) for i in range(count)),
                )
            )
            for c, sock in enumerate(socks)
        ]
        await asyncio.sleep(0.3)  # nobody reads: answers fill the clients' sockets
        for c, sock in enumerate(socks):
            answers = await read_answers(sock, count)
            assert [json.loads(body)["body"] for _, body in answers] == [
                f"{c} {i} {pad}" for i in range(count)
            ]
        await asyncio.wait_for(asyncio.gather(*sending), TIMEOUT)
    finally:
        for sock in socks:
            sock.close()


async def test_requests_written_unusually_are_answered_alike(start_server: Any) -> None:
    """What the compiled reader leaves to httptools (blanks, folds, repeated or special
    headers, a query, limits) is answered as before; what it takes, exactly as httptools'."""
    route = Route()
    app = App(route)
    server = await start_server(app, max_headers=5)
    head = b"POST /d HTTP/1.1\r\n"
    cases = [
        (head + b"X-A:1\r\nContent-Length: 1\r\n\r\na", 201, ["x-a", "content-length"]),
        (head + b"X-A: 1 \r\nContent-Length: 1\r\n\r\nb", 201, ["x-a", "content-length"]),
        (head + b"X-A: 1\r\nX-a: 2\r\nContent-Length: 1\r\n\r\nc", 201, None),
        (head + b"Connection: Keep-Alive\r\nContent-Length: 1\r\n\r\nd", 201, None),
        (head + b"content-length: 01\r\n\r\ne", 201, ["content-length"]),
        (head + b"X-A: 1\r\n 2\r\nContent-Length: 1\r\n\r\nf", 400, None),
        (head + b"X-A: 1\nContent-Length: 1\r\n\r\ng", 400, None),
        (head + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nh", 400, None),
        (head + b"X-A: \x01\r\nContent-Length: 1\r\n\r\ni", 400, None),
        (
            head + b"".join(b"X-%d: 1\r\n" % n for n in range(5)) + b"Content-Length: 1\r\n\r\nj",
            431,
            None,
        ),
    ]
    for raw, status, names in cases:
        reader, writer = await connect(server.port)
        writer.write(raw)
        response = await read_response(reader)
        assert response.status == status, raw
        if names is not None:
            assert json.loads(response.body)["headers"] == names
    assert [call.decode() for call in route.calls] == ["a", "b", "c", "d", "e"]
    assert app.asgi == []


async def test_requests_in_one_write_and_split_ones_are_answered_in_order(
    start_server: Any,
) -> None:
    route = Route()
    app = App(route)
    server = await start_server(app)
    reader, writer = await connect(server.port)
    stream = post("/d", b"1") + post("/d", b"") + post("/d?q", b"2") + post("/d", b"3")
    stream += get("/e") + post("/d", b"4")
    writer.write(stream[:-7])
    await asyncio.sleep(0.05)
    writer.write(stream[-7:])
    answers = [await read_response(reader) for _ in range(6)]
    bodies = [a.body.decode() for a in answers]
    assert [json.loads(b)["body"] for b in bodies if b.startswith("{")] == ["1", "", "2", "3", "4"]
    assert bodies[4] == "asgi "
    assert route.calls == [b"1", b"", b"2", b"3", b"4"]


def test_the_compiled_reader_takes_only_plain_whole_requests() -> None:
    if not BUILT:
        pytest.skip("clarion.server._fastloop is not built (no C compiler at install)")
    from clarion.server._fastloop import whole_direct

    routes = {b"/d": "route"}

    def read(raw: bytes, max_headers: int = 10, max_head: int = 200) -> Any:
        return whole_direct(raw, routes, max_headers, max_head, 10)

    plain = b"POST /d HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    assert read(plain) == ("route", [(b"host", b"t"), (b"content-length", b"3")], 48, 51)
    assert read(plain + b"POST") == read(plain)  # what follows is the next request's
    assert read(plain.replace(b"Host: t", b"hOsT:\t t"))[:2] == read(plain)[:2]
    left = [
        plain[:-1],  # not whole
        plain[:30],
        plain.replace(b"POST", b"PUT "),
        plain.replace(b"/d", b"/e"),
        plain.replace(b"/d", b"/d?q"),
        plain.replace(b"1.1", b"1.0"),
        plain.replace(b"Host: t", b"Host: t "),  # a trailing blank
        plain.replace(b"Host: t", b"Host:"),  # an empty value
        plain.replace(b"Host: t", b"Ho st: t"),
        plain.replace(b"Host: t", b"Host: t\x7f"),
        plain.replace(b"Host: t\r\n", b"Host: t\n"),
        plain.replace(b"Host: t", b"Host: t\r\n u"),  # a folded line
        plain.replace(b"Host: t", b"Content-Length: 3"),  # twice
        plain.replace(b": 3", b": 3x"),
        plain.replace(b": 3", b": 30"),  # over the body limit
        plain.replace(b"Content-Length: 3", b"X: 3"),  # no length
        plain.replace(b"Host: t", b"Transfer-Encoding: chunked"),
        plain.replace(b"Host: t", b"Expect: 100-continue"),
        plain.replace(b"Host: t", b"Upgrade: h2c"),
        plain.replace(b"Host: t", b"Proxy-Connection: close"),
        plain.replace(b"Host: t", b"Connection: close"),
    ]
    for raw in left:
        assert read(raw) is None, raw
    assert read(plain.replace(b"Host: t", b"Connection: keep-alive")) is not None
    assert read(plain, max_headers=1) is None
    # The head's bytes as the parser's callbacks count them: path, then name + value + 4.
    assert read(plain, max_head=2 + 4 + 1 + 4 + 14 + 1 + 4) is not None
    assert read(plain, max_head=2 + 4 + 1 + 4 + 14 + 1 + 4 - 1) is None


class HeldRoute(Route):
    """A route that suspends until ``release`` is set (an engine waiting on the network)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def respond(self, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
        self.running += 1
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return 201, b"{}"


class CountingRoute(Route):
    """An eager route that notes the connections counted as waiting on their clients right
    after it answered, while its answer waits for the end of the loop iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: Any = None
        self.seen: list[int] = []

    async def respond(self, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
        # Runs after the read callback that answered, before the iteration's flush.
        asyncio.get_running_loop().call_soon(lambda: self.seen.append(self.pending.total))
        return 201, b"{}"


async def test_a_connection_is_the_apps_to_count_only_while_its_route_runs_on(
    start_server: Any,
) -> None:
    """Against ``max_pending_per_ip``: a connection whose request is answered at once waits on
    its client throughout (its answer only waits for the loop iteration's end); one whose
    route suspended is the app's until that route answers."""
    route = CountingRoute()
    server = await start_server(App(route), max_pending_per_ip=2)
    route.pending = server.registry.pending
    kept: list[asyncio.StreamWriter] = []
    reader, writer = await connect(server.port)
    for _ in range(3):
        writer.write(post("/d", b"x"))
        assert (await read_response(reader)).status == 201
    assert route.seen == [1, 1, 1]
    assert [await _admitted(server.port, kept) for _ in range(2)] == [200, 503]

    held = HeldRoute()
    server = await start_server(App(held), max_pending_per_ip=2)
    reader, writer = await connect(server.port)
    writer.write(post("/d", b"x"))
    async with asyncio.timeout(TIMEOUT):
        while held.running == 0:
            await asyncio.sleep(0.005)
    assert server.registry.pending.total == 0
    assert [await _admitted(server.port, kept) for _ in range(2)] == [200, 200]
    held.release.set()
    assert (await read_response(reader)).status == 201
    assert server.registry.pending.total == 3  # counted again once answered, over the cap
    for each in (writer, *kept):
        each.close()


async def _admitted(port: int, kept: list[asyncio.StreamWriter]) -> int:
    """A new connection's answer to a request for the app: 200, or 503 when it was over a cap
    (the server answers that at once and closes). It stays open in ``kept``, waiting on its
    client."""
    reader, writer = await connect(port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    kept.append(writer)
    return (await read_response(reader)).status
