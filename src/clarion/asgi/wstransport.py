"""How the clarion WebSocket protocol is encoded for the hub: publications, replies, pushes.

The bytes go through the connection's :mod:`~clarion.asgi.pipe`. Under ``clarion serve`` a
publication is one pre-built frame shared by every subscriber and delivered by the server's own
loop; under any other ASGI server, one text message decoded once and shared likewise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from clarion.asgi.pipe import Pipe
from clarion.core.fanout import WireFormat, cursor_if_stored, publication_cursor
from clarion.protocol import deflate, messages
from clarion.protocol.codes import disconnect_for
from clarion.protocol.frames import (
    OP_TEXT,
    RSV1,
    frame_header,
    latest,
    latest_text,
    payload_of,
    text_frame,
)
from clarion.protocol.publication import Publication, StreamPosition

if TYPE_CHECKING:
    from clarion.core.resume import SubscribeResult
    from clarion.core.session import Session


def _frame(pub: Publication) -> bytes:
    cursor = None if pub.ephemeral else publication_cursor(pub)
    frame = text_frame(messages.encode_publication(pub, cursor))
    if pub.key is not None:  # a keyed signal: a connection that is behind keeps the newest
        return latest(frame, pub.slot())
    return frame


def _text(pub: Publication) -> str:
    text = messages.encode_publication(pub, cursor_if_stored(pub)).decode()
    if pub.key is not None:  # a keyed signal: a queue that is behind keeps the newest
        return latest_text(text, pub.slot())
    return text


WS_TEXT = WireFormat("clarion.v1/text", "ws", _text)
# One frame format per server fan-out loop (in practice one): subscribers of one format share
# each publication's frame and are delivered to by the server's own loop.
_FRAME_FORMATS: dict[tuple[Any, int], WireFormat] = {}


def frame_format(
    push_many: Callable[[Iterable[Any], bytes], None], deflate_bits: int = 0
) -> WireFormat:
    """The format of connections delivered to by ``push_many``; with permessage-deflate
    (``deflate_bits``: its window), one per window, in practice one: 15."""
    key = (push_many, deflate_bits)
    fmt = _FRAME_FORMATS.get(key)
    if fmt is None:
        if deflate_bits:
            plain = frame_format(push_many)
            encode = _deflated(plain, deflate_bits)
            name = f"clarion.v1/deflate{deflate_bits}"
            fmt = _FRAME_FORMATS[key] = WireFormat(name, "ws", encode, push_many)
        else:
            fmt = _FRAME_FORMATS[key] = WireFormat("clarion.v1/frame", "ws", _frame, push_many)
    return fmt


def _deflated(plain: WireFormat, bits: int) -> Callable[[Publication], bytes]:
    def encode(pub: Publication) -> bytes:
        # Compressed once for every subscriber of this window; a message not worth compressing
        # is the very frame the uncompressed format sends.
        plain_frame: bytes = pub.encoded(plain, plain.encode)
        data = deflate.compress(payload_of(plain_frame), bits)
        if data is None:
            return plain_frame
        frame = frame_header(len(data), OP_TEXT | RSV1) + data
        if pub.key is not None:
            return latest(frame, pub.slot())
        return frame

    return encode


class WsTransport:
    """The hub's :class:`~clarion.core.transport.Transport` for one ``/ws`` connection."""

    kind = "ws"
    __slots__ = ("closed", "fmt", "on_close", "pipe", "push", "target")

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.push = pipe.push
        self.target = pipe.target
        self.fmt = frame_format(pipe.deliver, pipe.deflate_bits) if pipe.framed else WS_TEXT
        self.closed = False
        # Called once the session is ended, while the socket may still be open (its endpoint
        # counts it from then on, as a socket without a session).
        self.on_close: Callable[[], None] | None = None

    @property
    def last_activity(self) -> float:
        return self.pipe.last_activity

    def ping(self) -> None:
        if not self.closed:
            self.pipe.ping()

    def backlog(self) -> int:
        return self.pipe.backlog()

    def cut(self) -> bool:
        return self.pipe.cut

    def watch_overflow(self) -> None:
        self.pipe.watch_overflow()

    def reply(self, payload: bytes) -> None:
        if not self.closed:
            self.pipe.send(payload)

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        self.reply(messages.encode_reset(channel, reason, cursor))

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        self.reply(messages.encode_presence_event(kind, event))

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        self.reply(messages.encode_unsubscribe(channel, reason))

    async def hub_subscribe(
        self, session: Session, channel: str, since: StreamPosition | None, *, server: bool
    ) -> None:
        def ready(result: SubscribeResult) -> None:
            self.reply(messages.encode_subscribe(result.to_dict()))

        await session.subscribe(
            channel,
            self.fmt,
            self.push,
            since=since,
            on_ready=ready,
            target=self.target,
            server=server,
        )

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        last = messages.encode_disconnect(code, reason, disconnect_for(code).reconnect)
        self.pipe.close(code, reason, last)
        if self.on_close is not None:
            self.on_close()
