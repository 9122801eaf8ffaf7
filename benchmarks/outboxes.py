"""Connections' outboxes with no socket behind them, for the benchmarks that time the fan-out's
own loops in process (``fanout_loop``, ``stomp_frame``): what the per-connection code costs,
without the kernel's work or another process's noise."""

from __future__ import annotations

import asyncio
from typing import Any

from clarion.server.fastws import Outbox


class NullTransport:
    """Accepts writes and forgets them; never paused, never closing."""

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class StubOutbox(Outbox):
    __slots__ = ()
    deflate_bits = 0  # a connection that did not negotiate permessage-deflate

    def on_eof_flushed(self) -> None:
        return None

    def on_overflow_default(self) -> None:
        return None


def outboxes(n: int, loop: asyncio.AbstractEventLoop, limit: int) -> list[StubOutbox]:
    """``n`` outboxes over transports that forget, each with a send limit of ``limit`` bytes."""
    boxes = []
    for _ in range(n):
        box = StubOutbox()
        box.transport = NullTransport()  # type: ignore[assignment]
        box.init_outbox(loop, limit)
        boxes.append(box)
    return boxes
