"""Resume: what a subscriber is sent when it joins a channel, from a cursor or from the top.

Pure functions over engine values — no hub, no session, no I/O — so the algorithm is tested
on its own (``tests/core/test_resume_plan.py``); :meth:`Session.subscribe` reads the history,
asks :func:`plan_resume` what to send, and sends it, after a :class:`SubscribeResult` (the
reply: where the subscriber stands, and whether it recovered).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from clarion.core.pages import fitting, page_bytes
from clarion.engines.base import History
from clarion.errors import BadCursor
from clarion.protocol.cursor import Cursor, encode_single
from clarion.protocol.publication import Publication, StreamPosition


def position_for(channel: str, since: str | StreamPosition | None) -> StreamPosition | None:
    """The position a cursor token (or a position) holds for ``channel``."""
    if since is None or isinstance(since, StreamPosition):
        return since
    position = Cursor.decode(since).get(channel)
    if position is None:
        raise BadCursor(f"cursor holds no position for channel {channel!r}")
    return position


def reset_reason(history: History, since: StreamPosition) -> str:
    """Why ``history`` cannot continue from ``since``."""
    if since.epoch != history.position.epoch:
        return "epoch"  # the history the cursor pointed into is gone
    if since.offset > history.position.offset:
        return "position"  # a position this stream never reached
    return "trimmed"  # older than what history still holds (size or TTL)


def history_reset(history: History, since: StreamPosition | None, reverse: bool) -> str | None:
    """The reset reason of a history read from ``since``, or ``None`` when it is covered.

    Read newest first (``reverse``), only ``epoch`` and ``position`` apply: reaching the
    oldest publication held is the end of the pages, not a gap.
    """
    if since is None:
        return None
    if reverse:
        top = history.position
        if since.epoch != top.epoch or since.offset > top.offset + 1:
            return reset_reason(history, since)
        return None
    return None if history.covers(since) else reset_reason(history, since)


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    channel: str
    position: StreamPosition
    cursor: str
    recovered: bool
    reset: str | None  # the reset reason when the history could not cover the gap
    # Where the subscriber stands before what it is sent first: ``since`` when that was
    # covered, just before the newest publication with ``latest``, else ``position``. What a
    # client stores to resume from until those publications come.
    start: StreamPosition

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channel": self.channel,
            "epoch": self.position.epoch,
            "offset": self.position.offset,
            "cursor": self.cursor,
            "recovered": self.recovered,
        }
        if self.reset is not None:
            out["reset"] = self.reset
        start = self.start
        if start != self.position:
            # Publications from before the top follow (resumed, or ``latest``): the client
            # stands here until they come, so a drop in between resumes here, not at the top.
            out["since"] = encode_single(self.channel, start.epoch, start.offset)
        return out


@dataclass(frozen=True, slots=True)
class Reset:
    """Tell the subscriber it missed publications: ``reason``, and where it goes on from."""

    reason: str
    cursor: str


@dataclass(frozen=True, slots=True)
class Resume:
    """What to send a new subscriber once its reply is out, in order, and where it ends."""

    reset: str | None  # why ``since`` could not be covered (``None``: recovered, or no cursor)
    sends: list[Publication | Reset]
    last: StreamPosition  # the position of the last publication the subscriber then holds
    start: StreamPosition  # where it is before ``sends``: a stream's first id says this
    # The replay stopped at its byte budget: publications after ``last`` are still to come,
    # so the subscriber cannot go live; it resumes from ``last`` on a new connection.
    cut: bool = False
    replayed: int = 0  # what the publications read from history count for in a page

    @property
    def recovered(self) -> bool:
        return self.reset is None


def plan_resume(
    channel: str,
    history: History,
    since: StreamPosition | None,
    latest: bool,
    buffered: Iterable[Publication],
    budget: int | None = None,
    overhead: int = 0,
    paged: bool = False,
) -> Resume:
    """Join ``history`` (read after the subscription started buffering) and the live
    publications ``buffered`` meanwhile, without a gap or a repeat.

    ``history`` was read from ``since`` (``None``: no cursor; with ``latest``, the newest
    publication only). Offsets de-duplicate the overlap; a buffered publication of another
    epoch is preceded by an ``epoch`` reset.

    ``budget``: the bytes the replayed publications may take (:mod:`~clarion.core.pages`);
    past it the plan stops there (``cut``) and sends nothing buffered. ``overhead``: the
    transport's framing per publication, counted in the budget too. ``paged``: ``history``
    is a page (:func:`~clarion.core.pages.read_start`), which ends before the channel's top
    when more is stored: the plan is cut there as well.
    """
    reason = None
    if since is not None and not history.covers(since):
        reason = reset_reason(history, since)
    sends: list[Publication | Reset] = []
    if reason is not None:
        top = history.position
        sends.append(Reset(reason, encode_single(channel, top.epoch, top.offset)))
    last = since if (since is not None and reason is None) else history.position
    start = last
    replayed = 0
    if since is None and latest and history.publications:
        first = history.publications[0]  # the newest, sent first: the start is just before it
        start = StreamPosition(first.epoch, first.offset - 1)
    if (since is not None and reason is None) or (since is None and latest):
        pubs = history.publications
        count = len(pubs) if budget is None else fitting(pubs, budget, overhead)
        for pub in pubs[:count]:
            sends.append(pub)
            last = pub.position
        replayed = page_bytes(pubs[:count], overhead)
        if count < len(pubs) or (paged and short_of(last, history.position)):
            return Resume(reason, sends, last, start, cut=True, replayed=replayed)
    for pub in buffered:
        if pub.epoch != last.epoch:
            sends.append(Reset("epoch", encode_single(channel, pub.epoch, pub.offset - 1)))
        elif pub.offset <= last.offset:
            continue
        sends.append(pub)
        last = pub.position
    return Resume(reason, sends, last, start, replayed=replayed)


def short_of(last: StreamPosition, top: StreamPosition) -> bool:
    """Does a page read up to ``last`` leave stored publications of ``top``'s epoch after it?"""
    return last.epoch == top.epoch and last.offset < top.offset


def waits_ahead(live: StreamPosition | None, last: StreamPosition) -> bool:
    """Does a subscriber at ``last`` hold publications the channel has not delivered live yet?

    Pub/sub lags the history just read, or the client comes from a node that was ahead: it
    goes live once the channel gets there, and gets nothing twice.
    """
    return live is not None and live.epoch == last.epoch and live.offset < last.offset
