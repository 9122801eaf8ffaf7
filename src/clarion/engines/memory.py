"""The memory engine: one process, everything in RAM, bounded by namespace options.

Only revocations outlive the process: they are kept in ``revocations.json`` under ``data_dir``
(:mod:`clarion.engines.revoked`).

Long on purpose: it is the whole engine contract for one process (history with its byte budget,
idempotency, presence, revocations, the webhook outbox's home), and each part is a few methods
of the one state they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

from clarion.engines.base import (
    UNWRITTEN_TTL,
    EngineSink,
    History,
    Hold,
    PresenceEntry,
    PresenceStats,
    RevocationMark,
)
from clarion.engines.nodes import LocalNodes
from clarion.engines.revoked import RevocationTable
from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import NamespaceOptions, Settings

if TYPE_CHECKING:
    from clarion.webhooks.outbox import Outbox

MAX_IDEMPOTENCY_KEYS = 10_000  # per channel; the oldest key is forgotten first
SWEEP_INTERVAL = 30.0  # seconds between the starts of two passes over the written channels
SWEEP_TICK = 1.0  # a pass goes a part per tick, sized to end within SWEEP_INTERVAL
SWEEP_SLICE = 1000  # channels looked at per loop iteration: about 1 ms
# Channels read but never published to whose epoch is remembered, at most: each costs a name
# and an epoch, and anyone may read any name. The oldest read is forgotten first.
MAX_UNWRITTEN = 10_000
# What a stored publication costs besides its bytes: the object and its slots, its cursor, its
# place in its channel's log and in the engine's ledger, its expiry. Counted in the budget, and
# so is an idempotency key's stub (its key's characters besides).
HELD_OVERHEAD = 512
# What a channel published to costs while it holds nothing, besides its name's characters: its
# log (two deques, a key map, the epoch) and its places in the engine's maps; 1,969 bytes
# measured with a name of 18. Counted in the budget: anyone allowed to publish may name new
# channels, and each is kept for its namespace's history_meta_ttl.
LOG_OVERHEAD = 2048
# The share of the budget that the positions of channels holding nothing else may take: past
# it the oldest goes, so that names published to once cannot push every channel's history out.
BARE_SHARE = 0.5
DEFAULT_HISTORY_BYTES = 256 * 1024 * 1024  # limits.max_history_bytes

log = logging.getLogger("clarion.engines.memory")


def new_epoch() -> str:
    return os.urandom(6).hex()


class _ChannelLog:
    __slots__ = (
        "bare",
        "entries",
        "epoch",
        "expiries",
        "keys",
        "last_write",
        "name",
        "offset",
    )

    def __init__(self, name: str, epoch: str) -> None:
        self.name = name
        self.epoch = epoch
        self.offset = 0
        self.entries: deque[Publication] = deque()
        self.expiries: deque[float] = deque()
        # (scope, key) -> (expiry, publication); scope None is the backend's space.
        self.keys: OrderedDict[tuple[str | None, str], tuple[float, Publication]] = OrderedDict()
        self.last_write = 0.0
        # Listed in the engine's ``_bare``: no entry and no key, only the channel's position.
        self.bare = False

    def holds(self, pub: Publication) -> bool:
        """Whether ``pub`` is still in this log (its offsets are contiguous from the first)."""
        entries = self.entries
        return bool(entries) and entries[0].offset <= pub.offset

    @property
    def earliest(self) -> int:
        return self.entries[0].offset if self.entries else self.offset + 1


class MemoryEngine:
    """Single-node engine; publish is synchronous up to the hand-off to the hub."""

    name = "memory"
    process_local = True  # channels live in this process (see clarion.asgi.portclaim)
    # publish and publish_ephemeral never suspend: callers may run them outside a task.
    publishes_inline = True

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        # The clock is injectable so TTL behaviour can be tested without sleeping.
        self._clock = clock
        # Every stored publication, oldest first, across channels: id -> (log, publication,
        # idempotency slot); each counts its ``held`` bytes and HELD_OVERHEAD. A publication
        # stays while its channel's history or an idempotency key holds it; past
        # ``history_bytes`` in all, the oldest goes, its key's stub taking a place at the end.
        self._held: OrderedDict[
            int, tuple[_ChannelLog, Publication, tuple[str | None, str] | None]
        ] = OrderedDict()
        # The logs holding nothing but their channel's position, by when they came to or were
        # last published to, oldest first; they count ``bare_bytes`` of ``held_bytes``, at
        # most BARE_SHARE of the budget.
        self._bare: OrderedDict[str, _ChannelLog] = OrderedDict()
        self.held_bytes = 0  # what _held and the logs count
        self.bare_bytes = 0
        self._evicting = False  # an _evict is due on the next turn of the loop
        # One bound method for every publication to hold, not a new one each (64 bytes apiece).
        self._meter = self._grew
        self.history_bytes = history_bytes
        self.bare_room = history_bytes * BARE_SHARE
        self._revoked = RevocationTable(data_dir)  # kept in data_dir when given
        self._logs: dict[str, _ChannelLog] = {}  # channels published to
        # Channels read but never published to: the epoch their readers were given, and when it
        # was given, oldest first. No log for them: a read of nothing answers from nothing.
        self._unwritten: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._meta_ttl: dict[str, float] = {}
        self._presence: dict[str, dict[str, PresenceEntry]] = {}
        # channel -> client -> when its lease ends: the entries no connection holds (long-poll
        # clients'), which end with their lease.
        self._leases: dict[str, dict[str, float]] = {}
        # channel -> user -> how many of its clients are present: the stats without a scan.
        self._users: dict[str, dict[str, int]] = {}
        self._announced: dict[str, set[str]] = {}  # channel -> users whose join was sent
        self._sink: EngineSink | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sink: EngineSink) -> None:
        self._sink = sink
        self._revoked.load()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="clarion-memory-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def _log(self, channel: str) -> _ChannelLog:
        log = self._logs.get(channel)
        if log is None:
            # The first publication continues the epoch readers of the empty channel were given.
            read = self._unwritten.pop(channel, None)
            log = self._logs[channel] = _ChannelLog(
                channel, new_epoch() if read is None else read[0]
            )
            log.last_write = self._clock()
            self.held_bytes += LOG_OVERHEAD + len(channel)
        return log

    def _forget(self, log: _ChannelLog) -> None:
        """Drop a channel's log: its next publication starts a new epoch (a reader of the old
        one gets an ``epoch`` reset, as after ``history_meta_ttl``)."""
        channel = log.name
        del self._logs[channel]
        self._meta_ttl.pop(channel, None)
        self.held_bytes -= LOG_OVERHEAD + len(channel)
        if log.bare:
            self._clothe(log)
        keys, log.keys = log.keys, OrderedDict()
        for _, pub in keys.values():  # the keys go with the log: what they held is let go
            self._release(pub)

    def _settle(self, log: _ChannelLog) -> None:
        """``log`` may have let go of its last entry or key: if so, list it as bare (the
        share is looked at by the next publication's :meth:`_evict`)."""
        if not log.bare and not log.entries and not log.keys:
            log.bare = True
            self._bare[log.name] = log
            self.bare_bytes += LOG_OVERHEAD + len(log.name)

    def _clothe(self, log: _ChannelLog) -> None:
        """``log`` is no longer bare: it holds something again, or goes."""
        log.bare = False
        del self._bare[log.name]
        self.bare_bytes -= LOG_OVERHEAD + len(log.name)

    def _unwritten_epoch(self, channel: str) -> str:
        read = self._unwritten.get(channel)
        if read is not None:
            return read[0]
        now = self._clock()
        self._expire_unwritten(now)
        epoch = new_epoch()
        self._unwritten[channel] = (epoch, now)
        if len(self._unwritten) > MAX_UNWRITTEN:
            self._unwritten.popitem(last=False)
        return epoch

    def _expire_unwritten(self, now: float) -> int:
        """Forget the unwritten channels read more than ``UNWRITTEN_TTL`` ago: the oldest
        come first, so this costs what it drops."""
        unwritten = self._unwritten
        dropped = 0
        while unwritten:
            read_at = next(iter(unwritten.values()))[1]
            if now - read_at <= UNWRITTEN_TTL:
                break
            unwritten.popitem(last=False)
            dropped += 1
        return dropped

    async def publish(
        self,
        channel: str,
        data: Any,
        options: NamespaceOptions,
        *,
        idempotency_key: str | None = None,
        info: dict[str, Any] | None = None,
        idempotency_scope: str | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> Publication:
        """Offset, history write and delivery in one step, without suspending: a coroutine
        only to fit the engine interface (nothing here awaits)."""
        now = self._clock()
        log = self._logs.get(channel)
        if log is None:
            log = self._log(channel)
        size = options.history_size  # each read of an options field costs, once here
        self._trim(log, now, size)
        slot = (idempotency_scope, idempotency_key) if idempotency_key is not None else None
        if slot is not None:
            seen = log.keys.get(slot)
            if seen is not None:
                kept = seen[1]
                if kept.packed:
                    return kept.as_repeat()
                # The byte budget let it go and the key kept its place only: the repeat is the
                # same publish, so its own data fills the answer in.
                again = Publication(
                    channel, kept.offset, kept.epoch, data, kept.time, info, kept.id, attrs
                )
                again.repeated = True
                return again
        log.offset += 1
        pub = Publication(
            channel,
            log.offset,
            log.epoch,
            data,
            int(time.time() * 1000),
            info,
            idempotency_key,
            attrs,
        )
        log.last_write = now
        self._meta_ttl[channel] = options.history_meta_ttl
        if size > 0:
            entries = log.entries
            entries.append(pub)
            log.expiries.append(now + options.history_ttl)
            if len(entries) > size:
                self._drop_first(log)
        if slot is not None:
            if options.idempotency_window > 0:
                log.keys[slot] = (now + options.idempotency_window, pub)
            else:
                slot = None
        if self._sink is not None:
            self._sink.on_publication(pub)  # delivered live with its data, as given
        if size > 0 or slot is not None:
            # Kept from here on as bytes, and counted (inline: once per publication).
            self.held_bytes += pub.pack(self._meter) + HELD_OVERHEAD
            self._held[id(pub)] = (log, pub, slot)
            if log.bare:
                self._clothe(log)
        elif log.bare:
            self._bare.move_to_end(channel)  # the newest written of the logs holding nothing
        else:
            self._settle(log)
        if self.held_bytes > self.history_bytes or self.bare_bytes > self.bare_room:
            self._evict()
        return pub

    # ---- the byte budget ------------------------------------------------------------------------

    def _evict(self) -> None:
        """Drop the oldest of what is held, across channels, until the rest fits the budget.

        A publication, from its channel's history: it was the oldest left there (both go in
        publish order), so ``earliest`` moves past it and a reader behind it gets a ``trimmed``
        reset, as after a trim by ``history_size``. An idempotency key keeps answering repeats
        where it was published, with a stub holding no data, which takes its own place at the
        end of the ledger; once that comes up, the key is forgotten (a repeat is then published
        anew). Past BARE_SHARE of the budget, the logs of channels holding nothing else go
        first, the one written longest ago first (see :meth:`_forget`): a channel keeps its
        position after its publications went, but names published to once cannot take the
        room of every channel's history.
        """
        self._evicting = False
        held, bare = self._held, self._bare
        while True:
            if self.bare_bytes > self.bare_room:
                self._forget(next(iter(bare.values())))
                continue
            if not held or self.held_bytes <= self.history_bytes:
                break
            _, (log, pub, slot) = held.popitem(last=False)
            self.held_bytes -= pub.held + HELD_OVERHEAD
            if log.entries and log.entries[0] is pub:
                log.entries.popleft()
                log.expiries.popleft()
            if slot is not None:
                seen = log.keys.get(slot)
                if seen is not None and seen[1] is pub:
                    if pub.packed:
                        stub = Publication(
                            pub.channel, pub.offset, pub.epoch, None, pub.time, pub.info, pub.id
                        )
                        # The key's characters: never more than the publication (its JSON
                        # holds them), so that each turn of this loop lowers the count.
                        stub.held = min(len(slot[1]) + len(slot[0] or ""), pub.held)
                        log.keys[slot] = (seen[0], stub)  # its place in the key order is kept
                        held[id(stub)] = (log, stub, slot)
                        self.held_bytes += stub.held + HELD_OVERHEAD
                    else:  # a stub's turn: the key goes
                        del log.keys[slot]
            self._settle(log)

    def _grew(self, pub: Publication, size: int) -> None:
        """A held publication kept another encoding (a resume in another format): counted,
        and the budget looked at once the loop turns (not in the middle of a delivery)."""
        record = self._held.get(id(pub))
        if record is None or record[1] is not pub:
            return  # let go already: nothing of it is counted
        self.held_bytes += size
        if self.held_bytes > self.history_bytes and not self._evicting:
            self._evicting = True
            try:
                asyncio.get_running_loop().call_soon(self._evict)
            except RuntimeError:  # encoded outside any loop: nothing is being delivered
                self._evict()

    def _release(self, pub: Publication) -> None:
        """``pub`` left its channel's history or its key: held still if the other has it."""
        record = self._held.get(id(pub))
        if record is None or record[1] is not pub:
            return
        log, _, slot = record
        if slot is not None:
            seen = log.keys.get(slot)
            if seen is not None and seen[1] is pub:
                return
        if log.holds(pub):
            return
        del self._held[id(pub)]
        self.held_bytes -= pub.held + HELD_OVERHEAD

    def _drop_first(self, log: _ChannelLog) -> None:
        pub = log.entries.popleft()
        log.expiries.popleft()
        self._release(pub)
        if not log.entries:
            self._settle(log)

    def _trim(self, log: _ChannelLog, now: float, size: int) -> None:
        entries, expiries = log.entries, log.expiries
        while entries and (len(entries) > size or expiries[0] <= now):
            self._drop_first(log)
        keys = log.keys
        while keys:
            first = next(iter(keys.values()))
            if first[0] > now and len(keys) <= MAX_IDEMPOTENCY_KEYS:
                break
            keys.popitem(last=False)
            self._release(first[1])
            if not keys:
                self._settle(log)

    async def publish_ephemeral(self, pub: Publication) -> None:
        if self._sink is not None:
            self._sink.on_ephemeral(pub)

    async def history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> History:
        return self.history_now(channel, options, since=since, limit=limit, reverse=reverse)

    def history_now(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> History:
        log = self._logs.get(channel)
        if log is None:
            # Offset 0 of an epoch kept for the first publication: it follows on, no reset.
            return History([], StreamPosition(self._unwritten_epoch(channel), 0), 1)
        self._trim(log, self._clock(), options.history_size)
        position = StreamPosition(log.epoch, log.offset)
        entries = log.entries
        if reverse:
            if since is not None and since.epoch != log.epoch:
                return History([], position, log.earliest)
            top = log.offset if since is None else min(log.offset, since.offset - 1)
            end = max(0, top + 1 - log.earliest)  # one past the newest wanted, as an index
            begin = 0 if limit is None else max(0, end - limit)
            newest_first = [entries[i] for i in range(end - 1, begin - 1, -1)]
            return History(newest_first, position, log.earliest)
        if since is None:
            start = 0
        elif since.epoch != log.epoch:
            start = len(entries)  # nothing of another epoch is trusted
        else:
            # Offsets in a log are contiguous, so the index is arithmetic.
            start = max(0, since.offset + 1 - log.earliest)
        stop = len(entries) if limit is None else min(len(entries), start + limit)
        pubs = [entries[i] for i in range(start, stop)] if start < stop else []
        return History(pubs, position, log.earliest)

    def stands_at(self, channel: str, position: StreamPosition) -> bool:
        """Whether a reader at ``position`` on ``channel`` has nothing to read and no reset
        due — what a history read from there would say, for a comparison (a wide poll's
        channels, most with nothing new). Trimming moves no position: none is done here."""
        log = self._logs.get(channel)
        if log is not None:
            return log.offset == position.offset and log.epoch == position.epoch
        read = self._unwritten.get(channel)
        return read is not None and position.offset == 0 and read[0] == position.epoch

    async def standing(self, positions: Mapping[str, StreamPosition]) -> set[str]:
        return {channel for channel, since in positions.items() if self.stands_at(channel, since)}

    async def subscribe(self, channel: str) -> StreamPosition | None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    async def broadcast_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink.on_event(channel, kind, event)

    async def broadcast_control(self, command: str, payload: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink.on_control(command, payload)

    async def presence_add(self, channel: str, entry: PresenceEntry) -> None:
        clients = self._presence.setdefault(channel, {})
        old = clients.get(entry.client)
        if old is not None:
            self._count_user(channel, old.user, -1)
        clients[entry.client] = entry
        self._count_user(channel, entry.user, 1)

    async def presence_remove(self, channel: str, client: str) -> None:
        self._take_out(channel, client)

    def _take_out(self, channel: str, client: str) -> PresenceEntry | None:
        leases = self._leases.get(channel)
        if leases is not None and leases.pop(client, None) is not None and not leases:
            del self._leases[channel]
        clients = self._presence.get(channel)
        if clients is None:
            return None
        old = clients.pop(client, None)
        if old is not None:
            self._count_user(channel, old.user, -1)
        if not clients:
            del self._presence[channel]
        return old

    async def presence_hold(
        self, channel: str, entry: PresenceEntry, lease: float, *, create: bool
    ) -> Hold:
        leases = self._leases.get(channel)
        held = self._presence.get(channel, {}).get(entry.client)
        if held is not None:
            if held.user != entry.user or leases is None or entry.client not in leases:
                return Hold.TAKEN
            if held.user is None and held.address != entry.address:
                return Hold.TAKEN  # an anonymous client's id is no secret: see presence_release
            leases[entry.client] = self._clock() + lease
            return Hold.RENEWED
        if not create:
            return Hold.ABSENT
        await self.presence_add(channel, entry)
        self._leases.setdefault(channel, {})[entry.client] = self._clock() + lease
        return Hold.ADDED

    async def presence_release(self, channel: str, entry: PresenceEntry) -> PresenceEntry | None:
        leases = self._leases.get(channel)
        held = self._presence.get(channel, {}).get(entry.client)
        if held is None or held.user != entry.user or leases is None or entry.client not in leases:
            return None
        if held.user is None and held.address != entry.address:
            return None  # an anonymous client's id is no secret: its address stands in for a user
        return self._take_out(channel, entry.client)

    async def presence_orphaned(self) -> list[tuple[str, list[PresenceEntry]]]:
        return []  # the node that held a long-poll client's lease looks for its end

    node_leases = False  # a connection's entry ends with its session

    @property
    def lapse_interval(self) -> float:
        return 1.0

    async def presence_lapsed(self, channel: str) -> list[PresenceEntry]:
        leases = self._leases.get(channel)
        if not leases:
            return []
        now = self._clock()
        ended = [client for client, until in leases.items() if until <= now]
        return [e for e in (self._take_out(channel, c) for c in ended) if e is not None]

    def _count_user(self, channel: str, user: str | None, delta: int) -> None:
        if user is None:
            return
        users = self._users.setdefault(channel, {})
        left = users.get(user, 0) + delta
        if left > 0:
            users[user] = left
        else:
            users.pop(user, None)
            if not users:
                del self._users[channel]

    async def presence_announce(self, channel: str, user: str) -> bool:
        announced = self._announced.setdefault(channel, set())
        if user in announced:
            return False
        announced.add(user)
        return True

    async def presence_retire(self, channel: str, user: str) -> bool:
        announced = self._announced.get(channel)
        if announced is None or user not in announced or user in self._users.get(channel, ()):
            return False
        announced.discard(user)
        if not announced:
            del self._announced[channel]
        return True

    async def presence_stats(self, channel: str) -> PresenceStats:
        return PresenceStats(
            len(self._presence.get(channel, ())), len(self._users.get(channel, ()))
        )

    async def presence(self, channel: str, limit: int | None = None) -> list[PresenceEntry]:
        return list(islice(self._presence.get(channel, {}).values(), limit))

    def webhook_outbox(self, settings: Settings) -> Outbox:
        """One SQLite file under the hub's ``data_dir``: this node publishes everything."""
        from clarion.webhooks.sqlite_outbox import SQLiteOutbox

        delivery = settings.webhook_delivery
        return SQLiteOutbox(
            settings.data_dir,
            fsync=delivery.fsync,
            max_dead_letters=delivery.max_dead_letters,
            max_dead_letter_bytes=delivery.max_dead_letter_bytes,
        )

    def node_directory(self) -> LocalNodes:
        """One node, alone: its own record."""
        return LocalNodes()

    async def healthy(self) -> bool:
        return True

    # ---- revocations ----------------------------------------------------------------------------

    async def revoke(self, kind: str, key: str, until: float) -> None:
        await self._revoked.revoke(f"{kind}:{key}", until)

    async def revocations(
        self, since: RevocationMark | None = None
    ) -> tuple[RevocationMark, list[tuple[str, str, float]]]:
        return self._revoked.since(since)

    def sweep(self, now: float | None = None) -> int:
        """Forget, in one pass, the channels nobody needs; how many were forgotten.

        A written channel goes once its history is empty and its meta TTL has passed. A channel
        only read, never published to, goes after ``UNWRITTEN_TTL`` (or sooner, past
        ``MAX_UNWRITTEN``): a client holding its offset-0 cursor gets an ``epoch`` reset later,
        an explicit signal (it missed nothing, but cannot be told so safely).
        """
        now = self._clock() if now is None else now
        dropped = self._expire_unwritten(now)
        for channel in list(self._logs):
            dropped += self._sweep_one(channel, now)
        return dropped

    def _sweep_one(self, channel: str, now: float) -> int:
        log = self._logs.get(channel)
        if log is None:
            return 0
        while log.expiries and log.expiries[0] <= now:
            self._drop_first(log)
        if log.entries or now - log.last_write <= self._meta_ttl.get(channel, 86400.0):
            return 0
        self._forget(log)
        return 1

    async def _sweep_forever(self) -> None:
        # A pass over a million channels in one go held the loop for a second: it goes a
        # part per tick, sized to end within SWEEP_INTERVAL, in slices of one loop iteration.
        pending: list[str] = []
        done = 0
        next_pass = self._clock() + SWEEP_INTERVAL
        step = SWEEP_SLICE
        while True:
            await asyncio.sleep(SWEEP_TICK)
            now = self._clock()
            self._expire_unwritten(now)
            if done >= len(pending):
                if now < next_pass:
                    continue
                # The copy (3 ms at 150,000 channels) takes a tick of its own.
                pending, done = list(self._logs), 0
                next_pass = now + SWEEP_INTERVAL
                step = max(SWEEP_SLICE, int(len(pending) * SWEEP_TICK / SWEEP_INTERVAL) + 1)
                continue
            end = min(done + step, len(pending))
            while done < end:
                stop = min(done + SWEEP_SLICE, end)
                for channel in pending[done:stop]:
                    self._sweep_one(channel, now)
                done = stop
                await asyncio.sleep(0)
            if done >= len(pending):
                pending = []
