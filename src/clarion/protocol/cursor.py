"""The cursor: one opaque, URL-safe token holding stream positions for one or more channels.

The same cursor format is the SSE ``id:``, the poll ``cursor``, the WebSocket ``since`` and the
STOMP ``x-since``. Layout before base64url (no padding)::

    version:u8  count:varint  { channel_tag:8  epoch_len:u8  epoch  offset:varint }*  check:4

``channel_tag`` is a BLAKE2b digest of the channel name: cursors stay short however long the
names are, and a cursor given for the wrong channel is recognised (every transport names its
channels next to the cursor). ``check`` is a BLAKE2b digest of everything before it, so a cursor
that was truncated or corrupted is rejected with :class:`BadCursor` instead of being misread.

Neither digest is keyed: cursors are positions, not credentials. Anyone can build a valid cursor
for any channel and position, and that grants nothing — channel permissions are checked on every
read, and a position the hub never issued is answered like any other (replayed from history, or
reset with ``position`` or ``epoch``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from clarion.errors import BadCursor
from clarion.protocol.publication import StreamPosition

VERSION = 1
MAX_TOKEN_CHARS = 16384
MAX_EPOCH_BYTES = 64
MAX_CHANNELS = 512
_TAG = 8
_CHECK = 4


def _epoch_fits(epoch: bytes) -> bool:
    """The rule for an epoch in a cursor, for both ways: what is encoded is what decodes."""
    return 0 < len(epoch) <= MAX_EPOCH_BYTES


@lru_cache(maxsize=4096)  # a wide poll or stream names the same channels again and again
def channel_tag(channel: str) -> bytes:
    return blake2b(channel.encode(), digest_size=_TAG, person=b"clarion.chan").digest()


def _checksum(body: bytes) -> bytes:
    return blake2b(body, digest_size=_CHECK, person=b"clarion.cursor").digest()


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _get_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise BadCursor("cursor is truncated")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise BadCursor("cursor holds an offset out of range")


class Cursor:
    """Stream positions for a set of channels, addressed by channel name."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[bytes, StreamPosition] | None = None) -> None:
        self._entries: dict[bytes, StreamPosition] = dict(entries or {})

    @classmethod
    def of(cls, positions: Mapping[str, StreamPosition]) -> Cursor:
        return cls({channel_tag(ch): pos for ch, pos in positions.items()})

    @classmethod
    def single(cls, channel: str, position: StreamPosition) -> Cursor:
        return cls({channel_tag(channel): position})

    def get(self, channel: str) -> StreamPosition | None:
        return self._entries.get(channel_tag(channel))

    def entries(self) -> Iterable[tuple[bytes, StreamPosition]]:
        """Each position with its channel's tag, in the cursor's order."""
        return self._entries.items()

    def covers(self, channels: Iterable[str]) -> bool:
        return all(channel_tag(ch) in self._entries for ch in channels)

    def with_position(self, channel: str, position: StreamPosition) -> Cursor:
        entries = dict(self._entries)
        entries[channel_tag(channel)] = position
        return Cursor(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cursor) and other._entries == self._entries

    def __hash__(self) -> int:
        return hash(frozenset(self._entries.items()))

    def __repr__(self) -> str:
        return f"Cursor({self.encode()!r})"

    def encode(self) -> str:
        return encode_entries(self._entries.items())

    @classmethod
    def decode(cls, token: object) -> Cursor:
        return cls(decode_entries(token))


def _entry(tag: bytes, pos: StreamPosition) -> bytes:
    """One channel's part of a cursor: ``channel_tag epoch_len epoch offset``."""
    epoch = pos.epoch.encode("ascii")
    if not _epoch_fits(epoch):
        raise ValueError(f"epoch must be 1 to {MAX_EPOCH_BYTES} bytes")
    if pos.offset < 0:
        raise ValueError("offset must not be negative")
    out = bytearray(tag)
    out.append(len(epoch))
    out += epoch
    _put_varint(out, pos.offset)
    return bytes(out)


def _token(entries: list[bytes]) -> str:
    """The cursor of these encoded entries: header, entries, checksum, base64url."""
    out = bytearray((VERSION,))
    _put_varint(out, len(entries))
    out += b"".join(entries)
    out += _checksum(bytes(out))
    # base64url, as base64.urlsafe_b64encode makes it, without its two Python calls.
    raw = binascii.b2a_base64(bytes(out), newline=False)
    return raw.translate(_URLSAFE).rstrip(b"=").decode("ascii")


def encode_entries(entries: Iterable[tuple[bytes, StreamPosition]]) -> str:
    return _token([_entry(tag, pos) for tag, pos in entries])


class Positions:
    """Positions by channel tag that a stream keeps and writes as a cursor again and again:
    each entry is encoded when its position moves, and a cursor joins them. A multi-channel SSE
    stream's ``id:`` names every channel it reads, on every event; built from scratch it cost
    some 80 µs of Python per event at 128 channels, whoever chose the stream's shape. The
    token is that of :func:`encode_entries` over the same items in the same order."""

    __slots__ = ("_encoded", "_positions", "_token")

    def __init__(self) -> None:
        self._positions: dict[bytes, StreamPosition] = {}
        self._encoded: dict[bytes, bytes] = {}  # in the same order as _positions
        self._token: str | None = None

    def __setitem__(self, tag: bytes, position: StreamPosition) -> None:
        if self._positions.get(tag) == position:
            return
        self._encoded[tag] = _entry(tag, position)
        self._positions[tag] = position
        self._token = None

    def pop(self, tag: bytes) -> None:
        if self._positions.pop(tag, None) is not None:
            del self._encoded[tag]
            self._token = None

    def __len__(self) -> int:
        return len(self._positions)

    def items(self) -> Iterable[tuple[bytes, StreamPosition]]:
        return self._positions.items()

    def encode(self) -> str:
        token = self._token
        if token is None:
            token = self._token = _token(list(self._encoded.values()))
        return token


def encode_single(channel: str, epoch: str, offset: int) -> str:
    """Fast path for the most common cursor: one channel, one position.

    Every publication's cursor is one of these: the bytes before the offset and the checksum's
    state over them are kept per (channel, epoch), so a cursor costs a varint, a copy of that
    state and the base64 (a third of building it from scratch).
    """
    if offset < 0:
        raise ValueError("offset must not be negative")
    prefix = _single_prefixes.get((channel, epoch))
    if prefix is None:
        prefix = _single_prefix(channel, epoch)
    head, state = prefix
    if offset < 0x80:
        tail = bytes((offset,))
    else:
        out = bytearray()
        _put_varint(out, offset)
        tail = bytes(out)
    check = state.copy()
    check.update(tail)
    raw = binascii.b2a_base64(head + tail + check.digest(), newline=False)  # as in _token
    return raw.translate(_URLSAFE).rstrip(b"=").decode("ascii")


_URLSAFE = bytes.maketrans(b"+/", b"-_")


# (channel, epoch) -> (the cursor's bytes before the offset, the checksum state after them);
# bounded: emptied when full, so a hub with many channels only recomputes some prefixes.
_single_prefixes: dict[tuple[str, str], tuple[bytes, Any]] = {}
_SINGLE_PREFIXES_MAX = 4096


def _single_prefix(channel: str, epoch: str) -> tuple[bytes, Any]:
    raw = epoch.encode("ascii")
    if not _epoch_fits(raw):
        raise ValueError(f"epoch must be 1 to {MAX_EPOCH_BYTES} bytes")
    head = bytes((VERSION, 1)) + channel_tag(channel) + bytes((len(raw),)) + raw
    state = blake2b(digest_size=_CHECK, person=b"clarion.cursor")
    state.update(head)
    if len(_single_prefixes) >= _SINGLE_PREFIXES_MAX:
        _single_prefixes.clear()
    prefix = _single_prefixes[(channel, epoch)] = (head, state)
    return prefix


def decode_entries(token: object) -> dict[bytes, StreamPosition]:
    if not isinstance(token, str):
        raise BadCursor("cursor must be a string")
    if not token:
        raise BadCursor("cursor is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise BadCursor("cursor is too long")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadCursor("cursor is not valid base64url") from None
    if len(raw) < 1 + 1 + _CHECK:
        raise BadCursor("cursor is truncated")
    body, check = raw[:-_CHECK], raw[-_CHECK:]
    if _checksum(body) != check:
        raise BadCursor("cursor is corrupted or was altered")
    if body[0] != VERSION:
        raise BadCursor(f"unsupported cursor version {body[0]}")
    count, pos = _get_varint(body, 1)
    if count > MAX_CHANNELS:
        raise BadCursor("cursor holds too many channels")
    entries: dict[bytes, StreamPosition] = {}
    for _ in range(count):
        if pos + _TAG + 1 > len(body):
            raise BadCursor("cursor is truncated")
        tag = body[pos : pos + _TAG]
        pos += _TAG
        size = body[pos]
        pos += 1
        if pos + size > len(body):
            raise BadCursor("cursor is truncated")
        raw_epoch = body[pos : pos + size]
        if not _epoch_fits(raw_epoch):
            # A cursor this hub could not have written: refused here, not when one is echoed.
            raise BadCursor("cursor holds an invalid epoch")
        try:
            epoch = raw_epoch.decode("ascii")
        except UnicodeDecodeError:
            raise BadCursor("cursor holds an invalid epoch") from None
        pos += size
        offset, pos = _get_varint(body, pos)
        entries[tag] = StreamPosition(epoch, offset)
    if pos != len(body):
        raise BadCursor("cursor has trailing bytes")
    return entries
