"""The last position this node saw per subscribed channel, and the check built on it.

Pub/sub is at-most-once. Every ``check_interval`` and after every pub/sub reconnect, the engine
reads the metas of its channels (one pipelined ``HMGET`` per 500) and, for each channel whose
stored position differs from the last one seen, reads the publications after it from the
stream and hands them to the hub, which drops those it already has. A lost *last*
publication — one no later publication would reveal — thus arrives within one interval. A
stored top *below* the one seen means Redis lost writes (a failover): the history read of the
catch-up then starts a new epoch (see ``scripts.HISTORY``), and subscribers get a reset.

With ``wait_replicas`` a publication is announced only once replicas hold it, and the meta's
``a`` is the top announced (``scripts.ANNOUNCE``): the check compares with that, and its
history reads stop there (``scripts.HISTORY``), so that it never shows subscribers a write still
waiting for its replicas (or one that failed to get them) which pub/sub would not have.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from clarion.engines.base import History
from clarion.engines.redis.batch import Batcher
from clarion.engines.redis.keys import Keys
from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import NamespaceOptions

log = logging.getLogger("clarion.engines.redis")

CHECK_BATCH = 500  # channels per pipelined position check
CATCH_UP_ROUNDS = 10  # history reads per channel per check, at most


class Positions:
    def __init__(
        self,
        keys: Keys,
        history: Callable[..., Awaitable[History]],
        options: Callable[[str], NamespaceOptions],
        deliver: Callable[[Publication], bool],
        batch: int,
        *,
        announced: bool = False,
    ) -> None:
        self._keys = keys
        self._history = history  # the engine's history read
        self._options = options
        self._deliver = deliver  # to the hub; False when there is no hub to deliver to
        self._batch = batch  # publications per history read
        self._announced = announced  # compare with the announced top (wait_replicas)
        self.batch: Batcher | None = None  # the engine's, once started
        self.seen: dict[str, StreamPosition] = {}  # subscribed channel -> last position seen
        self._lock = asyncio.Lock()
        self.recovered = 0  # publications read back from streams after pub/sub lost them

    def note(self, position: StreamPosition, channel: str, *, baseline: bool = True) -> None:
        """``position`` of ``channel`` was seen; ``baseline``: it may start the record."""
        seen = self.seen.get(channel)
        if seen is None:
            if baseline:
                self.seen[channel] = position
        elif seen.epoch != position.epoch or position.offset > seen.offset:
            self.seen[channel] = position

    def forget(self, channel: str) -> None:
        self.seen.pop(channel, None)

    async def resync(self, channels: list[str]) -> None:
        """Compare each channel's stored position with the last one seen; catch up the lagging."""
        assert self.batch is not None, "checked once started"
        async with self._lock:
            lagging: list[str] = []
            fields = ("e", "s", "a") if self._announced else ("e", "s")
            for i in range(0, len(channels), CHECK_BATCH):
                chunk = channels[i : i + CHECK_BATCH]
                meta = self._keys.meta
                rows = await self.batch.commands([("HMGET", meta(c), *fields) for c in chunk])
                for channel, (epoch, top, *announced) in zip(chunk, rows, strict=True):
                    seen = self.seen.get(channel)
                    if seen is None or epoch is None:
                        # Unsubscribed, or no meta: lost, or a read's lapsed (HMGET creates
                        # none); the next publication's new epoch is caught up then.
                        continue
                    stored = StreamPosition(epoch.decode(), int(top))
                    # No announced top: its publications were announced by the publish script
                    # (a node without wait_replicas), or none is confirmed yet in this epoch.
                    until = stored.offset
                    if announced and announced[0] is not None:
                        until = min(until, int(announced[0]))
                    # A top below what was seen: Redis lost writes (failover); the history
                    # read of the catch-up starts a new epoch for it.
                    if (
                        stored.epoch != seen.epoch
                        or stored.offset < seen.offset
                        or until > seen.offset
                    ):
                        lagging.append(channel)
            for channel in lagging:
                await self._catch_up(channel)

    async def _catch_up(self, channel: str) -> None:
        """Read back what was missed (with ``wait_replicas``, up to the announced top)."""
        options = self._options(channel)
        for _ in range(CATCH_UP_ROUNDS):
            seen = self.seen.get(channel)
            if seen is None:
                return
            history = await self._history(
                channel, options, since=seen, limit=self._batch, trusted=True
            )
            if history.position.epoch != seen.epoch:
                # Everything held of the new epoch; the hub resets its subscribers on it.
                history = await self._history(channel, options, limit=self._batch)
            if self.seen.get(channel) is None:
                return  # unsubscribed meanwhile
            if history.publications:
                log.info(
                    "recovered %d publication(s) on %s that pub/sub did not deliver",
                    len(history.publications),
                    channel,
                )
            for pub in history.publications:
                self.note(pub.position, channel)
                if not self._deliver(pub):
                    return
                self.recovered += 1
            last = history.publications[-1].offset if history.publications else None
            if last is None or last >= history.position.offset:
                # Nothing more to read (trimmed or history off): the hub resets on the next
                # publication's gap; stop comparing against a position nobody can fill.
                self.note(history.position, channel)
                return
