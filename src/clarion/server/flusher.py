"""The flush: once per event loop iteration, every connection with frames to write writes them
in one ``write`` each (see :mod:`clarion.server.fastws`), then the answers queued to go with
them (the direct routes' answers: :mod:`clarion.server.direct`).

``flush_boxes`` is the loop over the dirty connections: :func:`flush_each` here, or its compiled
twin when ``clarion.server.fastws.use_compiled`` says so.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clarion.core.limits import LogLimit

if TYPE_CHECKING:
    from clarion.server.fastws import Outbox

# Under the fast path's name: a failed flush is a WebSocket connection's.
log = logging.getLogger("clarion.server.fastws")
# Tracebacks a peer may cause per request or frame: one per kind of failure a minute.
_failures = LogLimit(log)


class Flusher:
    """One per event loop: writes the frames of every dirty connection once per iteration, then
    the answers queued to go with them (:meth:`after`)."""

    __slots__ = ("__weakref__", "_after", "_dirty", "_loop", "_scheduled", "interval")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Outbox] = []
        self._after: list[tuple[Callable[[Any], None], Any]] = []
        self._scheduled = False
        # 0: flush at the end of the current iteration. A few hundred microseconds let frames
        # of several publications share one write per connection: fewer syscalls under load,
        # for that much added latency (see BENCHMARKS.md).
        self.interval = 0.0

    def mark(self, box: Outbox) -> None:
        self._dirty.append(box)
        if not self._scheduled:
            self._schedule()

    def after(self, write: Callable[[Any], None], arg: Any) -> None:
        """``write(arg)`` once this iteration's frames are written, with the iteration's other
        such writes (the direct routes' answers: see ``clarion.server.direct``)."""
        self._after.append((write, arg))
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        if self.interval > 0:
            self._loop.call_later(self.interval, self.flush)
        else:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        flush_boxes(dirty)
        if self._after:
            after, self._after = self._after, []
            for write, arg in after:
                try:
                    write(arg)
                except Exception as exc:
                    # One broken connection must not leave the others' answers unwritten.
                    _failures.log(
                        logging.ERROR,
                        "answer " + type(exc).__name__,
                        "writing an answer failed",
                        exc_info=exc,
                    )


def flush_each(dirty: list[Outbox]) -> None:
    for box in dirty:
        try:
            box.flush()
        except Exception as exc:
            report(box, exc)


def flush_one(box: Outbox) -> None:
    try:
        box.flush()
    except Exception as exc:
        report(box, exc)


def report(box: Outbox, exc: BaseException) -> None:
    # One broken connection must not starve the others queued behind it.
    _failures.log(
        logging.ERROR,
        "flush " + type(exc).__name__,
        "flushing a websocket connection failed",
        exc_info=exc,
    )


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Flusher] = (
    weakref.WeakKeyDictionary()
)


def flusher_for(loop: asyncio.AbstractEventLoop) -> Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = Flusher(loop)
    return flusher


flush_boxes: Callable[[list[Outbox]], None] = flush_each
