"""An answer given while the request's body is still arriving reaches the client.

Closing a socket that holds unread bytes sends a reset, and a reset can overtake the answer:
the client would see its connection fail instead of a 413. The server sends its end of the
stream after the answer and reads what still comes, for ``LINGER`` seconds at most. Each case
sends a body of megabytes from a thread with a plain blocking socket, as any client would, and
only then reads.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest

from clarion.server import http

from ..conftest import timeout, until
from .helpers import read_body, respond

BODY = 4 * 1024 * 1024
PIECE = b"x" * 65536


def exchange(port: int, head: bytes, body: int = BODY, chunked: bool = False) -> tuple[bytes, str]:
    """Send ``head`` and ``body`` bytes of body whatever happens, then read to the end: what
    was read, and the first socket error met ("" for none)."""
    error = ""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout(20)) as sock:
        try:
            sock.sendall(head)
            for _ in range(body // len(PIECE)):
                if chunked:
                    sock.sendall(b"%x\r\n" % len(PIECE) + PIECE + b"\r\n")
                else:
                    sock.sendall(PIECE)
        except OSError as exc:
            error = repr(exc)
        answer = b""
        try:
            while piece := sock.recv(65536):
                answer += piece
        except OSError as exc:
            error = error or repr(exc)
    return answer, error


async def echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await respond(send, 200, await read_body(receive))


async def early(scope: Any, receive: Any, send: Any) -> None:
    """Answers without reading the body, as an endpoint that refuses a request may."""
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await respond(send, 403, b"refused before the body")


CASES = {
    "declared over the cap": (
        echo,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % BODY,
        False,
        b"HTTP/1.1 413 ",
    ),
    "chunked over the cap": (
        echo,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
        True,
        b"HTTP/1.1 413 ",
    ),
    "malformed chunks": (
        echo,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        False,
        b"HTTP/1.1 400 ",
    ),
    "answered before the body": (
        early,
        b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % BODY,
        False,
        b"HTTP/1.1 403 ",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_answer_reaches_a_client_still_sending(start_server: Any, case: str) -> None:
    app, head, chunked, status = CASES[case]
    # Within the cap for the app that answers early: its refusal is its own.
    cap = 2 * BODY if app is early else 64 * 1024
    server = await start_server(app, max_body_bytes=cap)
    answer, error = await asyncio.to_thread(exchange, server.port, head, BODY, chunked)
    assert answer.startswith(status), (answer[:80], error)
    assert error == ""
    await until(lambda: not server.registry.connections)  # closed once the client closed


async def test_a_body_answered_early_is_read_past_and_the_connection_kept(
    start_server: Any,
) -> None:
    server = await start_server(early, max_body_bytes=2 * BODY)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % BODY)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    for _ in range(BODY // len(PIECE)):  # the rest, which the app never reads
        writer.write(PIECE)
        await writer.drain()
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await reader.readexactly(len(b"refused before the body"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    writer.close()


async def test_an_http_client_posting_too_much_reads_413(start_server: Any) -> None:
    server = await start_server(echo, max_body_bytes=64 * 1024)
    async with httpx.AsyncClient(timeout=timeout(20)) as client:
        for _ in range(3):
            response = await client.post(f"http://127.0.0.1:{server.port}/", content=b"x" * BODY)
            assert response.status_code == 413


async def test_a_client_that_never_stops_is_cut_after_lingering(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "LINGER", 0.5)
    server = await start_server(echo, max_body_bytes=1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n")
    began = time.monotonic()
    answer = await reader.readuntil(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(timeout(5)):
            while True:  # the body goes on; the server reads and drops it, then cuts
                writer.write(PIECE)
                await writer.drain()
    assert 0.4 < time.monotonic() - began < timeout(3)
    writer.close()


async def test_a_body_buffered_past_the_pause_is_let_go_with_the_answer(
    start_server: Any,
) -> None:
    """More than 64 KiB of the body arrive with the head: reading pauses for the app, which
    answers without reading them. That body is let go with the answer and reading goes on:
    it once stayed paused for ever, with every timer re-armed as "waiting on us", the
    pipelined request behind it never answered, and a close by the client never seen."""
    server = await start_server(early, max_body_bytes=1024 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    size = 66_000
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
    writer.write(b"x" * 65_900)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    await reader.readexactly(len(b"refused before the body"))
    writer.write(b"x" * (size - 65_900) + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    async with asyncio.timeout(timeout(5)):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")  # the pipelined request's own answer
    writer.close()
    await until(lambda: not server.registry.connections)  # and the close is seen


async def test_a_body_in_crumbs_is_refused_and_one_in_pieces_is_served(
    start_server: Any,
) -> None:
    """Each piece of a body is a Python call: a body of one-byte chunks cost 130 times the CPU
    of the same bytes in one chunk. Past 64 pieces, pieces must average 64 bytes."""
    server = await start_server(echo, max_body_bytes=1024 * 1024)
    head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    crumbs = b"1\r\na\r\n" * 60_000 + b"0\r\n\r\n"
    answer, error = await asyncio.to_thread(exchange, server.port, head + crumbs, 0)
    assert answer.startswith(b"HTTP/1.1 400 "), (answer[:80], error)
    # 64 pieces of any size, then pieces of 64 bytes and more: a client writing as it goes.
    pieces = b"".join(b"%x\r\n%s\r\n" % (n, b"p" * n) for n in [1] * 64 + [64] * 200)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head + pieces + b"0\r\n\r\n")
    reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    assert reply.startswith(b"HTTP/1.1 200 ")
    writer.close()
