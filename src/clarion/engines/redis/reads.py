"""History reads of one channel waiting for the same pipeline share one script call.

A reconnect storm makes thousands of sessions ask, within a few loop iterations, for the history
of the same few channels from nearly the same cursor. A forward read without a limit joins the
queued read of its channel and cursor epoch when there is one: the shared call reads from the
oldest cursor among its readers, and each reader takes the part after its own. Only a call not
yet sent is joined, so every read still runs in Redis after its reader began buffering live
publications: nothing falls between the history and the live ones.

A poll names many channels, most with nothing new: :func:`stands` tells from a channel's meta
alone (one ``HMGET``, all of a poll's in one pipeline) that a read from a cursor would find
nothing and no reset, so that only the others are read. Anything else — no meta (never read,
lapsed, lost: the read creates one, in a new epoch), another epoch, a top below the cursor, a
field that is not a number — is read in full, which decides as it always did.

A reader whose cursor is ahead of the channel's top gets the top and nothing else, as it would
have unshared: the hub answers it with a ``position`` reset (a client's cursor never changes the
channel; only a node's own position checks take a top below what they saw as lost writes).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import Callable
from functools import partial
from typing import Any

from clarion.engines.base import History
from clarion.engines.redis.batch import Batcher, Call
from clarion.protocol.publication import Publication, StreamPosition


class _Shared:
    __slots__ = ("call", "history", "offsets")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.history: History | None = None  # decoded once, for every reader
        self.offsets: list[int] = []


class SharedReads:
    """Queues history reads through ``batch``; readers of one channel and epoch share one."""

    def __init__(
        self,
        batch: Batcher,
        script: Any,
        keys: Callable[[str], list[str]],
        decode: Callable[[str, str, list[Any]], Publication],
    ) -> None:
        self._batch = batch
        self._script = script  # scripts.HISTORY, registered
        self._keys = keys  # channel -> the script's keys
        self._decode = decode  # (channel, epoch, entry) -> publication
        self._open: dict[tuple[str, str], _Shared] = {}  # (channel, cursor epoch) -> unsent

    async def read(self, channel: str, args: list[Any], since: StreamPosition | None) -> History:
        """The history of ``channel`` after ``since`` (``None``: no entries, the position).

        ``args`` are the script's arguments for this read alone (from ``since`` without a
        limit, or limit 0 without a cursor).
        """
        key = (channel, since.epoch if since is not None else "")
        shared = self._open.get(key)
        if shared is None or shared.call.sent:
            shared = _Shared(self._batch.queue(self._script, self._keys(channel), args))
            self._open[key] = shared
            shared.call.future.add_done_callback(partial(self._done, key, shared))
        elif since is not None and since.offset < shared.call.args[1]:
            shared.call.args[1] = since.offset  # the shared read starts at the oldest cursor
        # Shielded: one reader cancelled must not cancel the call the others wait for.
        history = self._decoded(channel, shared, await asyncio.shield(shared.call.future))
        top = history.position
        if since is None or since.epoch != top.epoch or since.offset > top.offset:
            return History([], top, history.earliest)
        start = bisect_right(shared.offsets, since.offset)
        return History(history.publications[start:], top, history.earliest)

    def _decoded(self, channel: str, shared: _Shared, raw: Any) -> History:
        if shared.history is None:
            epoch_b, top, earliest, entries = raw
            epoch = epoch_b.decode()
            pubs = [self._decode(channel, epoch, entry) for entry in entries]
            shared.offsets = [p.offset for p in pubs]
            shared.history = History(pubs, StreamPosition(epoch, int(top)), int(earliest))
        return shared.history

    def _done(self, key: tuple[str, str], shared: _Shared, _: object) -> None:
        if self._open.get(key) is shared:
            del self._open[key]


def stands(row: list[Any], since: StreamPosition, announced: bool) -> bool:
    """Whether ``scripts.HISTORY`` from a client's cursor ``since`` would return no entries
    and its top at ``since`` (no reset), given the meta's ``e``, ``s``, ``a`` (``announced``:
    with ``wait_replicas``, whose reads stop at ``a``).

    Trims are left out: they never move a top, and a reader at the top is covered whatever
    was trimmed. A trusted position (the node's own checks) is never asked here: a top below
    it starts a new epoch, which only its read may do."""
    epoch, top, *rest = row
    if epoch is None or top is None or epoch.decode() != since.epoch:
        return False
    try:
        stored = int(top)
        shown = int(rest[0]) if rest and rest[0] is not None else 0
    except ValueError:
        return False
    if stored == since.offset:
        return True
    # Above the cursor, only writes still waiting for their replicas: not shown to readers.
    return announced and stored > since.offset and shown <= since.offset
