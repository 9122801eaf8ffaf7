"""The ``clarion.fast_stream`` extension: shared, pre-framed chunks for streaming responses.

Server-Sent Events are the WebSocket fan-out's twin: every subscriber of a channel receives the
same event bytes, and with chunked transfer encoding even the chunk framing is the same. An
HTTP request's scope carries ``scope["extensions"]["clarion.fast_stream"]["open"]``: once the
app has sent ``http.response.start`` for a chunked response, ``open()`` returns a stream whose
``push(chunk)`` takes complete, already chunk-framed bytes
(:func:`clarion.protocol.frames.http_chunk`) and coalesces them into one write per connection per
loop iteration, like :class:`~clarion.server.fastws.Outbox`. The app still ends the response with
a normal ``http.response.body`` message (``more_body: False``), which writes what was pushed
first.
``drop_pending()`` forgets what was pushed and not yet written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from clarion.asgitypes import FAST_STREAM
from clarion.server.fastws import Outbox

if TYPE_CHECKING:
    from clarion.server.http import HttpProtocol

FAST_STREAM_EXTENSION = FAST_STREAM


class ChunkStream(Outbox):
    """Pushed chunks of one streaming response, written once per loop iteration."""

    __slots__ = ("_conn",)

    def __init__(self, conn: HttpProtocol, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._conn = conn
        self.transport = conn.transport
        self.init_outbox(loop, limit)

    def _log(self, level: int, msg: str, *args: object) -> None:
        conn = self._conn
        conn.registry.streams.log(level, conn.peer_key, msg, *args)

    def on_eof_flushed(self) -> None:  # pragma: no cover - a stream never half-closes
        return None

    def on_overflow_default(self) -> None:
        self._log(logging.INFO, "stream send buffer over %d bytes: closing", self._limit)
        self._conn.close()

    def on_hard_overflow(self) -> None:
        self._log(
            logging.WARNING,
            "stream send buffer over twice its limit of %d bytes: closing",
            self._limit,
        )
        self.discard_outbox()
        self.transport.abort()

    def drop_pending(self) -> None:
        """Forget what was pushed and not yet written (a reader too slow to take it)."""
        if not self._sealed:
            self._out.clear()
            self._out_bytes = self._held_bytes
        self._drop_held()
        # Nothing waits any more: the stream's last chunk (the reason it ends) may go.
        self._cut = False

    @property
    def closed(self) -> bool:
        return self.transport.is_closing()
