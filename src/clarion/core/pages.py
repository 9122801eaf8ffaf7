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
