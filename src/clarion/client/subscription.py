"""Subscriptions: a bounded buffer per channel, its resume point, and the iterator over it.

A transport feeds a :class:`Feed`; the caller reads it through a :class:`Subscription`. The feed
remembers two cursors: ``resume_cursor``, just after the last item *buffered* (where a reconnect
resumes, so nothing buffered is asked for twice), and ``cursor``, just after the last item *read*
(what a caller persists to resume in another process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from clarion.client.errors import ClientClosed
from clarion.client.items import Message, Reset, position_of
from clarion.protocol.publication import StreamPosition

log = logging.getLogger(__name__)

Item = Message | Reset
WARN_EVERY = 60.0  # seconds between two warnings that a subscription's reader is behind


def _retrieve(future: asyncio.Future[None]) -> None:
    # Nobody may be waiting for readiness; read the outcome so asyncio does not warn about it.
    if not future.cancelled():
        future.exception()


class Feed:
    """One subscription's state, shared by the transport that fills it and the reader."""

    __slots__ = (
        "_readable",
        "_writable",
        "capacity",
        "carrier",
        "channel",
        "cursor",
        "done",
        "error",
        "items",
        "latest",
        "live",
        "on_overflow",
        "on_resume",
        "paused",
        "position",
        "ready",
        "resume_cursor",
        "server",
        "since",
        "task",
        "warned",
    )

    def __init__(
        self, channel: str, since: str | None, capacity: int, *, latest: bool = False
    ) -> None:
        self.channel = channel
        self.since = since
        # Ask for the newest stored publication first; only while nothing resumes (``since``
        # wins), so a reconnect never asks for it again.
        self.latest = latest
        self.capacity = capacity
        self.resume_cursor = since
        self.position: StreamPosition | None = position_of(channel, since)
        self.cursor = since
        self.items: deque[Item] = deque()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieve)
        # ``live``: the hub confirmed this subscription on the current connection; pushes that
        # arrive before that confirmation belong to an earlier subscription and are ignored.
        self.live = False
        # ``paused``: the buffer overflowed; the transport stopped the stream and resumes it from
        # ``resume_cursor`` once the reader has caught up (``on_resume``).
        self.paused = False
        self.on_overflow: Callable[[Feed], None] | None = None
        # Over SSE: the newest stream the hub has answered for this feed, the only one that
        # delivers to it (make-before-break has two open for a while).
        self.carrier: object | None = None
        self.on_resume: Callable[[Feed], None] | None = None
        self.done = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        # The hub made this subscription (the backend, or the token's ``subs`` claim).
        self.server = False
        self.warned = -WARN_EVERY  # when the reader's falling behind was last logged
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    # ---- the transport's side -----------------------------------------------------------------

    def is_duplicate(self, message: Message) -> bool:
        last = self.position
        return (
            last is not None
            and message.epoch == last.epoch
            and message.offset <= last.offset
            and not message.ephemeral
        )

    def offer(self, item: Item) -> bool:
        """Buffer ``item`` if there is room; advance the resume point. False when full."""
        if self.done:
            return True  # nobody reads any more: nothing to keep, nothing to resume
        if len(self.items) >= self.capacity:
            return False
        if isinstance(item, Message) and item.ephemeral:
            # A live signal moves no position: it carries the one it came at.
            self.items.append(Message(item.publication, self.resume_cursor or ""))
            self._readable.set()
            return True
        self.items.append(item)
        self.resume_cursor = item.cursor
        if isinstance(item, Message):
            self.position = item.position  # known: no need to decode the cursor
        else:
            self.position = position_of(self.channel, item.cursor)
        self._readable.set()
        return True

    def advance(self, cursor: str) -> None:
        """Move the resume point without an item (an empty poll, a subscribe confirmation)."""
        self.resume_cursor = cursor
        self.position = position_of(self.channel, cursor)

    def deliver(self, item: Item) -> None:
        """Buffer ``item`` pushed on a shared connection; never waits (other feeds share it)."""
        if not self.live or self.paused or self.done:
            return
        if isinstance(item, Message) and self.is_duplicate(item):
            return
        if not self.offer(item):
            # Once a minute at most: a reader that stays behind pauses again and again.
            now = time.monotonic()
            level = logging.WARNING if now - self.warned >= WARN_EVERY else logging.DEBUG
            if level == logging.WARNING:
                self.warned = now
            log.log(
                level,
                "subscription to %s: buffer full (%d items), pausing until the reader catches up",
                self.channel,
                self.capacity,
            )
            self.paused = True
            self.live = False
            if self.on_overflow is not None:
                self.on_overflow(self)

    async def put(self, item: Item) -> None:
        """Buffer ``item`` from a feed-owned stream, waiting for room (backpressure)."""
        if isinstance(item, Message) and self.is_duplicate(item):
            return
        while not self.offer(item):
            await self.wait_room()

    async def wait_room(self) -> None:
        while len(self.items) >= self.capacity and not self.done:
            self._writable.clear()
            await self._writable.wait()

    def confirmed(self, cursor: str | None, *, start: bool = False) -> None:
        """The hub confirmed the subscription; ``cursor`` is the stream's position at that time,
        or with ``start`` where the feed stands before what follows (the hub said so)."""
        self.live = True
        if self.resume_cursor is None and cursor is not None:
            self.advance(cursor)
            if self.latest and not start and self.position is not None:
                # The newest stored publication sits at the confirmed position itself and is
                # still to come: it must not pass for a duplicate.
                self.position = StreamPosition(self.position.epoch, self.position.offset - 1)
        if self.cursor is None:
            self.cursor = self.resume_cursor
        if not self.ready.done():
            self.ready.set_result(None)

    def finish(self, error: BaseException | None = None, *, drop: bool = False) -> None:
        """End the feed. The reader gets what is buffered (unless ``drop``), then ``error``."""
        if self.done:
            return
        self.done = True
        self.live = False
        self.error = error
        if drop:
            self.items.clear()
        if not self.ready.done():
            self.ready.set_exception(error if error is not None else ClientClosed())
        self._readable.set()
        self._writable.set()

    # ---- the reader's side --------------------------------------------------------------------

    async def get(self) -> Item:
        while not self.items:
            if self.done:
                if self.error is not None:
                    # One error may end many subscriptions (a refusal of several channels):
                    # each raise starts its own traceback, not one grown by all of them.
                    raise self.error.with_traceback(None)
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        item = self.items.popleft()
        self.cursor = item.cursor
        self._writable.set()
        if self.paused and len(self.items) <= self.capacity // 2 and not self.done:
            self.paused = False
            if self.on_resume is not None:
                self.on_resume(self)
        return item


class Subscription:
    """An async iterator over one channel: :class:`Message` items, and :class:`Reset` items
    when the hub could not fill a gap.

    As an async context manager it waits until the hub confirms the subscription on enter and
    unsubscribes on exit. Without one, the subscription ends when :meth:`unsubscribe` is called,
    when the client closes, or when this object is garbage collected.
    """

    __slots__ = ("__weakref__", "_feed", "_release")

    def __init__(self, feed: Feed, release: Callable[[Feed], None]) -> None:
        self._feed = feed
        self._release = release

    @property
    def channel(self) -> str:
        return self._feed.channel

    @property
    def cursor(self) -> str | None:
        """Resumes just after the last item returned (or at the point subscribed from)."""
        return self._feed.cursor

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        return await self._feed.get()

    async def ready(self) -> None:
        """Wait until the hub has confirmed the subscription; raise if it was refused."""
        await asyncio.shield(self._feed.ready)

    async def unsubscribe(self) -> None:
        """Stop the subscription; iteration ends at once (buffered items are dropped)."""
        self._release(self._feed)

    async def __aenter__(self) -> Subscription:
        try:
            await self.ready()
        except BaseException:
            self._release(self._feed)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release(self._feed)

    def __repr__(self) -> str:
        return f"Subscription({self.channel!r}, cursor={self.cursor!r})"
