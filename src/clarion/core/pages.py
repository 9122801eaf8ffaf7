"""The byte budget of a page of stored publications: one rule for every read of history.

A history reply (the ``history`` op, ``GET /api/history``, ``GET /client/history``), a poll
reply and the replay a resume starts with stop once their publications pass
``limits.send_queue_bytes``, the budget every connection's send queue has: one small request
must not make the hub build and queue tens of megabytes for one peer. A page always holds at
least one publication, so a reader that pages on (``more`` and ``cursor``, the next poll, a
resume from its last cursor) always gets further.
"""

from __future__ import annotations

from collections.abc import Sequence

from clarion.core.limits import Allowances
from clarion.engines.base import Engine, History
from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import NamespaceOptions

CURSOR_BYTES = 64  # counted per publication: its cursor and its separators in a reply
RESERVE = 1024  # kept out of a page for what goes with it (the reply's own fields)
FIRST_PIECE = 32  # publications in the first read of a page from a remote engine


def page_budget(limit: int) -> int:
    """The bytes of publications one history reply holds, for a send budget of ``limit``:
    the reply, its own fields included, fits in the budget of the connection it goes to."""
    return max(limit - RESERVE, 1)


def replay_budget(limit: int, queued: int) -> int:
    """The bytes of publications a resume replays to a connection with ``queued`` bytes
    already waiting. Half of what is left: the frames carry more than the publication's
    JSON (an SSE ``id:`` line, STOMP's headers), and must not take the connection over its
    budget by themselves."""
    return max((limit - queued) // 2, 1)


def page_bytes(pubs: Sequence[Publication], overhead: int = 0) -> int:
    """What ``pubs`` count for in a page (as :func:`fitting` counts them)."""
    return sum(len(pub.json()) for pub in pubs) + (CURSOR_BYTES + overhead) * len(pubs)


class ReadAllowance(Allowances):
    """The bytes of stored publications each reader is sent, across all its connections and
    requests to this node: one bucket per user, or per address without a user (``rate`` bytes
    a second, up to ``burst``).

    Each page is bounded by the send budget, but not how often a client asks for one: a
    poll with an old cursor, a stream reopened with one, a reconnect that resumes, a history
    read, each a small request that makes the hub send up to a megabyte, as often as the
    client likes. A page takes what its reader has left, and always one publication, so a
    reader still gets further (the next poll, page or resume goes on from there) and one over
    its allowance is sent a publication per request, not a page. A read that waits (on a
    remote engine) takes its page's bytes before it waits and gives back what it did not
    send, so that reads at once cannot each find the whole allowance. The allowance never
    goes below nothing: a publication larger than what was left holds its reader back no
    longer than one.
    """

    __slots__ = ()

    def budget(self, who: str, page: int) -> int:
        """The bytes of ``who``'s next page: ``page`` or what it has left, at least 1."""
        return max(min(page, int(self.left(who))), 1)

    def reserve(self, who: str, page: int) -> int:
        """:meth:`budget`, taken at once, for a read that waits before it knows what it sends:
        what it does not send goes back (:meth:`give_back`)."""
        taken = self.budget(who, page)
        self.spend(who, taken)
        return taken


def fitting(pubs: Sequence[Publication], budget: int, overhead: int = 0) -> int:
    """How many of ``pubs``, from the first, fit in ``budget`` bytes, each with ``overhead``
    bytes of framing besides (a transport's own, e.g. the ``id:`` line of an SSE stream of
    many channels); the first always fits, so a reader always gets further. The JSON of the
    publications past the first that does not fit is never made: a page costs the CPU of its
    budget, not of the read."""
    used = 0
    each = CURSOR_BYTES + overhead
    for count, pub in enumerate(pubs):
        used += len(pub.json()) + each
        if used > budget and count:
            return count
    return len(pubs)


async def read_page(
    engine: Engine,
    channel: str,
    options: NamespaceOptions,
    *,
    since: StreamPosition | None,
    limit: int,
    reverse: bool,
    budget: int,
    remote: bool,
) -> History:
    """One page of history: at most ``limit`` publications and ``budget`` bytes of them.

    In process a read is a slice of what is held. From a ``remote`` engine (Redis) a read of
    ``limit`` large publications would move megabytes only to be cut here: the page is read
    in growing pieces until it is full. ``position`` and ``earliest`` are the first read's.
    """
    step = min(limit, FIRST_PIECE) if remote else limit
    history = await engine.history(channel, options, since=since, limit=step, reverse=reverse)
    pubs = history.publications
    count = fitting(pubs, budget)
    piece = len(pubs)
    while count == len(pubs) and piece == step and 0 < len(pubs) < limit:
        step = min(step * 4, limit - len(pubs))
        more = await engine.history(
            channel, options, since=pubs[-1].position, limit=step, reverse=reverse
        )
        if more.position.epoch != history.position.epoch:
            break  # the channel started again meanwhile: the page ends before that
        following = pubs[-1].offset + (-1 if reverse else 1)
        if more.publications and more.publications[0].offset != following:
            # Trimmed meanwhile past the page's end: it ends there, and the next read from
            # its cursor finds the gap and says so (a reset), instead of a page with a hole.
            break
        pubs = pubs + more.publications
        piece = len(more.publications)
        count = fitting(pubs, budget)
    if count < len(pubs) or pubs is not history.publications:
        history = History(pubs[:count], history.position, history.earliest)
    return history


async def read_start(
    engine: Engine,
    channel: str,
    options: NamespaceOptions,
    since: StreamPosition | None,
    latest: bool,
    allowance: int,
    replay: int,
    looked: bool = False,
) -> tuple[History, bool]:
    """What a new subscriber's start reads, and whether it is a page (``True``): a page may
    stop short of the channel's top, and a resume is then cut after it.

    Without ``since``, the channel's position, and with ``latest`` its newest publication:
    its position is the top, so live publications buffered meanwhile follow it without a gap
    or a repeat. From ``since``, everything after it (the read a reconnect storm's resumers
    of one channel share), unless its reader's ``allowance`` is less than the ``replay`` it
    could otherwise be sent: then only a page of what it may be sent. A reader over its
    allowance is sent one publication per resume; it must not cost the read of a history of
    ``history_size``.

    ``looked``: the reader found nothing after ``since`` just before (a long poll about to
    wait), so the channel most likely stands there: its position is looked at first (on Redis
    one command of a shared pipeline, against a script), and read only if it moved.
    """
    if looked and since is not None and channel in await engine.standing({channel: since}):
        return History([], since, since.offset + 1), False
    if since is None:
        if latest:
            return await engine.history(channel, options, limit=1, reverse=True), False
        return await engine.history(channel, options, limit=0), False
    if allowance >= replay:
        return await engine.history(channel, options, since=since, limit=None), False
    page = await read_page(
        engine,
        channel,
        options,
        since=since,
        limit=max(options.history_size, 1),
        reverse=False,
        budget=allowance,
        remote=True,
    )
    return page, True
