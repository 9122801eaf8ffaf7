"""Framing of what the server writes, built once and shared: WebSocket frames and HTTP chunks.

Frames the server sends are unmasked (RFC 6455 §5.1), so a whole frame — header and payload — is
the same bytes for every receiver: the fan-out builds it once per publication. Likewise an HTTP/1.1
chunk of a streaming response (Server-Sent Events). Frames from clients are read by
:mod:`clarion.protocol.wsreader`.

A frame or chunk of a keyed live signal is :class:`Latest`: the same bytes, plus the ``slot``
(channel, publisher and key) that a connection which is behind keeps only the newest frame of.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
RSV1 = 0x40  # or'ed into an opcode: the message is compressed (permessage-deflate)

_pack16 = struct.Struct("!BBH").pack
_pack64 = struct.Struct("!BBQ").pack
# Text frame headers of the lengths seen so far below 64 KiB (at most 65536 small entries):
# a subscriber's frames often have the same length, and a lookup beats packing.
_TEXT_HEADS: dict[int, bytes] = {n: bytes((0x80 | OP_TEXT, n)) for n in range(126)}


def frame_header(length: int, opcode: int = OP_TEXT) -> bytes:
    """The header of an unmasked, unfragmented frame of ``length`` payload bytes.

    ``opcode`` may carry :data:`RSV1`: the first byte is FIN, the opcode's bits, nothing else.
    """
    if opcode == OP_TEXT:
        head = _TEXT_HEADS.get(length)
        if head is not None:
            return head
    first = 0x80 | opcode  # FIN + opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        head = _pack16(first, 126, length)
        if opcode == OP_TEXT:
            _TEXT_HEADS[length] = head
        return head
    return _pack64(first, 127, length)


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked, unfragmented text frame carrying ``payload`` (UTF-8)."""
    head = _TEXT_HEADS.get(len(payload))  # every publication's frame: spare a call
    if head is None:
        head = frame_header(len(payload))
    return head + payload


def binary_frame(payload: bytes) -> bytes:
    return frame_header(len(payload), OP_BINARY) + payload


def payload_of(frame: bytes) -> memoryview:
    """The payload of a frame built here, without a copy."""
    length = frame[1]
    return memoryview(frame)[2 if length < 126 else 4 if length == 126 else 10 :]


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


# Where a keyed signal waits: its channel (on STOMP its subscription), its publisher and its key.
Slot = tuple[str, str, str]


class Latest(bytes):
    """A frame (or chunk) of a keyed live signal, for a connection that is behind (what it was
    sent still waits to be written): only the newest frame of each ``slot`` waits for it."""

    slot: Slot


class LatestText(str):
    """:class:`Latest` for the pipes that queue text (``websocket.send``)."""

    slot: Slot


def latest(data: bytes, slot: Slot) -> Latest:
    """``data`` marked as the newest frame of ``slot``."""
    frame = Latest(data)
    frame.slot = slot
    return frame


def latest_text(data: str, slot: Slot) -> LatestText:
    text = LatestText(data)
    text.slot = slot
    return text


def size_of(item: str | bytes) -> int:
    """What ``item`` takes on the wire, in bytes: a text frame's UTF-8, not its characters
    (three or four times as many in CJK or emoji). Free for ASCII text, the common case."""
    if isinstance(item, bytes) or item.isascii():
        return len(item)
    return len(item.encode())
