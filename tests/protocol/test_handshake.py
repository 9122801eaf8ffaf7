"""The plain WebSocket handshake against the ``websockets`` library's, which answers the rest.

The oracle is the library itself: whatever :func:`plain_upgrade` takes, the library accepts
too, with the same 101 response byte for byte (but its date); whatever the library refuses,
:func:`plain_upgrade` leaves to it.
"""

from __future__ import annotations

import email.utils

from hypothesis import event, given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.server import ServerProtocol

from clarion.protocol.handshake import accept_key, plain_upgrade, switching_protocols

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

CHROME = [
    (b"host", b"127.0.0.1:8000"),
    (b"connection", b"Upgrade"),
    (b"pragma", b"no-cache"),
    (b"upgrade", b"websocket"),
    (b"origin", b"http://127.0.0.1:8000"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
    (b"sec-websocket-protocol", b"clarion.v1"),
]


def library(method: str, version: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """The library's status and response for the request, its Date header taken out."""
    raw = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers])
    protocol = ServerProtocol()
    response = protocol.accept(Request("/ws", raw, method, f"HTTP/{version}"))
    del response.headers["Date"]
    return response.status_code, response.serialize()


def ours(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    plain = plain_upgrade(b"GET", "1.1", headers)
    if plain is None:
        return None
    response = switching_protocols(b"DATE", plain.accept)
    return response.replace(b"Date: DATE\r\n", b"")


def test_the_rfc_example_key() -> None:
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


def test_a_browser_request_is_plain_and_answered_as_the_library_does() -> None:
    plain = plain_upgrade(b"GET", "1.1", CHROME)
    assert plain is not None
    assert plain.protocols == ["clarion.v1"]
    assert plain.extensions == ["permessage-deflate; client_max_window_bits"]
    assert library("GET", "1.1", CHROME) == (101, ours(CHROME))


def test_the_response_carries_its_date_and_further_headers_in_order() -> None:
    date = email.utils.formatdate(0, usegmt=True).encode()
    extra = [(b"Sec-WebSocket-Protocol", b"clarion.v1"), (b"X-A", b"1")]
    assert switching_protocols(date, b"ACCEPT", extra) == (
        b"HTTP/1.1 101 Switching Protocols\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ACCEPT\r\n"
        b"Sec-WebSocket-Protocol: clarion.v1\r\nX-A: 1\r\n\r\n"
    )


def replaced(name: bytes, *values: bytes) -> list[tuple[bytes, bytes]]:
    """CHROME with ``name``'s header replaced by one header per value (none: removed)."""
    kept = [(n, v) for n, v in CHROME if n != name]
    return kept + [(name, v) for v in values]


NOT_PLAIN = {
    "no key": replaced(b"sec-websocket-key"),
    "two keys": replaced(b"sec-websocket-key", KEY, KEY),
    "short key": replaced(b"sec-websocket-key", b"dGhlIHNhbXBsZQ=="),
    "bad key": replaced(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ="),
    "version 8": replaced(b"sec-websocket-version", b"8"),
    "no version": replaced(b"sec-websocket-version"),
    "two versions": replaced(b"sec-websocket-version", b"13", b"13"),
    "no upgrade": replaced(b"upgrade"),
    "upgrade h2c": replaced(b"upgrade", b"h2c"),
    "two upgrades": replaced(b"upgrade", b"websocket", b"websocket"),
    "connection close": replaced(b"connection", b"close"),
    "connection empty": replaced(b"connection", b""),
    "connection with a leading space": replaced(b"connection", b" Upgrade"),
    "connection with an empty element": replaced(b"connection", b"keep-alive, , Upgrade"),
    "two origins": replaced(b"origin", b"http://a", b"http://b"),
    "protocol not a token": replaced(b"sec-websocket-protocol", b"clarion v1"),
}


def test_requests_that_are_not_plain_are_left_to_the_library() -> None:
    for name, headers in NOT_PLAIN.items():
        assert plain_upgrade(b"GET", "1.1", headers) is None, name
    assert plain_upgrade(b"POST", "1.1", CHROME) is None
    assert plain_upgrade(b"GET", "1.0", CHROME) is None


# Values that test the edges of each header's syntax.
VALUES = {
    b"connection": [
        b"Upgrade",
        b"upgrade",
        b"keep-alive, Upgrade",
        b"keep-alive,Upgrade ",
        b"Upgrade\t",
        b" Upgrade",
        b",Upgrade",
        b"Upgrade,,x",
        b"close",
        b"",
        b"Up grade",
    ],
    b"upgrade": [b"websocket", b"WebSocket", b"websocket ", b"websocket/13", b"h2c", b""],
    b"sec-websocket-key": [
        KEY,
        b"AAAAAAAAAAAAAAAAAAAAAA==",
        b"AAAA",
        b"A" * 24,
        b"//////////////////////8=",
    ],
    b"sec-websocket-version": [b"13", b"8", b" 13", b""],
    b"origin": [b"http://a", b"null", b""],
    b"sec-websocket-protocol": [b"clarion.v1", b"a, b", b"a,b ", b" a", b"a b", b"", b"a,"],
    b"sec-websocket-extensions": [b"permessage-deflate", b'x; y="1"', b""],
}


def _header(name: bytes) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """``name`` once (most often, and most often with one of its first, plain values), absent
    or twice."""
    value = st.one_of(st.sampled_from(VALUES[name][:2]), st.sampled_from(VALUES[name]))
    values = st.one_of(value.map(lambda v: [v]), st.lists(value, max_size=2))
    return values.map(lambda vs: [(name, v) for v in vs])


HEADERS = st.tuples(*(_header(name) for name in sorted(VALUES))).flatmap(
    lambda groups: st.permutations([pair for group in groups for pair in group])
)


@settings(max_examples=500)
@given(HEADERS)
def test_what_is_plain_the_library_accepts_with_the_same_response(
    headers: list[tuple[bytes, bytes]],
) -> None:
    response = ours(headers)
    event("plain" if response is not None else "not plain")
    if response is not None:
        assert library("GET", "1.1", headers) == (101, response)


@given(st.permutations(CHROME))
def test_header_order_does_not_matter(headers: list[tuple[bytes, bytes]]) -> None:
    assert library("GET", "1.1", headers) == (101, ours(headers))
