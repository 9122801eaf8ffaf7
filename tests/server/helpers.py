"""Raw-socket HTTP helpers: the tests speak bytes, so they see exactly what the server wrote."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

TIMEOUT = 5.0


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)


open_writers: list[asyncio.StreamWriter] = []  # closed after each test by conftest


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    open_writers.append(writer)
    return reader, writer


async def read_head(reader: asyncio.StreamReader) -> RawResponse:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers)


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body; b"" for the last one."""
    size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
    size = int(size_line.strip(), 16)
    data = await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT)
    return data[:-2]


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> RawResponse:
    response = await read_head(reader)
    if head_request or response.status in (204, 304) or response.status < 200:
        return response
    if b"content-length" in response.headers:
        length = int(response.headers[b"content-length"])
        response.body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    elif response.headers.get(b"transfer-encoding") == b"chunked":
        while chunk := await read_chunk(reader):
            response.chunks.append(chunk)
        response.body = b"".join(response.chunks)
    else:
        response.body = await asyncio.wait_for(reader.read(), TIMEOUT)
    return response


async def request(port: int, raw: bytes) -> RawResponse:
    """Send one raw request on a new connection and read one response."""
    reader, writer = await connect(port)
    try:
        writer.write(raw)
        return await read_response(reader)
    finally:
        writer.close()


async def read_eof(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    """Everything until the server closes the connection (fails on timeout)."""
    return await asyncio.wait_for(reader.read(), timeout)


def get(path: str = "/", *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(send: Any, status: int = 200, body: bytes = b"", headers: Any = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers
            if headers is not None
            else [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
