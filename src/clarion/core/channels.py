"""This node's channels: live delivery, gap recovery, and the slow-consumer policy.

The engine hands every publication to :meth:`LocalChannels.on_publication` (the hub exposes it as
its own ``on_publication``, with no call in between): it checks the channel's position for a
gap, then :meth:`LocalChannels.deliver` runs the encode-once fan-out of :mod:`clarion.core.fanout`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from clarion.core.auth import RESERVED_PREFIX
from clarion.core.fanout import LocalChannel, Push, Subscription, WireFormat
from clarion.core.resume import waits_ahead
from clarion.core.transport import Backlogged
from clarion.protocol.codes import CloseCode
from clarion.protocol.cursor import encode_single
from clarion.protocol.publication import Publication, StreamPosition

if TYPE_CHECKING:
    from clarion.core.hub import Hub
    from clarion.core.session import Session

# Seconds to wait after each failed read back of missing publications; None: give up.
RECOVERY_RETRIES: tuple[float | None, ...] = (0.1, 0.3, 0.9, None)
# Seconds a node stays subscribed on a remote engine (Redis) to a channel its last subscriber
# left: a long poll's next poll comes milliseconds after its reply, a reconnect within seconds,
# and each would otherwise subscribe the node anew (a round trip and a read of the position,
# then an unsubscribe), channel by channel.
LINGER = 5.0

log = logging.getLogger("clarion.hub")


class LocalChannels:
    """The channels with subscribers on this node, by name, and what was delivered on each."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.stats = hub.stats
        self.local: dict[str, LocalChannel] = {}
        # Channels reading back publications the engine skipped: live ones wait here meanwhile,
        # for the channel's state that started the read (one made after it was let go reads
        # its own).
        self._recovering: dict[str, tuple[LocalChannel, list[Publication]]] = {}
        # Channels without a subscriber that the node stays subscribed to (remote engines), the
        # oldest first, with when they were left; each keeps its position as publications pass.
        self._idle: dict[str, tuple[LocalChannel, float]] = {}
        self._expiry: asyncio.TimerHandle | None = None
        # Taken back from ``_idle``, their epoch not yet checked by a subscriber's read: a
        # channel whose history lapsed meanwhile starts again in a new epoch, unannounced.
        self._revived: set[str] = set()

    # ---- the node's subscription to a channel -------------------------------------------------

    async def acquire(self, channel: str) -> LocalChannel:
        """The channel's local state, subscribing this node to it on the engine if needed."""
        hub = self.hub
        while True:
            local = self.local.get(channel)
            if local is None:
                idle = self._idle.pop(channel, None)
                if idle is not None:  # still subscribed, at the position its publications gave
                    local = self.local[channel] = idle[0]
                    self._revived.add(channel)
                    return local
                namespace = self.stats.activity.namespace(channel)
                local = self.local[channel] = LocalChannel(channel, namespace)
                ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                local.ready = ready
                subscribed = False
                try:
                    # Where live delivery starts: from here the engine hands this node every
                    # later publication, in order, and none before. Subscribers whose history
                    # reads end further on wait for the channel to get there (``ahead``);
                    # the channel's position never jumps over publications still on their way.
                    # A remote engine read it as it subscribed: one round trip, not two.
                    start = await hub.engine.subscribe(channel)
                    subscribed = True
                    if start is None:
                        read = await hub.engine.history(channel, hub.options(channel), limit=0)
                        start = read.position
                except BaseException as exc:
                    if self.local.get(channel) is local:
                        del self.local[channel]
                        self.stats.activity.retire(local)
                    if subscribed:
                        hub.spawn(self._engine_unsubscribe(channel))
                    ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError())
                    ready.exception()  # retrieved: waiters re-raise it themselves
                    raise
                if local.position is None:
                    local.position = start
                local.ready = None
                ready.set_result(None)
                return local
            if local.ready is not None:
                await asyncio.shield(local.ready)
                continue
            return local

    def release(self, local: LocalChannel) -> None:
        """Forget ``local`` once it has no subscriber left, and unsubscribe the node: at once
        in process, after :data:`LINGER` seconds without a subscriber on a remote engine."""
        name = local.name
        if len(local) == 0 and local.ready is None and self.local.get(name) is local:
            del self.local[name]
            self._revived.discard(name)
            self.stats.activity.retire(local)
            hub = self.hub
            stays = not (hub.publishes_inline or hub.closing or name in self._recovering)
            if not stays or local.last is None:
                hub.spawn(self._engine_unsubscribe(name))
                return
            loop = asyncio.get_running_loop()
            self._idle[name] = (local, loop.time())
            if self._expiry is None:
                self._expiry = loop.call_later(LINGER, self._expire)

    def confirm(self, local: LocalChannel, top: StreamPosition) -> None:
        """A subscriber read ``top``: a channel taken back from the idle ones takes its epoch
        when its own is another (the history lapsed while no one was subscribed). Its
        subscribers are all still reading, so none is told of a reset that is not theirs."""
        if local.name in self._revived:
            self._revived.discard(local.name)
            live = local.position
            if live is None or live.epoch != top.epoch:
                local.position = top

    def _expire(self) -> None:
        """Unsubscribe the node from the channels left :data:`LINGER` seconds ago."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        due = loop.time() - LINGER
        idle = self._idle
        while idle:
            name, (_, since) = next(iter(idle.items()))
            if since > due:
                self._expiry = loop.call_at(since + LINGER, self._expire)
                return
            del idle[name]
            self.hub.spawn(self._engine_unsubscribe(name))

    def _forget_idle(self, channel: str) -> None:
        if self._idle.pop(channel, None) is not None:
            self.hub.spawn(self._engine_unsubscribe(channel))

    def close(self) -> None:
        """The hub is closing: no more unsubscribes (the engine closes with it)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._idle.clear()
        self._revived.clear()

    async def _engine_unsubscribe(self, channel: str) -> None:
        if channel not in self.local and channel not in self._idle:
            await self.hub.engine.unsubscribe(channel)

    def detach(self, sub: Subscription) -> None:
        local = self.local.get(sub.channel)
        if local is not None and local.remove(sub):
            self.release(local)

    def go_live(self, local: LocalChannel, sub: Subscription, last: StreamPosition) -> None:
        """``sub`` was sent everything up to ``last``: it takes live publications from there."""
        live = local.position
        if waits_ahead(live, last):
            local.ahead[sub] = last
        else:
            local.add_live(sub)
            if live is None:
                local.position = last

    # ---- the engine's publications: everything delivered goes through here --------------------

    def on_publication(self, pub: Publication) -> None:
        stats = self.stats
        # The hub's own channels (the admin page's figures, a publication a second per node)
        # are not the application's traffic: the node's figures leave them out, or an idle hub
        # would show one publication a second.
        own = pub.channel.startswith(RESERVED_PREFIX)
        if not own:
            stats.publications += 1
        local = self.local.get(pub.channel)
        if local is None:
            if self._idle:
                self._pass_idle(pub)
            return
        if self._recovering:  # nearly always empty: one test, not a lookup
            recovering = self._recovering.get(pub.channel)
            if recovering is not None and recovering[0] is local:
                recovering[1].append(pub)
                return
        last = local.last
        if last is not None:
            if pub.epoch == last.epoch:
                if pub.offset <= last.offset:
                    return  # already delivered (e.g. recovered from history first)
                if pub.offset != last.offset + 1:
                    self._recover(local, pub)
                    return
            else:
                self._reset_all(local, "epoch", StreamPosition(pub.epoch, pub.offset - 1))
        local.last = pub
        self.deliver(local, pub)
        if own:
            return
        stats.countdown -= 1
        if stats.countdown <= 0:
            stats.sample(pub)

    def _pass_idle(self, pub: Publication) -> None:
        """A publication of a channel without subscribers: its position moves on; after a gap
        or in a new epoch it is no longer known here, and the node unsubscribes (the next
        subscriber subscribes it anew)."""
        idle = self._idle.get(pub.channel)
        if idle is None:
            return
        local = idle[0]
        last = local.last
        if last is not None and pub.epoch == last.epoch:
            if pub.offset <= last.offset:
                return  # already passed (recovered from history first)
            if pub.offset == last.offset + 1:
                local.last = pub
                return
        self._forget_idle(pub.channel)

    def deliver(self, local: LocalChannel, pub: Publication) -> None:
        if local.pending:
            for buffer in local.pending.values():
                buffer.append(pub)
        if local.conflating:
            conflating = local.conflating
            for sub in conflating:
                conflating[sub] = pub
        deliveries = self.stats.deliveries
        counted = not local.name.startswith(RESERVED_PREFIX)  # the hub's own: see on_publication
        total = 0
        for fmt, group in local.by_format.items():
            fmt.deliver(group.values(), pub.encoded(fmt, fmt.encode))
            count = len(group)
            if counted:
                deliveries[fmt.transport] += count
            total += count
        local.published += 1
        local.delivered += total
        if local.ahead:
            local.catch_up(pub)

    def on_ephemeral(self, pub: Publication) -> None:
        """A live signal: to the channel's live subscribers as it comes. Nothing of the
        stream's position changes; subscribers still reading history (their subscribe reply
        is not out yet) and conflating ones (a backlog of stored publications) do without."""
        self.stats.signals += 1
        local = self.local.get(pub.channel)
        if local is None:
            return
        deliveries = self.stats.deliveries
        total = 0
        for fmt, group in local.by_format.items():
            fmt.deliver(group.values(), pub.encoded(fmt, fmt.encode))
            deliveries[fmt.transport] += len(group)
            total += len(group)
        for sub in local.ahead:  # live already, only waiting for stored publications
            sub.push(pub.encoded(sub.fmt, sub.fmt.encode))
            deliveries[sub.fmt.transport] += 1
            total += 1
        local.published += 1
        local.delivered += total

    def _reset_all(self, local: LocalChannel, reason: str, position: StreamPosition) -> None:
        cursor = encode_single(local.name, position.epoch, position.offset)
        for sub in local.subscriptions():
            self.stats.resets[reason] += 1
            sub.session.transport.send_reset(local.name, reason, cursor)
        local.all_live()

    def _recover(self, local: LocalChannel, pub: Publication) -> None:
        """Publications went missing between the engine and this node: read them back."""
        self._recovering[local.name] = (local, [pub])
        self.hub.spawn(self._recover_from_history(local), name=f"clarion-recover-{local.name}")

    async def _recover_from_history(self, local: LocalChannel) -> None:
        hub = self.hub
        channel = local.name
        held = self._recovering[channel][1]
        try:
            since = local.position
            history = None
            # The fault that lost publications (a link to the engine cut) often fails the
            # first read back too, while the link reconnects: try again a few times.
            for delay in RECOVERY_RETRIES if since is not None else ():
                try:
                    history = await hub.engine.history(channel, hub.options(channel), since=since)
                    break
                except Exception:
                    log.warning("history read failed while recovering %s", channel, exc_info=True)
                    if delay is None:
                        break
                    await asyncio.sleep(delay)
            if since is None or history is None or not history.covers(since):
                log.warning("could not recover %s from %s: resetting subscribers", channel, since)
                if history is not None:
                    target = history.position
                else:
                    # Nothing read: the subscribers go on from the first publication held
                    # back, so the reset's cursor points just before it, past the gap. (The
                    # last position delivered would be a cursor before the gap, which the next
                    # publication then silently jumps.)
                    first = min(held, key=lambda p: p.offset)
                    target = StreamPosition(first.epoch, first.offset - 1)
                if target is not None:
                    self._reset_all(local, "lost", target)
                # After the reset the channel goes on live from its next publication; without a
                # position to compare with, that one is not taken for another gap.
                local.position = history.position if history is not None else None
            elif self.local.get(channel) is local:  # not released while it read
                position = since
                for pub in history.publications:
                    if pub.offset > position.offset:
                        position = pub.position
                        local.last = pub
                        self.deliver(local, pub)
        finally:
            if self._recovering.get(channel, (None,))[0] is local:
                del self._recovering[channel]
        for pub in sorted(held, key=lambda p: p.offset):
            if self.local.get(channel) is local:
                self.on_publication(pub)

    # ---- moving a live subscription ------------------------------------------------------------

    def retarget(
        self, session: Session, channel: str, fmt: WireFormat, push: Push, target: Any = None
    ) -> bool:
        sub = session.subscriptions.get(channel)
        local = self.local.get(channel)
        if sub is None or local is None or sub not in local.by_format.get(sub.fmt, ()):
            return False  # not live (still resuming, or conflating): leave it where it is
        local.remove(sub)
        sub.fmt, sub.push = fmt, push
        sub.target = push if target is None else target
        local.add_live(sub)
        return True

    def reformat(self, session: Session, channel: str, fmt: WireFormat, push: Push) -> bool:
        if self.retarget(session, channel, fmt, push):
            return True
        sub = session.subscriptions.get(channel)
        local = self.local.get(channel)
        if sub is None or local is None or (sub not in local.ahead and sub not in local.conflating):
            return False
        sub.fmt, sub.push, sub.target = fmt, push, push
        return True

    def delivered_position(self, session: Session, channel: str) -> StreamPosition | None:
        sub = session.subscriptions.get(channel)
        local = self.local.get(channel)
        if sub is None or local is None or sub in local.pending:
            return None
        return local.ahead.get(sub) or local.position

    # ---- slow consumers ------------------------------------------------------------------------

    def overflow(self, session: Session) -> None:
        """``session``'s send queue is full: conflate it, or close it with 4001 "slow".

        Conflation needs every channel of the session in a ``conflate`` namespace, and a
        transport that reports its backlog and is not past twice its budget (then it took
        nothing more, and would miss what it was given: it resumes instead); otherwise the
        session is disconnected.
        """
        if session.closed or session.conflating:
            return
        subs = list(session.subscriptions.values())
        options = self.hub.options
        transport = session.transport
        if (
            subs
            and isinstance(transport, Backlogged)
            and not transport.cut()
            and all(options(sub.channel).slow_consumer == "conflate" for sub in subs)
        ):
            session.conflating = True
            self.hub.sweeper.conflating.add(session)
            for sub in subs:
                local = self.local.get(sub.channel)
                if local is not None and local.remove(sub):
                    local.conflating[sub] = None
            self.stats.conflations += 1
            return
        self.stats.slow_disconnects += 1
        session.close(CloseCode.SLOW)

    def end_conflation(self, session: Session, transport: Backlogged) -> None:
        """The backlog drained: send each channel's latest publication, then go live again."""
        if transport.backlog() > self.hub.settings.limits.send_queue_bytes // 2:
            return
        session.conflating = False
        for sub in session.subscriptions.values():
            local = self.local.get(sub.channel)
            if local is None or sub not in local.conflating:
                continue
            latest = local.conflating.pop(sub)
            if latest is not None:
                sub.push(latest.encoded(sub.fmt, sub.fmt.encode))
            local.add_live(sub)
        transport.watch_overflow()
