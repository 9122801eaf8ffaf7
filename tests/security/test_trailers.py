"""HTTP trailers are not supported: clarion's server drops them.

A chunked request may end with trailer fields. Parsed like header fields, they were once added
to the request's headers after the app had started on them, so a credential or a forwarding
header sent only there was read by whatever looked later: ``/client/publish`` reads the token
after the body. Now the headers are the head's, fixed once it is complete; trailers count
against the head's size limit, and a trailer line that never ends is refused like a head's.
Raw sockets, so that the requests are exactly as written.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from clarion import mint_token

from ..conftest import RunningHub, clarion_server, timeout
from .test_stalled_requests import read_response, statuses

pytestmark = clarion_server("trailers as clarion's own server parses them")

SECRET = "a-long-enough-test-secret-0123456789"


def chunked(path: str, body: bytes, trailers: str = "", headers: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n{headers}"
    return (
        head.encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
        + trailers.encode()
        + b"\r\n"
    )


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        response = await read_response(reader)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return statuses(head)[0], json.loads(body)


async def test_a_token_or_key_only_in_a_trailer_is_no_credential(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="backend-key")
    token = mint_token(SECRET, "alice", ["chat:*"], publish=["chat:*"])
    publish = json.dumps({"channel": "chat:a", "data": 1}).encode()
    bearer = f"Authorization: Bearer {token}\r\n"
    # The same request, the token in its head: published.
    assert (await exchange(hub.port, chunked("/client/publish", publish, headers=bearer)))[0] == 200
    without = await exchange(hub.port, chunked("/client/publish", publish))
    in_trailer = await exchange(hub.port, chunked("/client/publish", publish, bearer))
    assert without[0] in (401, 403)
    assert in_trailer == without
    # The server API's key, likewise: the API reads it before the body, a trailer never.
    api = json.dumps({"channel": "chat:a", "data": 2}).encode()
    key = "Authorization: apikey backend-key\r\n"
    assert (await exchange(hub.port, chunked("/api/publish", api, headers=key)))[0] == 200
    assert (await exchange(hub.port, chunked("/api/publish", api, key)))[0] == 401


async def test_a_forwarding_trailer_does_not_change_the_client_address(
    hub_factory: Any,
) -> None:
    """Anonymous clients publish at a rate per address: a trailer naming another address
    would be a fresh budget each time."""
    hub: RunningHub = await hub_factory(
        trusted_proxies=["127.0.0.0/8"],
        namespaces={"default": {"anonymous": True}},
        limits={"client_publish_rate": 0.01, "client_publish_burst": 1},
    )
    publish = json.dumps({"channel": "chat:a", "data": 1}).encode()
    answers = []
    for n in range(1, 4):
        forwarded = f"X-Forwarded-For: 10.0.0.{n}\r\n"
        answers.append(
            (await exchange(hub.port, chunked("/client/publish", publish, forwarded)))[0]
        )
    assert answers == [200, 429, 429]  # one address: 127.0.0.1, the peer's own
    # The same header in the head is read (from a trusted proxy): another address, another
    # budget.
    forwarded = "X-Forwarded-For: 10.0.0.9\r\n"
    assert (await exchange(hub.port, chunked("/client/publish", publish, headers=forwarded)))[
        0
    ] == 200


async def test_trailers_count_against_the_head_limit(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory()
    publish = json.dumps({"channel": "chat:a", "data": 1}).encode()
    many = "".join(f"X-T{i}: {'v' * 90}\r\n" for i in range(300))  # 30 KB in all
    endless = "X-Endless: " + "v" * 40000  # one line that never ends, in reads of its own
    for trailers, later in ((many, ""), ("", endless)):
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        try:
            raw = chunked("/client/publish", publish, trailers)
            writer.write(raw if trailers else raw[:-2])
            answer = [431]
            if later:
                await asyncio.sleep(0.05)
                try:
                    for at in range(0, len(later), 4096):
                        writer.write(later[at : at + 4096].encode())
                        await writer.drain()
                        await asyncio.sleep(0.005)
                except ConnectionError:
                    # Closed while the line still came: the 431 may be lost in the reset.
                    answer = []
            try:  # closed at once, not after body_timeout
                data = await asyncio.wait_for(reader.read(), timeout(2))
            except ConnectionError:
                data = b""
            assert statuses(data) in ([431], answer)
        finally:
            writer.close()
