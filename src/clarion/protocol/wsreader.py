"""Reading a client's WebSocket frames after the handshake (RFC 6455), without I/O.

Bytes in (:meth:`FrameReader.receive_data`), events out: a text message (``str``, valid UTF-8),
a binary message (``bytes``), a :class:`Pong` to write back for a ping, and at most one
:class:`Closed`: the connection is over — the peer closed it, or it broke the protocol and the
reader failed it — with the close frame to write, if one is due. Fragments are reassembled,
frames must be masked, control frames short and whole, messages within ``max_size`` (1009),
text valid UTF-8 (1007, at the first bad fragment); anything else is a protocol error (1002).
With permessage-deflate negotiated (``inflate``), a message whose first frame has RSV1 set is
inflated fragment by fragment (:class:`~clarion.protocol.deflate.Inflater`) within ``max_size``
of inflated bytes, and of ``compressed_limit(max_size)`` bytes on the wire (1009 beyond either;
1002 for invalid data, bytes after the deflate stream's end included).

What one call does is bounded whatever the frames are: it parses at most
:data:`FRAMES_PER_CALL` frames (control frames and empty fragments included) and stops after
each :data:`INFLATED_PER_CALL` bytes it inflated, leaving the rest of the bytes buffered and setting
:attr:`FrameReader.backlog`; ``receive_data(b"")`` goes on with them. A server calls it again in a
later turn of its loop, before it reads more, so that a peer's tiny or highly compressed frames
cost no more per turn than a socket read of ordinary ones. A fragmented message is also bounded
in fragments (one per :data:`FRAGMENT_BYTES` of ``max_size``): empty fragments cost nothing in
bytes, but each one costs a frame.

The reader holds only what an unfinished frame or message needs, so an idle connection's
reader is a handful of slots. The handshake stays with the ``websockets`` library; what the
server writes is :mod:`clarion.protocol.frames`.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clarion.protocol.deflate import InflateError, Inflater, TooBig, compressed_limit

__all__ = ["LATE_FRAMES", "Closed", "FrameReader", "Pong", "close_frame", "valid_close_code"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NO_STATUS = 1005  # a close frame without a code (RFC 6455 §7.1.5)
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
TOO_BIG = 1009

# The work one receive_data call may do (see the module's docstring). 64 frames are more than one
# read of ordinary messages holds; 256 KiB inflated is one socket read's worth, so a compressed
# read costs no more than an uncompressed one.
FRAMES_PER_CALL = 64
INFLATED_PER_CALL = 256 * 1024
# A fragmented message may have one fragment per this many bytes of max_size (at least 64).
FRAGMENT_BYTES = 64
# Data frames still taken after our close frame: what a peer sent before it saw it (a publish
# just before the hub went away is handled). The rest, until the peer's close, is skipped.
LATE_FRAMES = 64

_unpack16 = struct.Struct("!H").unpack_from
_unpack64 = struct.Struct("!Q").unpack_from


def _apply_mask_py(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
    n = len(data)
    key = int.from_bytes(mask * (n // 4) + mask[: n % 4], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


try:  # the C helper the ``websockets`` library ships, when it was built
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - a pure-Python install of websockets
    _apply_mask = _apply_mask_py
apply_mask: Callable[[bytes | memoryview, bytes], bytes] = _apply_mask


def valid_close_code(code: int) -> bool:
    """Codes a close frame may carry (RFC 6455 §7.4; 1004-1006 and 1015 are never sent)."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_frame(code: int | None, reason: str = "") -> bytes:
    """An unmasked close frame; ``None``: without a code. ``reason`` must fit (123 bytes)."""
    if code is None:
        return b"\x88\x00"
    payload = code.to_bytes(2, "big") + reason.encode()
    if len(payload) > 125:
        raise ValueError("a close reason is at most 123 bytes of UTF-8")
    return bytes((0x88, len(payload))) + payload


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a ping: write ``frame``."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over: write ``frame`` (if any), then half-close.

    ``code`` and ``reason`` are the peer's close (1005 without a code) or, when the reader
    failed the connection, the code it closes with (1002, 1007, 1009).
    """

    code: int
    reason: str
    frame: bytes | None
    failed: bool = False


Event = str | bytes | Pong | Closed

# CLOSING: our close frame is sent, the peer's awaited. FAILED: closed by the reader failing
# the connection; what the peer sends after that is not to be read at all (RFC 6455 §7.1.7).
OPEN, CLOSING, CLOSED, FAILED = 0, 1, 2, 3


class FrameReader:
    """One connection's inbound frames; see the module's docstring."""

    __slots__ = (
        "_buf", "_decoder", "_fragments", "_inflated", "_inflater", "_late", "_opcode", "_parts",
        "_pos", "_size", "_wire", "backlog", "inflate", "max_fragments", "max_size", "state",
    )  # fmt: skip

    def __init__(self, max_size: int, *, inflate: bool = False) -> None:
        self.max_size = max_size
        self.inflate = inflate  # permessage-deflate was negotiated
        self.max_fragments = max(64, max_size // FRAGMENT_BYTES)
        self.state = OPEN
        # Parsing stopped with bytes left that may hold whole frames: receive_data(b"") goes on.
        self.backlog = False
        self._buf: bytes | bytearray = b""  # an unfinished frame, or the backlog from _pos on
        self._pos = 0
        self._inflated = 0  # bytes inflated since parsing last stopped for them
        self._fragments = 0  # of the fragmented message being received
        self._opcode = 0  # of the fragmented message being received (0: none)
        self._size = 0  # its bytes so far
        self._wire = 0  # a compressed message's bytes so far, before inflating
        self._late = 0  # data frames taken after our close frame (see LATE_FRAMES)
        self._parts: list[Any] | None = None  # its fragments: str for text, else bytes
        self._decoder: codecs.IncrementalDecoder | None = None
        self._inflater: Inflater | None = None  # of a compressed message being received

    def send_close(self, code: int, reason: str = "") -> bytes:
        """Our close frame; from now on the peer's close ends the connection."""
        if not valid_close_code(code):
            raise ValueError(f"invalid close code {code}")
        frame = close_frame(code, reason)
        if self.state == OPEN:
            self.state = CLOSING
        return frame

    def receive_eof(self) -> None:
        """The peer sends nothing more: what is unfinished is dropped."""
        self._end()

    def receive_data(self, data: bytes) -> list[Event]:
        """The events the bytes complete, in order; nothing once the connection is over.

        Within the budget of one call: with :attr:`backlog` set, call again (``b""`` will do)
        for the frames still buffered.
        """
        events: list[Event] = []
        if self.state >= CLOSED:
            return events
        buf = self._buf
        pos = 0
        if buf:
            pos = self._pos
            if data:
                if pos:
                    buf = buf[pos:]
                    pos = 0
                buf += data
            self.backlog = False
        else:
            buf = data
        end = len(buf)
        budget = FRAMES_PER_CALL
        while end - pos >= 2:
            if not budget:
                self.backlog = True
                break
            budget -= 1
            first = buf[pos]
            second = buf[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = _unpack16(buf, pos + 2)
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = _unpack64(buf, pos + 2)
                if length >> 63:
                    return self._fail(events, PROTOCOL_ERROR, "payload length over 2**63")
                head = 10
            opcode = first & 0x0F
            if self.state == CLOSING and opcode < OP_CLOSE and self._late >= LATE_FRAMES:
                # Past what it sent before it saw our close, the peer's data frames until its
                # own close are skipped, not unmasked, decoded, inflated or handed on: a peer
                # that keeps sending would otherwise keep the hub working for a connection it
                # ended.
                if length > self.max_size:
                    return self._fail(events, TOO_BIG, f"frame over {self.max_size} bytes")
                frame_end = pos + head + 4 + length
                if frame_end > end:
                    break
                pos = frame_end
                continue
            failure = self._check(first, second, opcode, length)
            if failure is not None:
                return self._fail(events, *failure)
            frame_end = pos + head + 4 + length
            if frame_end > end:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            with memoryview(buf) as view:
                payload = apply_mask(view[pos + head + 4 : frame_end], mask)
            pos = frame_end
            if not self._frame(events, first & 0x80, opcode, payload, first & 0x40):
                if self.state >= CLOSED:
                    return events
                if pos == end:
                    self.backlog = False
                break  # the inflation budget is spent: backlog
        if pos == end:
            self._buf = b""
        elif self.backlog:
            self._buf = buf  # kept whole: the next call starts at _pos, no copy per call
            self._pos = pos
        else:
            self._buf = buf if pos == 0 and type(buf) is bytearray else bytearray(buf[pos:])
            self._pos = 0
        return events

    def _check(self, first: int, second: int, opcode: int, length: int) -> tuple[int, str] | None:
        """Why a frame's header is refused, before its payload is awaited (or None)."""
        rsv = first & 0x70
        # RSV1 marks the first frame of a compressed message, once compression was agreed.
        if rsv and (rsv != 0x40 or not self.inflate or opcode not in (OP_TEXT, OP_BINARY)):
            return PROTOCOL_ERROR, "reserved bits must be 0"
        if not second & 0x80:
            return PROTOCOL_ERROR, "client frames must be masked"
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                return PROTOCOL_ERROR, f"invalid opcode {opcode:#x}"
            if not first & 0x80:
                return PROTOCOL_ERROR, "fragmented control frame"
            if length > 125:
                return PROTOCOL_ERROR, "control frame too long"
            return None
        if opcode == OP_CONT:
            if not self._opcode:
                return PROTOCOL_ERROR, "unexpected continuation frame"
            if self._fragments >= self.max_fragments:
                return TOO_BIG, f"message in over {self.max_fragments} fragments"
        elif opcode > OP_BINARY:
            return PROTOCOL_ERROR, f"invalid opcode {opcode:#x}"
        elif self._opcode:
            return PROTOCOL_ERROR, "expected a continuation frame"
        if self._size + length > self.max_size:
            return TOO_BIG, f"message over {self.max_size} bytes"
        # A compressed message is bounded on the wire too, not only by what it inflates to (a
        # first frame is, by the line above).
        if self._inflater is not None:
            limit = compressed_limit(self.max_size)
            if self._wire + length > limit:
                return TOO_BIG, f"compressed message over {limit} bytes"
        return None

    def _frame(
        self, events: list[Event], fin: int, opcode: int, payload: bytes, compressed: int
    ) -> bool:
        """Take one whole frame; False once the connection is over or the budget is spent."""
        if self.state == CLOSING and opcode < OP_CLOSE:
            self._late += 1
        if opcode in (OP_TEXT, OP_BINARY):
            if compressed:
                self._inflater = Inflater()  # fresh per message: no context takeover
                self._wire = 0
            elif fin:
                if opcode == OP_BINARY:
                    events.append(payload)
                    return True
                try:
                    events.append(payload.decode())
                except UnicodeDecodeError as exc:
                    return self._invalid_utf8(events, exc)
                return True
            self._opcode = opcode
            self._size = self._fragments = 0
            self._parts = []
            if opcode == OP_TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
            return self._fragment(events, fin, payload)
        if opcode == OP_CONT:
            return self._fragment(events, fin, payload)
        if opcode == OP_PING:
            events.append(Pong(bytes((0x8A, len(payload))) + payload))
            return True
        if opcode == OP_PONG:
            return True
        return self._close(events, payload)

    def _fragment(self, events: list[Event], fin: int, payload: bytes) -> bool:
        parts = self._parts
        assert parts is not None
        self._fragments += 1
        inflater = self._inflater
        if inflater is not None:
            self._wire += len(payload)
            try:
                payload = inflater.feed(payload, bool(fin), self.max_size - self._size)
            except TooBig as exc:
                self._fail(events, TOO_BIG, str(exc))
                return False
            except InflateError as exc:
                self._fail(events, PROTOCOL_ERROR, str(exc))
                return False
            self._inflated += len(payload)
        self._size += len(payload)
        decoder = self._decoder
        if decoder is not None:
            # Decoded as they come, so that invalid UTF-8 fails at the first bad fragment.
            try:
                text = decoder.decode(payload, bool(fin))
            except UnicodeDecodeError as exc:
                return self._invalid_utf8(events, exc)
            if text:
                parts.append(text)
        elif payload:
            parts.append(payload)
        if fin:
            events.append("".join(parts) if decoder is not None else b"".join(parts))
            self._opcode = self._size = self._fragments = 0
            self._parts = self._decoder = self._inflater = None
        if self._inflated >= INFLATED_PER_CALL:
            self._inflated = 0
            self.backlog = True
            return False
        return True

    def _close(self, events: list[Event], payload: bytes) -> bool:
        if len(payload) == 1:
            self._fail(events, PROTOCOL_ERROR, "close frame payload of one byte")
            return False
        code = NO_STATUS
        reason = ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not valid_close_code(code):
                self._fail(events, PROTOCOL_ERROR, f"invalid close code {code}")
                return False
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError as exc:
                self._invalid_utf8(events, exc)
                return False
        # Echo the peer's close unless ours was sent first (then this is the answer).
        echo = None if self.state == CLOSING else bytes((0x88, len(payload))) + payload
        self._end()
        events.append(Closed(code, reason, echo))
        return False

    def _invalid_utf8(self, events: list[Event], exc: UnicodeDecodeError) -> bool:
        self._fail(events, INVALID_DATA, f"{exc.reason} at position {exc.start}")
        return False

    def _fail(self, events: list[Event], code: int, reason: str) -> list[Event]:
        frame = close_frame(code, reason) if self.state == OPEN else None
        self._end()
        self.state = FAILED
        events.append(Closed(code, reason, frame, failed=True))
        return events

    def _end(self) -> None:
        self.state = CLOSED
        self.backlog = False
        self._buf = b""
        self._pos = 0
        self._parts = self._decoder = self._inflater = None
