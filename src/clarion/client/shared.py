"""Every subscription of a client over SSE or polling, on one stream.

The hub reads several channels on one ``/sse`` stream or one ``/poll`` loop. A stream per
subscription would cost a connection and a hub session each, counted against
``limits.max_connections_per_user`` and ``max_connections_per_ip``: a client with more
subscriptions than that cap could not hold them. So all of a client's subscriptions share one
stream (a few, past what one request line holds), reopened whenever they change (a subscribe,
an unsubscribe, a reader that fell behind or caught up), with the changes of one turn of the
event loop taken together. A reopening never cuts an open the hub has not answered yet (see
:meth:`SharedStream.run_opens`).

Every subscription keeps its own position (a cursor of its channel alone: a publication's, a
reset's, where its stream opened), moved only when an item is buffered. A reopened stream asks
for each channel from there, in one combined cursor, so nothing is missed or repeated however
often, or wherever, the stream is cut. A subscription whose reader is behind leaves the stream
until the reader has caught up (the others go on), then rejoins it from its own position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Coroutine, Iterable
from typing import Any
from urllib.parse import quote

from clarion.client.backoff import retry_after_delay
from clarion.client.errors import ConnectFailed, Disconnected, RequestFailed
from clarion.client.items import position_of
from clarion.client.refusals import Retry
from clarion.client.streams import StreamContext
from clarion.client.subscription import Feed
from clarion.errors import BadCursor
from clarion.protocol.codes import CloseCode
from clarion.protocol.cursor import Cursor
from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import StreamPosition

log = logging.getLogger(__name__)

# One open of the stream for the feeds given, which calls its third argument once the hub has
# answered it (an event stream's opening id, a poll's reply): why it ended (to retry after a
# backoff), or None when it ended for a change of the feeds (to reopen at once).
Opener = Callable[["SharedStream", list[Feed], Callable[[], None]], Coroutine[Any, Any, str | None]]
# Bytes of query one stream's request line may hold: nginx's default for a whole request line
# is 8 KB (``large_client_header_buffers``), the hub's own head limit 16 KiB.
LANE_BYTES = 6000
# A channel's share of a query besides its name: ``channel=``, ``&``, and its position in the
# combined cursor (about 31 bytes, base64) or a ``latest``.
CHANNEL_QUERY_BYTES = 60


class SharedStream:
    """The SSE stream or poll loop of a client (one, or a few: :func:`lanes`), for all of its
    subscriptions."""

    def __init__(
        self,
        ctx: StreamContext,
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
        run: Callable[[SharedStream], Coroutine[Any, Any, None]],
    ) -> None:
        self.ctx = ctx
        self.feeds: dict[str, Feed] = {}
        self.attempt = 0  # failed opens in a row (the backoff's step); 0 once one is answered
        self.answered = False  # an open was answered once: the hub is there
        self._first_try: float | None = None
        self.why = "no answer"  # how the last open ended, for the error when the tries end
        self.retry_after = 0.0  # seconds a rate limit asked the next try to wait, at least
        self._spawn = spawn
        self._run = run
        self._task: asyncio.Task[None] | None = None
        self._changing = False
        self.changed = asyncio.Event()

    # ---- membership ---------------------------------------------------------------------------

    def add(self, feed: Feed) -> None:
        self.feeds[feed.channel] = feed
        feed.on_overflow = self._change
        feed.on_resume = self._change
        self._change()
        if self._task is None or self._task.done():
            if not self.answered:
                self._first_try = None  # a stream that starts again has a deadline of its own
            self._task = self._spawn(self._run(self), "clarion-client-stream")

    def remove(self, feed: Feed) -> None:
        """The reader let ``feed`` go: the stream goes on without it."""
        if self.feeds.get(feed.channel) is feed:
            del self.feeds[feed.channel]
            self._change()

    def end(self, feed: Feed, error: BaseException | None) -> None:
        """The hub ended ``feed`` (or refused it): it leaves without a reopening of its own."""
        if self.feeds.get(feed.channel) is feed:
            del self.feeds[feed.channel]
        feed.finish(error)

    def wanted(self) -> list[Feed]:
        """The feeds the next open asks for: all but those whose reader is behind."""
        return [f for f in self.feeds.values() if not f.paused and not f.done]

    def _change(self, _feed: Feed | None = None) -> None:
        # Once per turn of the loop: a caller subscribing to ten channels in a row reopens once.
        if self._changing:
            return
        self._changing = True
        asyncio.get_running_loop().call_soon(self._reopen)

    def _reopen(self) -> None:
        self._changing = False
        self.changed.set()

    # ---- opening ------------------------------------------------------------------------------

    async def run_opens(self, opener: Opener, *, beside: bool) -> str | None:
        """Open the stream for the feeds wanted now, until it ends or they change: why it
        ended (to retry after a backoff), None when they changed (to reopen at once). Raises
        what the open raised (a refusal, the hub saying to stop).

        A change never cuts an open the hub has not answered yet: cut at once, subscriptions
        that change faster than the hub answers would starve every channel of the stream. With
        ``beside`` (SSE) the open that replaces it is asked beside it; it delivers until the hub
        has answered that one (which delivers from then on: :attr:`Feed.carrier`) and is cut
        once that one has opened. Else (polling) it is cut once answered (the first poll of an
        open is a plain one, answered at once).

        Feeds whose query would not fit one request line go on streams of their own
        (:func:`lanes`); when one ends, they all reopen, each feed from its own position.
        Until an open was answered once, the tries end at ``open_timeout``: the subscriptions
        end with :class:`ConnectFailed`, as a first WebSocket connection would.
        """
        self.changed.clear()
        feeds = self.wanted()
        if not feeds:
            await self.changed.wait()
            return None
        if self._first_try is None:
            self._first_try = asyncio.get_running_loop().time()
        left = self._left()
        if left is not None and left <= 0:
            self._give_up()
            return None
        current = Opening(self, opener, feeds)
        after: Opening | None = None  # beside: the open that replaces ``current`` once open
        change = asyncio.ensure_future(self.changed.wait())
        try:
            while True:
                waits: set[asyncio.Future[Any]] = {change, *current.lanes}
                if not current.opened.done():
                    waits.add(current.opened)
                if after is not None:
                    waits |= {after.opened, *after.lanes}
                done, _ = await asyncio.wait(
                    waits, timeout=self._left(), return_when=FIRST_COMPLETED
                )
                if not done:  # the first open's deadline, nothing answered
                    self.why = "no answer"
                    self._give_up()
                    return None
                if after is not None and (after.opened in done or not done.isdisjoint(after.lanes)):
                    # Opened, or ended before it could: the replacement takes over either way.
                    current.cancel()
                    current, after = after, None
                    if _over_cap(current, done):
                        # The hub counted the stream it replaces, cut now: asked again alone.
                        self.why = "the hub's connection cap counted the stream replaced"
                        return self.why
                elif not done.isdisjoint(current.lanes) and after is not None:
                    # The stream ended while its replacement opens: that one takes over.
                    _raise_stop(current, done)
                    current.cancel()
                    current, after = after, None
                if not done.isdisjoint(current.lanes):
                    return self._ended(current, done)
                if change in done:
                    self.changed.clear()
                    change = asyncio.ensure_future(self.changed.wait())
                    (current if after is None else after).stale = True
                if current.stale and current.opened.done():
                    if not beside or not self.wanted():
                        return None  # reopened at once, by the caller
                    current.stale = False
                    after = Opening(self, opener, self.wanted())
        finally:
            change.cancel()
            current.cancel()
            if after is not None:
                after.cancel()

    def _ended(self, opening: Opening, done: set[asyncio.Future[Any]]) -> str | None:
        """Why ``opening`` ended (its lanes in ``done``); None to reopen at once."""
        why: str | None = None
        ended = False
        for finished in opening.lanes:
            if finished not in done or finished.cancelled():
                continue
            error = finished.exception()
            if isinstance(error, RequestFailed):
                # The hub answered: a refusal of some channels ends them, and the others
                # reopen at once; one that ends none of ours is not asked again before the
                # backoff.
                self.answered = True
                ended |= self.refused(opening.lanes[finished], error)
                why = f"refused: {error}"
            elif error is not None:
                raise error
            elif why is None:
                why = finished.result()
        if why is not None:
            self.why = why
        return None if ended else why

    def opened(self) -> None:
        """The hub answered an open with its stream."""
        self.attempt = 0
        self.answered = True

    async def pause(self, why: object) -> None:
        """Wait out the backoff delay after a failed open (less if the feeds change, or the
        first open's deadline comes first)."""
        delay = max(self.ctx.backoff.delay(self.attempt), retry_after_delay(self.retry_after))
        self.retry_after = 0.0
        self.attempt += 1
        left = self._left()
        if left is not None and left < delay:
            delay = max(left, 0.0)
        else:
            log.info("%s; retrying in %.1f s", why, delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.changed.wait()

    def refused_for(self, exc: BaseException) -> None:
        """An open failed with ``exc``: if a rate limit said when to ask again, the next try
        waits that long at least."""
        if isinstance(exc, Retry) and exc.wait:
            self.retry_after = max(self.retry_after, exc.wait)

    def _left(self) -> float | None:
        """Seconds left before the first open's deadline; None once an open was answered."""
        if self.answered or self._first_try is None or self.ctx.open_timeout is None:
            return None
        return self._first_try + self.ctx.open_timeout - asyncio.get_running_loop().time()

    def _give_up(self) -> None:
        timeout = self.ctx.open_timeout
        self._first_try = None  # a later subscription tries afresh
        self.end_all(ConnectFailed(f"could not connect within {timeout} s ({self.why})"))

    def refused(self, feeds: list[Feed], error: RequestFailed) -> bool:
        """End the feeds a refusal of one open is about; False if none of them was ours."""
        ours = [f for f in feeds if self.feeds.get(f.channel) is f]
        if error.channel is not None:
            ours = [f for f in ours if f.channel == error.channel]
        elif error.code == ErrorCode.TOO_MANY_CHANNELS and error.limit:
            ours = ours[error.limit :]  # the newest, as the WebSocket refuses them
        for feed in ours:
            self.end(feed, error)
        return bool(ours)

    def end_all(self, error: BaseException) -> None:
        for feed in list(self.feeds.values()):
            self.end(feed, error)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Opening:
    """One open of the stream: a request for each lane, opened once the hub answered them all."""

    def __init__(self, stream: SharedStream, opener: Opener, feeds: list[Feed]) -> None:
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stale = False  # the feeds changed since it was asked
        groups = lanes(feeds)
        self._waiting = len(groups)
        self.lanes = {
            asyncio.ensure_future(opener(stream, lane, self._answer_once())): lane
            for lane in groups
        }

    def _answer_once(self) -> Callable[[], None]:
        said = False

        def answered() -> None:
            nonlocal said
            if said:
                return
            said = True
            self._waiting -= 1
            if self._waiting == 0 and not self.opened.done():
                self.opened.set_result(None)

        return answered

    def cancel(self) -> None:
        self.opened.cancel()
        for lane in self.lanes:
            if not lane.done():
                lane.cancel()
            elif not lane.cancelled():
                lane.exception()  # replaced: what it ended with was dealt with, or is moot


def _errors(opening: Opening, done: set[asyncio.Future[Any]]) -> list[BaseException]:
    """What the lanes of ``opening`` that are in ``done`` raised."""
    return [
        error
        for lane in opening.lanes
        if lane in done and not lane.cancelled() and (error := lane.exception()) is not None
    ]


def _over_cap(opening: Opening, done: set[asyncio.Future[Any]]) -> bool:
    """Whether a lane of ``opening`` in ``done`` was refused for the hub's per-address or
    per-user connection cap (``too_many_connections``)."""
    return any(
        isinstance(error, Disconnected) and error.close_code == CloseCode.TOO_MANY_CONNECTIONS
        for error in _errors(opening, done)
    )


def _raise_stop(opening: Opening, done: set[asyncio.Future[Any]]) -> None:
    """Raise what a lane of ``opening`` in ``done`` raised that is not a refusal of its open
    (the hub saying to stop): a replacement does not take over from that."""
    for error in _errors(opening, done):
        if not isinstance(error, RequestFailed):
            raise error


def query(feeds: Iterable[Feed]) -> list[tuple[str, str]]:
    """The channels of ``feeds``, each from its own position (one combined cursor), and
    ``latest`` for those that start from now and ask for it."""
    params: list[tuple[str, str]] = []
    positions: dict[str, StreamPosition] = {}
    for feed in feeds:
        params.append(("channel", feed.channel))
        if feed.resume_cursor is not None:
            position = position_of(feed.channel, feed.resume_cursor)
            if position is not None:
                positions[feed.channel] = position
        elif feed.latest:
            params.append(("latest", feed.channel))
    if positions:
        params.append(("cursor", Cursor.of(positions).encode()))
    return params


def lanes(feeds: list[Feed]) -> list[list[Feed]]:
    """``feeds`` in groups whose query fits one request line (:data:`LANE_BYTES`): a client
    may hold 128 channels of 255 bytes, a stream of them all would be refused."""
    out: list[list[Feed]] = [[]]
    size = 0
    for feed in feeds:
        cost = len(quote(feed.channel, safe="")) + CHANNEL_QUERY_BYTES
        if out[-1] and size + cost > LANE_BYTES:
            out.append([])
            size = 0
        out[-1].append(feed)
        size += cost
    return out


def naming(feeds: list[Feed]) -> str:
    """The channels of ``feeds`` for a log line: all of a few, the first of many."""
    names = [feed.channel for feed in feeds]
    if len(names) <= 3:
        return ", ".join(names)
    return f"{', '.join(names[:3])} and {len(names) - 3} more"


def own_cursor(stream_cursor: Cursor, channel: str) -> str | None:
    """The cursor of ``channel`` alone at its position in a stream's combined cursor."""
    position = stream_cursor.get(channel)
    return None if position is None else Cursor.single(channel, position).encode()


def read_cursor(token: str) -> Cursor | None:
    try:
        return Cursor.decode(token)
    except BadCursor:
        log.warning("ignoring a stream position that is not a cursor: %.120r", token)
        return None
