"""Inbound permessage-deflate for the ``websockets`` frame parser: :mod:`clarion.protocol.deflate`
behind the library's extension interface.

The parser hands each data frame to :meth:`Inflate.decode` with what is left of the message's
size budget (``max_message_bytes`` less what the message already inflated to): a message that
inflates beyond it fails the connection with 1009, invalid compressed data with 1002. Outbound
frames are clarion's own (:func:`clarion.protocol.deflate.frame`); the protocol object only
writes control frames, which are never compressed.
"""

from __future__ import annotations

import dataclasses

from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.extensions.base import Extension
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionName

from clarion.protocol.deflate import EXTENSION, InflateError, Inflater, TooBig


class Inflate(Extension):
    """One connection's inbound permessage-deflate: the message being inflated, if any."""

    __slots__ = ("_message",)
    name = ExtensionName(EXTENSION)

    def __init__(self) -> None:
        self._message: Inflater | None = None

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        opcode = frame.opcode
        if opcode is Opcode.CONT:
            message = self._message
            if message is None:
                return frame  # a fragment of an uncompressed message
            if frame.rsv1:
                raise ProtocolError("RSV1 set on a continuation frame")
        elif opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.rsv1:
                self._message = None
                return frame
            message = self._message = Inflater()
        else:
            return frame  # control frames are never compressed (frame.check() refuses RSV1)
        try:
            data = message.feed(bytes(frame.data), frame.fin, max_size)
        except TooBig:
            self._message = None
            raise PayloadTooBig(None, max_size or 0) from None
        except InflateError as exc:
            self._message = None
            raise ProtocolError(str(exc)) from None
        if frame.fin:
            self._message = None
        return dataclasses.replace(frame, data=data, rsv1=False)

    def encode(self, frame: Frame) -> Frame:
        return frame
