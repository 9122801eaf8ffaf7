"""``connect()`` gives up at ``open_timeout``, not after it: against a port nothing listens on,
one that accepts and never answers, and a proxy that refuses WebSocket and never answers the
health check that would let ``auto`` step down."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from clarion.client import ConnectFailed, Message, Reset, TransportName, connect

from ..conftest import RunningHub, free_port, start_hub, stop_hub, timeout
from .conftest import fixed_backoff, next_item

OPEN_TIMEOUT = 0.5
# A long backoff delay: the deadline comes while the client waits it out (or connects).
BACKOFF = fixed_backoff(5.0)


def _slack() -> float:
    return timeout(0.4)


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound, never listening, for the whole test: every attempt is refused, and no other
    # test's server can take the port meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    # Listening, never accepting: the kernel completes the TCP handshake, nobody answers.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(64)
        yield held.getsockname()[1]


@pytest.fixture
async def no_ws_no_health() -> AsyncIterator[int]:
    """A front that refuses the WebSocket upgrade (403) and never answers anything else."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if b" /ws " in line:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
            else:
                await reader.read()  # until the client gives up
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def _fails_in_time(url: str, transport: TransportName) -> ConnectFailed:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectFailed) as caught:
        async with connect(url, transport=transport, open_timeout=OPEN_TIMEOUT, backoff=BACKOFF):
            pass  # pragma: no cover
    took = loop.time() - started
    assert OPEN_TIMEOUT - 0.05 <= took < OPEN_TIMEOUT + _slack(), took
    return caught.value


@pytest.mark.parametrize("transport", ["ws", "auto"])
async def test_a_closed_port_fails_at_the_deadline(
    closed_port: int, transport: TransportName
) -> None:
    failed = await _fails_in_time(f"http://127.0.0.1:{closed_port}", transport)
    assert f"within {OPEN_TIMEOUT} s" in str(failed) and "connection refused" in str(failed)


@pytest.mark.parametrize("transport", ["ws", "auto"])
async def test_a_port_that_never_answers_fails_at_the_deadline(
    silent_port: int, transport: TransportName
) -> None:
    await _fails_in_time(f"http://127.0.0.1:{silent_port}", transport)


async def test_auto_stepping_down_keeps_the_deadline(no_ws_no_health: int) -> None:
    failed = await _fails_in_time(f"http://127.0.0.1:{no_ws_no_health}", "auto")
    assert "refused the WebSocket upgrade" in str(failed) and "HTTP 403" in str(failed)


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_sse_and_polling_open_nothing_at_connect(
    closed_port: int, transport: TransportName
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with connect(
        f"http://127.0.0.1:{closed_port}", transport=transport, open_timeout=OPEN_TIMEOUT
    ) as client:
        assert client.transport == transport
    assert loop.time() - started < _slack()


@pytest.mark.parametrize("transport", ["sse", "poll"])
@pytest.mark.parametrize("port", ["closed_port", "silent_port"])
async def test_sse_and_polling_give_up_the_first_stream_at_the_deadline(
    port: str, transport: TransportName, request: pytest.FixtureRequest
) -> None:
    url = f"http://127.0.0.1:{request.getfixturevalue(port)}"
    loop = asyncio.get_running_loop()
    async with connect(url, transport=transport, open_timeout=OPEN_TIMEOUT, backoff=BACKOFF) as c:
        for _ in range(2):  # and a later subscription tries afresh
            started = loop.time()
            sub = c.subscribe("chat:lobby")
            with pytest.raises(ConnectFailed) as caught:
                await sub.ready()
            took = loop.time() - started
            assert OPEN_TIMEOUT - 0.05 <= took < OPEN_TIMEOUT + _slack(), took
            assert f"within {OPEN_TIMEOUT} s" in str(caught.value)
            with pytest.raises(ConnectFailed):
                await next_item(sub)


async def test_a_backend_s_first_subscription_keeps_the_deadline(silent_port: int) -> None:
    # With an API key the WebSocket opens at the first subscription: the same deadline.
    loop = asyncio.get_running_loop()
    async with connect(
        f"http://127.0.0.1:{silent_port}",
        api_key="k",
        transport="ws",
        open_timeout=OPEN_TIMEOUT,
        backoff=BACKOFF,
    ) as client:
        started = loop.time()
        with pytest.raises(ConnectFailed):
            await next_item(client.subscribe("chat:lobby"))
        took = loop.time() - started
        assert OPEN_TIMEOUT - 0.05 <= took < OPEN_TIMEOUT + _slack(), took
        closing = loop.time()
    assert loop.time() - closing < _slack()


async def test_tls_to_a_hub_without_it_says_so(hub: RunningHub) -> None:
    """The TLS library's error code is no OS errno: it once read "operation not permitted"."""
    failed = await _fails_in_time(f"https://127.0.0.1:{hub.port}", "ws")
    assert "the hub does not speak TLS on that port" in str(failed), failed


@pytest.mark.parametrize(
    ("transport", "away"),
    # Past the default open_timeout (10 s) on the WebSocket's path and the shared stream's.
    [("ws", OPEN_TIMEOUT * 3), ("auto", 10.5), ("sse", 10.5), ("poll", OPEN_TIMEOUT * 3)],
)
async def test_without_an_open_timeout_the_client_waits_for_the_hub(
    transport: TransportName, away: float
) -> None:
    # open_timeout=None: no deadline for the first connection. Nothing listens for longer
    # than a deadline would allow, then a hub starts there and the subscription is served.
    port = free_port()
    subscribed = asyncio.Event()

    async def first_item() -> Message | Reset:
        url = f"http://127.0.0.1:{port}"
        backoff = fixed_backoff(0.1)
        async with connect(url, transport=transport, open_timeout=None, backoff=backoff) as c:
            sub = c.subscribe("chat:lobby")
            await sub.ready()
            subscribed.set()
            return await next_item(sub)

    waiting = asyncio.create_task(first_item())
    await asyncio.sleep(away)
    assert not waiting.done()
    hub = await start_hub(port=port)
    try:
        await asyncio.wait_for(subscribed.wait(), timeout(10))
        await hub.publish("chat:lobby", {"n": 1})
        item = await asyncio.wait_for(waiting, timeout(10))
        assert isinstance(item, Message) and item.publication.data == {"n": 1}, item
    finally:
        waiting.cancel()
        await stop_hub(hub)


def test_an_open_timeout_is_positive_or_none() -> None:
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeouts must be positive"):
            connect("http://127.0.0.1:1", open_timeout=bad)
