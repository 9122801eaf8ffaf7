"""The server's side of the WebSocket opening handshake (RFC 6455 §4.2) in its plain case.

Nearly every upgrade request is plain: ``GET`` over HTTP/1.1, one ``Upgrade: websocket``, a
``Connection`` that lists ``upgrade``, one well-formed 16-byte ``Sec-WebSocket-Key``, version 13,
and headers written as browsers and clients write them. :func:`plain_upgrade` recognises that case
from the raw header list and :func:`switching_protocols` writes its 101 response, byte for byte
the one the ``websockets`` library writes, without the library's request, headers and protocol
objects (which cost more per connection than the rest of an upgrade together).

Every other request — one to refuse, or one whose headers the library would have to parse more
closely (a leading space, an empty element, a second value where one is allowed) — is not plain:
:func:`plain_upgrade` returns ``None`` and the server hands it to the library, so that the answer
to anything unusual stays the library's. The plain case is a subset of what the library accepts,
with the same result: ``tests/protocol/test_handshake.py`` holds the two equal.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Iterable

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"  # RFC 7230 §3.2.6
# A list of tokens as the library reads one (RFC 7230 §7), less what it also tolerates
# (leading or repeated commas): no leading whitespace, ``OWS "," OWS`` between tokens.
_TOKEN_LIST = re.compile(_TOKEN + rb"(?:[ \t]*,[ \t]*" + _TOKEN + rb")*[ \t]*")
_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")  # base64 of 16 bytes
# What the library allows in a response header's value (and raises InvalidHeaderValue for).
VALID_VALUE = re.compile(r"[\x09\x20-\x7e\x80-\xff]*")


class PlainUpgrade:
    """What a plain upgrade request asks for (its accept value, its offers), and the further
    headers of its response as the server adds them (the agreed extension, subprotocol...)."""

    __slots__ = ("accept", "extensions", "headers", "protocols")

    def __init__(self, accept: bytes, protocols: list[str], extensions: list[str]) -> None:
        self.accept = accept  # the Sec-WebSocket-Accept value
        self.protocols = protocols  # each Sec-WebSocket-Protocol value (latin-1)
        self.extensions = extensions  # each Sec-WebSocket-Extensions value (latin-1)
        self.headers: list[tuple[bytes, bytes]] = []


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return binascii.b2a_base64(hashlib.sha1(key + GUID).digest(), newline=False)


def plain_upgrade(
    method: bytes, version: str, headers: Iterable[tuple[bytes, bytes]]
) -> PlainUpgrade | None:
    """The request's plain upgrade, or ``None`` when it is not the plain case.

    ``headers``: the request's headers in order, names lower-cased, values as received.
    """
    if method != b"GET" or version != "1.1":
        return None
    key: bytes | None = None
    versions = upgrades = origins = 0
    connection = False
    protocols: list[str] = []
    extensions: list[str] = []
    for name, value in headers:
        if name == b"connection":
            if _TOKEN_LIST.fullmatch(value) is None:
                return None
            value = value.lower()
            if value == b"upgrade" or (
                not connection and b"upgrade" in [t.strip(b" \t") for t in value.split(b",")]
            ):
                connection = True
        elif name == b"upgrade":
            upgrades += 1
            if value.lower() != b"websocket":
                return None
        elif name == b"sec-websocket-key":
            if key is not None or _KEY.fullmatch(value) is None:
                return None
            key = value
        elif name == b"sec-websocket-version":
            versions += 1
            if value != b"13":
                return None
        elif name == b"origin":
            origins += 1
        elif name == b"sec-websocket-protocol":
            if _TOKEN_LIST.fullmatch(value) is None:
                return None
            protocols.append(value.decode("latin-1"))
        elif name == b"sec-websocket-extensions":
            extensions.append(value.decode("latin-1"))
    if key is None or not connection or upgrades != 1 or versions != 1 or origins > 1:
        return None
    return PlainUpgrade(accept_key(key), protocols, extensions)


def switching_protocols(
    date: bytes, accept: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
) -> bytes:
    """The 101 response: ``date`` (an HTTP date), the accept value, then ``extra`` headers.

    The values of ``extra`` must be valid (:data:`VALID_VALUE`); the caller checks those it did
    not write itself.
    """
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nDate: %s\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n" % (date, accept)
    )
    return head + b"".join(b"%s: %s\r\n" % pair for pair in extra) + b"\r\n"
