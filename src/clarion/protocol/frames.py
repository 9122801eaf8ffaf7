"""Server-to-client WebSocket frames, built once and shared.

Frames the server sends are unmasked (RFC 6455 §5.1), so a whole frame — header and payload — is
the same bytes for every receiver: the fan-out builds it once per publication. Parsing frames
from clients stays with the ``websockets`` library.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2


def frame_header(length: int, opcode: int = OP_TEXT) -> bytes:
    first = 0x80 | opcode  # FIN + opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked, unfragmented text frame carrying ``payload`` (UTF-8)."""
    return frame_header(len(payload)) + payload


def binary_frame(payload: bytes) -> bytes:
    return frame_header(len(payload), OP_BINARY) + payload
