"""How STOMP ``MESSAGE`` frames are encoded for the hub's fan-out, and written to a pipe.

A ``MESSAGE`` is cut in two (:mod:`clarion.protocol.stomp.message`): the tail, shared by every
subscriber, is built once per publication and flavour (escaping, ``ack`` header) as a wire
format; each delivery only adds the subscription's prefix and, on the fast path, the WebSocket
frame header for the combined length.

With permessage-deflate the tail is compressed once too, and each delivery puts the prefix in
front of it as an uncompressed deflate block (:func:`~clarion.protocol.deflate.stored_block`).

A tail of :data:`SHARED_TAIL` bytes or more is not copied per delivery: the frame is pushed as
two buffers, its own head and the shared tail (the copy would cost more than the second
append), so that the subscriptions of one connection to one destination hold one body between
them until the write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clarion.asgi.pipe import Pipe
from clarion.core.fanout import Push, WireFormat, cursor_if_stored
from clarion.protocol import deflate
from clarion.protocol.frames import (
    OP_BINARY,
    OP_TEXT,
    RSV1,
    Latest,
    LatestText,
    Slot,
    frame_header,
    latest,
    latest_text,
    text_frame,
)
from clarion.protocol.publication import Publication
from clarion.protocol.stomp import message_body, message_tail
from clarion.protocol.stomp.message import is_binary

HEART_BEAT = b"\n"
_HEART_BEAT_FRAME = text_frame(HEART_BEAT)
# From this tail length on, a delivery pushes its head and the shared tail as two buffers
# instead of one copy of both (see docs/stomp.md, "Fan-out cost").
SHARED_TAIL = 4096


def _body(pub: Publication) -> bytes:
    return message_body(pub)


def message_tail_of(pub: Publication, *, escaped: bool, ack: bool, ack_suffix: str = "") -> bytes:
    """The shared tail of ``pub``'s ``MESSAGE`` in one flavour."""
    body: bytes = pub.encoded("stomp/data", _body)
    return message_tail(
        pub, cursor_if_stored(pub), body, escaped=escaped, ack=ack, ack_suffix=ack_suffix
    )


class BinaryTail(bytes):
    """The tail of a ``MESSAGE`` whose body is not UTF-8: sent in a binary WebSocket message."""

    __slots__ = ()


def _formats(kind: str, encode: Callable[[bytes], Any]) -> dict[tuple[bool, bool], WireFormat]:
    def make(escaped: bool, ack: bool) -> WireFormat:
        def tail(pub: Publication) -> Any:
            frame = message_tail_of(pub, escaped=escaped, ack=ack)
            if is_binary(pub):
                return BinaryTail(frame)
            if pub.key is not None:  # a keyed signal: a connection that is behind keeps the newest
                slot = pub.slot()
                return latest(frame, slot) if encode is _same else latest_text(frame.decode(), slot)
            return encode(frame)

        name = f"stomp{'' if escaped else '1.0'}{'+ack' if ack else ''}/{kind}"
        return WireFormat(name, "stomp", tail)

    return {(e, a): make(e, a) for e in (True, False) for a in (True, False)}


def _same(tail: bytes) -> bytes:
    return tail


def _decode(tail: bytes) -> str:
    return tail.decode()


# Fast path: the tail stays bytes; ASGI path: decoded once, so each send only concatenates str.
FRAME_FORMATS = _formats("frame", _same)
TEXT_FORMATS = _formats("text", _decode)


class DeflatedTail(bytes):
    """A tail compressed on its own (permessage-deflate), with the first byte its frame has."""

    first: int  # OP_TEXT or OP_BINARY, with RSV1
    slot: Slot | None  # a keyed signal's, as in Latest


def _deflated_formats(bits: int) -> dict[tuple[bool, bool], WireFormat]:
    def make(plain: WireFormat) -> WireFormat:
        def tail(pub: Publication) -> Any:
            frame = pub.encoded(plain, plain.encode)  # shared with uncompressed subscribers
            data = deflate.compress(frame, bits)
            if data is None:
                return frame
            out = DeflatedTail(data)
            out.first = (OP_BINARY if type(frame) is BinaryTail else OP_TEXT) | RSV1
            out.slot = frame.slot if type(frame) is Latest else None
            return out

        return WireFormat(f"{plain.name}+deflate{bits}", "stomp", tail)

    return {flavour: make(plain) for flavour, plain in FRAME_FORMATS.items()}


_DEFLATED_FORMATS: dict[int, dict[tuple[bool, bool], WireFormat]] = {}


def deflated_formats(bits: int) -> dict[tuple[bool, bool], WireFormat]:
    """The formats of connections with permessage-deflate within a ``bits`` window."""
    formats = _DEFLATED_FORMATS.get(bits)
    if formats is None:
        formats = _DEFLATED_FORMATS[bits] = _deflated_formats(bits)
    return formats


class StompWire:
    """A connection's pipe as STOMP uses it: frames out, and one ``push`` per subscription."""

    __slots__ = ("_beat", "deflate_bits", "encode", "formats", "pipe", "send")

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.send: Callable[[bytes], None] = pipe.send
        framed = pipe.framed
        self.deflate_bits = pipe.deflate_bits if framed else 0
        if self.deflate_bits:
            self.formats = deflated_formats(self.deflate_bits)
        else:
            self.formats = FRAME_FORMATS if framed else TEXT_FORMATS
        self.encode: Callable[[bytes], Any] = _same if framed else _decode
        self._beat: bytes | str = _HEART_BEAT_FRAME if framed else HEART_BEAT.decode()

    def heart_beat(self) -> None:
        self.pipe.push(self._beat)

    def push_for(self, prefix: bytes) -> Push:
        """The fan-out's ``push`` for a subscription whose frames start with ``prefix``."""
        pipe_push = self.pipe.push
        if not self.pipe.framed:
            text = prefix.decode()

            def push_text(tail: str | bytes) -> None:
                if isinstance(tail, bytes):  # a BinaryTail
                    pipe_push(prefix + tail)
                elif type(tail) is LatestText:  # one slot per subscription, publisher and key
                    pipe_push(latest_text(text + tail, (text, *tail.slot[1:])))
                else:
                    pipe_push(text + tail)

            return push_text

        if self.deflate_bits:
            return self._deflated_push(prefix, self._framed_push(prefix))
        return self._framed_push(prefix)

    def _framed_push(self, prefix: bytes) -> Push:
        pipe_push = self.pipe.push
        push_pair = self.pipe.push_pair
        size = len(prefix)
        slot_prefix = prefix.decode()
        last_length = -1
        head = b""  # WebSocket header + prefix for frames of last_length bytes

        def push(tail: bytes) -> None:
            # Only the WebSocket header depends on this subscriber (through the prefix length);
            # a channel's publications often have the same length, so it is reused when it can.
            nonlocal last_length, head
            length = size + len(tail)
            if type(tail) is BinaryTail:
                if len(tail) >= SHARED_TAIL:
                    push_pair(frame_header(length, OP_BINARY) + prefix, tail)
                else:
                    pipe_push(frame_header(length, OP_BINARY) + prefix + tail)
                return
            if length != last_length:
                last_length = length
                head = frame_header(length) + prefix
            if type(tail) is Latest:  # one slot per subscription, publisher and key: one buffer
                pipe_push(latest(head + tail, (slot_prefix, *tail.slot[1:])))
            elif len(tail) >= SHARED_TAIL:
                push_pair(head, tail)
            else:
                pipe_push(head + tail)

        return push

    def _deflated_push(self, prefix: bytes, plain: Push) -> Push:
        """``plain`` for tails not worth compressing; compressed ones behind the prefix."""
        pipe_push = self.pipe.push
        push_pair = self.pipe.push_pair
        stored = deflate.stored_block(prefix)
        size = len(stored)
        slot_prefix = prefix.decode()

        def push(tail: bytes) -> None:
            if type(tail) is not DeflatedTail:
                plain(tail)
                return
            head = frame_header(size + len(tail), tail.first) + stored
            if tail.slot is not None:  # one slot per subscription, publisher and key: one buffer
                pipe_push(latest(head + tail, (slot_prefix, *tail.slot[1:])))
            elif len(tail) >= SHARED_TAIL:
                push_pair(head, tail)
            else:
                pipe_push(head + tail)

        return push
