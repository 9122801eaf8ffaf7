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

from clarion.protocol.publication import Publication

CURSOR_BYTES = 64  # counted per publication: its cursor and its separators in a reply
RESERVE = 1024  # kept out of a page for what goes with it (the reply's own fields)


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


def fitting(pubs: Sequence[Publication], budget: int) -> int:
    """How many of ``pubs``, from the first, fit in ``budget`` bytes; the first always does,
    so a reader always gets further. The JSON of the publications past the first that does
    not fit is never made: a page costs the CPU of its budget, not of the read."""
    used = 0
    for count, pub in enumerate(pubs):
        used += len(pub.json()) + CURSOR_BYTES
        if used > budget and count:
            return count
    return len(pubs)
