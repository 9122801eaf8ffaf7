"""permessage-deflate (RFC 7692) as the hub speaks it: negotiation, shared compression, inflation.

The hub always answers an offer with ``server_no_context_takeover`` and
``client_no_context_takeover``: every message, in both directions, is compressed on its own.
Outbound, that makes a publication's compressed frame the same bytes for every subscriber, so it
is compressed once, like its frame is encoded once; inbound, a connection keeps no inflate state
between messages (an idle connection holds no zlib object at all).

All compression goes through one compressor per window size, reset after each message by a full
flush (which forgets every earlier byte): cheaper than a fresh compressor per message. A client
that asks for ``server_max_window_bits=N`` gets messages compressed within that window; zlib cannot
compress within 256 bytes (N = 8), so such a client gets messages over 256 bytes uncompressed.

Messages shorter than :data:`MIN_SIZE` go uncompressed (RSV1 clear, which RFC 7692 §6 allows):
below that, compression saves a few bytes at the cost of compressing and inflating.

Pure: no I/O; a frame parser calls :class:`Inflater` for each fragment of a compressed message.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from clarion.protocol.frames import OP_TEXT, RSV1, frame_header

EXTENSION = "permessage-deflate"
MIN_SIZE = 128  # payload bytes below which a message goes uncompressed (see docs/compression.md)
LEVEL = 6  # zlib's default: on JSON of a few hundred bytes higher levels gain nothing
MAX_WINDOW_BITS = 15
# What ends every sync-flushed deflate stream: removed by the sender, added back by the receiver
# (RFC 7692 §7.2.1 and §7.2.2).
TRAILER = b"\x00\x00\xff\xff"

_WINDOW_VALUES = {str(n): n for n in range(8, 16)}  # no sign, no leading zero: RFC 7692 §7.1.2


@dataclass(frozen=True, slots=True)
class Agreement:
    """What the hub answered to a client's permessage-deflate offer."""

    window_bits: int  # the window the hub compresses within (8-15)
    response: str  # the ``Sec-WebSocket-Extensions`` value of the handshake response


def negotiate(header_values: Iterable[str]) -> Agreement | None:
    """The hub's answer to the first acceptable permessage-deflate offer, or ``None``.

    ``header_values``: every ``Sec-WebSocket-Extensions`` value of the request. An offer with an
    unknown, repeated or malformed parameter is declined (RFC 7692 §7.1), and the next one tried.
    """
    for value in header_values:
        for element in value.split(","):
            name, _, rest = element.partition(";")
            if name.strip().lower() != EXTENSION:
                continue
            window = _accept(rest)
            if window is None:
                continue
            response = f"{EXTENSION}; server_no_context_takeover; client_no_context_takeover"
            if window:  # asked for: granted, and said so (RFC 7692 §7.1.2.1)
                response += f"; server_max_window_bits={window}"
            return Agreement(window or MAX_WINDOW_BITS, response)
    return None


def _accept(params: str) -> int | None:
    """The ``server_max_window_bits`` an offer asks for (0: none), or ``None`` to decline it."""
    seen: set[str] = set()
    window = 0
    if not params.strip():
        return window
    for param in params.split(";"):
        if not param.strip():
            return None  # an empty parameter: ";;"
        key, eq, raw = param.partition("=")
        key = key.strip().lower()
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key in seen:
            return None
        seen.add(key)
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if eq:
                return None
        elif key == "server_max_window_bits":
            bits = _WINDOW_VALUES.get(value)
            if bits is None:
                return None
            window = bits
        elif key == "client_max_window_bits":
            # The hub inflates with the largest window, whatever the client compresses within.
            if eq and value not in _WINDOW_VALUES:
                return None
        else:
            return None
    return window


# -- outbound ---------------------------------------------------------------------------------

_compressors: dict[int, zlib._Compress] = {}


class Totals:
    """What the process compressed (its compressors are process-wide too), for metrics."""

    __slots__ = ("bytes_in", "bytes_out", "messages")

    def __init__(self) -> None:
        self.messages = 0  # messages compressed and sent so (a shared frame counts once)
        self.bytes_in = 0  # their bytes before ...
        self.bytes_out = 0  # ... and after


TOTALS = Totals()


def compress(payload: bytes | memoryview, window_bits: int = MAX_WINDOW_BITS) -> bytes | None:
    """``payload`` compressed as one message (trailer removed), or ``None`` to send it as is.

    ``None`` when it is shorter than :data:`MIN_SIZE`, when compressing does not make it
    shorter, or when it does not fit an 8-bit window (zlib's smallest is 9 bits).
    """
    size = len(payload)
    if size < MIN_SIZE or (window_bits == 8 and size > 256):
        return None
    bits = max(window_bits, 9)  # any window holds a message no longer than itself
    compressor = _compressors.get(bits)
    if compressor is None:
        compressor = _compressors[bits] = zlib.compressobj(LEVEL, zlib.DEFLATED, -bits)
    # A full flush ends the message on a byte boundary and forgets it: the next message does
    # not refer back to this one, as server_no_context_takeover promises.
    data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    data = data[:-4]  # the TRAILER every flush ends with
    if len(data) >= size:
        return None
    totals = TOTALS
    totals.messages += 1
    totals.bytes_in += size
    totals.bytes_out += len(data)
    return data


def frame(payload: bytes, opcode: int = OP_TEXT, window_bits: int = MAX_WINDOW_BITS) -> bytes:
    """A complete unmasked frame of one message: compressed (RSV1 set) when that pays."""
    data = compress(payload, window_bits)
    if data is None:
        return frame_header(len(payload), opcode) + payload
    return frame_header(len(data), opcode | RSV1) + data


_stored = struct.Struct("<BHH").pack


def stored_block(data: bytes) -> bytes:
    """``data`` as an uncompressed deflate block (not final), to put before a compressed message.

    What a compressed message starts with on a byte boundary, so ``stored_block(prefix) +
    compress(tail)`` inflates to ``prefix + tail``: a per-subscriber prefix in front of a tail
    compressed once for all (RFC 1951 §3.2.4). At most 65535 bytes.
    """
    size = len(data)
    return _stored(0, size, size ^ 0xFFFF) + data


# -- inbound ----------------------------------------------------------------------------------


class InflateError(ValueError):
    """The compressed data is not a valid deflate stream (the connection fails: 1002)."""


class TooBig(ValueError):
    """The message inflates to more than it may (the connection fails: 1009)."""


def compressed_limit(limit: int) -> int:
    """The most bytes a compressed message inflating to at most ``limit`` bytes may take on the
    wire. A compressor may expand what does not compress: by 5 bytes per stored block of up to
    65,535, or by an eighth with fixed Huffman codes (9 bits for a byte over 143, as UTF-8's
    are). Beyond this, the message is refused by its size on the wire, whatever it inflates to:
    bytes that inflate to nothing (empty blocks) cost time too."""
    return limit + limit // 8 + 1024


class Inflater:
    """One compressed inbound message, inflated fragment by fragment within a size budget.

    Fresh per message: the hub asked for ``client_no_context_takeover``.
    """

    __slots__ = ("_zlib",)

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(-MAX_WINDOW_BITS)

    def feed(self, data: bytes, fin: bool, limit: int | None) -> bytes:
        """The bytes ``data`` (the next fragment) inflates to, at most ``limit`` of them.

        Raises :class:`TooBig` beyond ``limit`` — having inflated no more than ``limit + 1``
        bytes, however small ``data`` is (a zip bomb) — and :class:`InflateError` on invalid data,
        data after the end of the deflate stream included (zlib would keep it aside, copying it
        again with each fragment).
        """
        z = self._zlib
        if z.eof:  # the stream ended (a final block) in an earlier fragment
            if data:
                raise InflateError("data after the end of the compressed message")
            return b""
        if fin:
            data = data + TRAILER
        try:
            # One byte over the budget proves the message too big; stopping there keeps the
            # cost of a bomb to the budget.
            out = z.decompress(data) if limit is None else z.decompress(data, limit + 1)
        except zlib.error as exc:
            raise InflateError(f"invalid compressed data: {exc}") from None
        if limit is not None and len(out) > limit:
            raise TooBig(f"message inflates to more than {limit} bytes")
        # Under the budget, the output buffer was not full: all input was consumed. A stream
        # that ends with a final block leaves the trailer appended above unread, and nothing
        # else: anything more is not deflate data.
        if z.eof and z.unused_data != (TRAILER if fin else b""):
            raise InflateError("data after the end of the compressed message")
        return out


def inflate(data: bytes, limit: int | None) -> bytes:
    """A compressed message of one frame, inflated (see :meth:`Inflater.feed`)."""
    return Inflater().feed(data, True, limit)
