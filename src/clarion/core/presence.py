"""Presence: who is on a channel, the join and leave events, and the per-user grace.

The engine holds the entries (every node's); this node adds and removes its sessions' entries,
sends ``join``/``leave`` in the namespace's ``join_leave_mode``, and hands the events the
engine broadcasts to the local subscribers allowed to read them. With an engine whose entries
outlive a node that stopped without removing them (``node_leases``), the nodes with
subscribers on a channel send the ``leave`` of those entries once their lease has ended:
members built from joins and leaves lose them too, not only presence reads.

A long-poll client holds no connection: its entry is a lease that each of its polls renews, on
any node (:meth:`Roster.hold_poll`), and its ``leave`` goes out once the lease has ended, from
the node that renewed it last, or at once when it says it left (:meth:`Roster.release_poll`).

Long on purpose: one class holds this node's side of presence, whose rules interlock (a join
cancels a pending user leave, a lapse and a release end the same entries once, the grace and
the announce window apply to every way of leaving).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

from clarion import tasks
from clarion.core.fanout import JOINED, JOINING, LEFT, Subscription
from clarion.core.limits import Allowances, LogLimit
from clarion.engines.base import Engine, Hold, PresenceEntry
from clarion.errors import ClarionError
from clarion.settings import NamespaceOptions

if TYPE_CHECKING:
    from clarion.core.auth import Credentials
    from clarion.core.hub import Hub
    from clarion.core.session import Session

log = logging.getLogger("clarion.hub")
# A poll's presence failing (the engine unreachable) is said once a minute, not once a poll.
_hold_failed = LogLimit(log)

# Seconds a client's join or leave waits to go out with others; one that the same client
# undoes meanwhile (a leave after its join) goes nowhere.
ANNOUNCE_WINDOW = 0.05
# Channels looked at together for ended leases: their calls share the engine's pipelines.
LAPSE_SLICE = 500
# A long-poll client's id, as the hub makes it: never a connection's (18 hex digits).
POLL_CLIENT = re.compile(r"p[A-Za-z0-9_-]{22}")
# Entries a user (an address, without a user) may add by polling, per node: a burst, then one
# a second. Each poll without a known id adds one per channel it names, for its lease: bounded
# so, a client that never sends its id back cannot fill a channel's presence.
POLL_ENTRY_RATE = 1.0
POLL_ENTRY_BURST = 10
MAX_POLL_BUCKETS = 65536  # users and addresses whose adding is remembered at once


def _graced(options: NamespaceOptions) -> bool:
    """A user's leave waits for a grace here, and so does the entry of its last client."""
    return options.join_leave_mode == "user" and options.presence_grace > 0


def entry_of(session: Session) -> PresenceEntry:
    return PresenceEntry(
        session.id,
        session.user,
        session.credentials.info,
        session.transport.kind,
        session.client_ip,
    )


def _user_event(channel: str, entry: PresenceEntry, options: NamespaceOptions) -> dict[str, Any]:
    event: dict[str, Any] = {"channel": channel, "user": entry.user}
    if options.presence_info and entry.info is not None:
        event["info"] = entry.info
    return event


class Roster:
    """This node's side of presence: its sessions' entries, joins and leaves."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # (channel, user) -> the task that sends the user's leave once its grace has passed.
        self._retiring: dict[tuple[str, str], asyncio.Task[Any]] = {}
        # (channel, session id) -> the task that takes out the entry of a client that left a
        # channel with join_leave = "user", once the grace of its latest leave has passed (see
        # _leave). Set, _hurry takes them out at once.
        self._taking_out: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._hurry = asyncio.Event()
        # Per-client events waiting for the next flush: channel -> client -> (kind, event).
        # At most one per client and channel, so they are bounded by the sessions.
        self._outgoing: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
        self._flush_at: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None
        self._lapses: asyncio.Task[None] | None = None  # the look for ended leases
        # Channels where this node held a long-poll client's lease -> when the last one it
        # held there ends (loop time): this node looks for it then.
        self._polled: dict[str, float] = {}
        self._poll_entries = Allowances(POLL_ENTRY_RATE, POLL_ENTRY_BURST, MAX_POLL_BUCKETS)

    def on_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        """A ``join``/``leave`` from the engine: to the subscribers who may read presence."""
        hub = self.hub
        local = hub.local.get(channel)
        if local is None:
            return
        may_read = hub.auth.may_read_presence
        pending = local.pending
        for sub in local.subscriptions():
            if sub in pending:
                continue  # not confirmed yet: nothing may come before its subscribe reply
            if may_read(sub.session.credentials, channel, subscribed=True):
                sub.session.transport.send_event(channel, kind, event)

    def start(self) -> None:
        self._hurry.clear()
        if self._lapses is None:
            self._lapses = asyncio.create_task(
                self._watch_lapses(self.hub.engine), name="clarion-presence-lapses"
            )

    def stop(self) -> None:
        for retiring in self._retiring.values():
            retiring.cancel()  # a node going away sends no late leave
        self._retiring.clear()
        self._hurry.set()  # but takes its entries out now, not after the grace
        if self._lapses is not None:
            self._lapses.cancel()
            self._lapses = None

    def _lapsing(self, engine: Engine) -> list[str]:
        """The channels to look at for ended leases now."""
        hub = self.hub
        now = asyncio.get_running_loop().time()
        # A lease this node held is looked for until a look after its end: renewed elsewhere
        # meanwhile, it is that node's to look for.
        late = now - 2 * engine.lapse_interval
        polled = self._polled
        for name in [name for name, until in polled.items() if until < late]:
            del polled[name]
        channels = list(polled)
        if engine.node_leases:
            # Where someone hears of leaves: subscribers in the join_leave mode, or a
            # lifecycle listener (a webhook) that wants the channel's.
            wanted = hub.leaves_wanted
            channels += [
                name
                for name in list(hub.local_channels.local)
                if name not in polled
                and (
                    (options := hub.options(name)).join_leave_mode is not None
                    or (options.presence and any(wants(name) for wants in wanted))
                )
            ]
        return channels

    async def _watch_lapses(self, engine: Engine) -> None:
        failing = False
        while True:
            await tasks.tick(engine.lapse_interval)  # a poll that came in a stall is read
            orphaned: list[tuple[str, list[PresenceEntry]]] = []
            try:
                channels = self._lapsing(engine)
                raised: list[Exception] = []
                for start in range(0, len(channels), LAPSE_SLICE):
                    chunk = channels[start : start + LAPSE_SLICE]
                    done = await asyncio.gather(
                        *(self._lapsed(engine, name) for name in chunk), return_exceptions=True
                    )
                    raised += [e for e in done if isinstance(e, Exception)]
                # Channels no node subscribes to any more, whose clients' nodes all stopped
                # (looked at whatever a channel above raised).
                orphaned = await engine.presence_orphaned()
                if raised:
                    raise raised[0]
                failing = False
            except ClarionError as exc:  # e.g. the engine is unreachable: the next pass
                if not failing:
                    log.warning("looking for ended presence leases failed: %s", exc.message)
                failing = True
            except Exception:  # a fault of one pass must not end the next ones
                log.exception("looking for ended presence leases failed")
            for channel, entries in orphaned:  # each channel's on their own
                try:
                    await self._leaves(channel, entries)
                except ClarionError as exc:
                    log.warning("presence leaves on %s failed: %s", channel, exc.message)
                except Exception:  # as above: the other channels and the next passes go on
                    log.exception("presence leaves on %s failed", channel)

    def restored(self, channel: str, client: str) -> None:
        """The engine added this node's entry of ``client`` again: its leave may have gone out
        (its lease ended while this node could not renew it), so its join goes out again. A
        reader that missed nothing hears a join for a client it has: harmless to a set."""
        hub = self.hub
        session = hub.sessions.get(client)
        sub = session.subscriptions.get(channel) if session is not None else None
        if session is None or sub is None or sub.joined != JOINED:
            return
        options = hub.options(channel)
        mode = options.join_leave_mode
        if mode == "client":
            shown = entry_of(session).to_dict(info=options.presence_info)
            self._announce(channel, client, "join", {"channel": channel, **shown})
        elif mode == "user" and session.user is not None:
            hub.spawn(self._rejoin(channel, session, options), name="clarion-rejoin")

    async def _rejoin(self, channel: str, session: Session, options: NamespaceOptions) -> None:
        engine = self.hub.engine
        try:
            if session.user is not None and await engine.presence_announce(channel, session.user):
                await engine.broadcast_event(
                    channel, "join", _user_event(channel, entry_of(session), options)
                )
        except ClarionError as exc:
            log.warning("presence join on %s failed: %s", channel, exc.message)

    async def _lapsed(self, engine: Engine, channel: str) -> None:
        """The leaves of ``channel``'s entries whose lease ended, each sent by one node."""
        entries = await engine.presence_lapsed(channel)
        if entries:
            await self._leaves(channel, entries)

    async def _leaves(self, channel: str, entries: list[PresenceEntry]) -> None:
        """The leaves of ``entries``, whose lease ended: to the lifecycle's listeners and in
        the namespace's mode."""
        hub = self.hub
        if hub.lifecycle_listeners:
            for entry in entries:
                hub.emit("leave", {"channel": channel, **entry.to_dict()})
        options = hub.options(channel)
        mode = options.join_leave_mode
        if mode == "client":
            for entry in entries:
                shown = entry.to_dict(info=options.presence_info)
                self._announce(channel, entry.client, "leave", {"channel": channel, **shown})
        elif mode == "user":
            # A user whose other clients live on stays; one with none left leaves, once.
            last = {entry.user: entry for entry in entries if entry.user is not None}
            for user, entry in last.items():
                if (channel, user) in self._retiring:
                    continue  # a client of its left here: that leave, after its grace
                if await hub.engine.presence_retire(channel, user):
                    event: dict[str, Any] = {"channel": channel, "user": user}
                    if options.presence_info and entry.info is not None:
                        event["info"] = entry.info
                    await hub.engine.broadcast_event(channel, "leave", event)

    async def hold_poll(
        self, session: Session, client: str | None, channels: list[str], wait: float
    ) -> str | None:
        """Keep a long-poll client in the presence of those of ``channels`` that have presence,
        until ``wait`` and ``poll.presence_timeout`` have passed (time for the reply to reach
        it and its next poll to come, or a plain poll's pause), under ``client`` (an id a
        poll of its was given before), and announce it where it is new.

        Returns the id to give back: ``client``, or a new one when it had none or named
        another user's entry (an anonymous client's, held from another address). ``None`` when
        it had none and may add no entry now (over its rate): it is in no presence until a
        later poll. The poll is answered either way, so an engine that cannot be reached
        leaves it out of presence, no more.
        """
        hub = self.hub
        held = [channel for channel in channels if hub.options(channel).presence]
        if not held:
            return client
        engine = hub.engine
        lease = wait + hub.settings.poll.presence_timeout
        absent = held
        kept: list[str] = []  # the channels whose entry of this client is held now
        try:
            if client is not None:
                entry = self._poll_entry(session, client)
                done = await asyncio.gather(
                    *(engine.presence_hold(c, entry, lease, create=False) for c in held)
                )
                if Hold.TAKEN in done:
                    client = None  # someone else's: this client starts afresh
                else:
                    absent = [c for c, hold in zip(held, done, strict=True) if hold == Hold.ABSENT]
                    kept = [c for c, hold in zip(held, done, strict=True) if hold == Hold.RENEWED]
            if absent and self._may_add(session, len(absent)):
                if client is None:
                    client = "p" + secrets.token_urlsafe(16)
                entry = self._poll_entry(session, client)
                done = await asyncio.gather(
                    *(engine.presence_hold(c, entry, lease, create=True) for c in absent)
                )
                for channel, hold in zip(absent, done, strict=True):
                    if hold == Hold.ADDED:
                        kept.append(channel)
                        await self._joined(channel, session, entry)
        except ClarionError as exc:
            _hold_failed.log(
                logging.WARNING, "", "holding a long-poll client's presence failed: %s", exc.message
            )
            return client
        # Looked at for ended leases: only where an entry is held (a poll may name channels it
        # adds nothing to, over its rate), so this grows with the entries, not with the names.
        until = asyncio.get_running_loop().time() + lease
        polled = self._polled
        for channel in kept:
            if polled.get(channel, 0.0) < until:
                polled[channel] = until
        return client

    async def release_poll(
        self, credentials: Credentials, address: str | None, client: str, channels: list[str]
    ) -> None:
        """A long-poll client left ``channels`` (it unsubscribed, or its page is going): its
        entries go now, with their leaves, as a connection's go when it unsubscribes. Only its
        own user's entries (an anonymous client's, from its address): an id naming another's
        client, or none, changes nothing."""
        hub = self.hub
        held = [channel for channel in channels if hub.options(channel).presence]
        entry = PresenceEntry(client, credentials.user, credentials.info, "poll", address)
        if credentials.user is not None and not hub.closing:
            # Where its user's leave waits for a grace, its entry waits as long, as a
            # connection's does (see _leave): its lease ends then, and the look for ended
            # leases sends the user's leave unless a client of the user is back.
            graced = [c for c in held if _graced(hub.options(c))]
            if graced:
                held = [c for c in held if c not in graced]
                await self._shorten(entry, graced)
        released = await asyncio.gather(*(hub.engine.presence_release(c, entry) for c in held))
        for channel, gone in zip(held, released, strict=True):
            if gone is None:
                continue
            if hub.lifecycle_listeners:
                hub.emit("leave", {"channel": channel, **gone.to_dict()})
            self._went(channel, gone, hub.options(channel))

    async def _shorten(self, entry: PresenceEntry, channels: list[str]) -> None:
        """End ``entry``'s leases on ``channels`` after their grace, and look for their end."""
        hub = self.hub
        graces = [hub.options(c).presence_grace for c in channels]
        done = await asyncio.gather(
            *(
                hub.engine.presence_hold(c, entry, grace, create=False)
                for c, grace in zip(channels, graces, strict=True)
            )
        )
        now = asyncio.get_running_loop().time()
        polled = self._polled
        for channel, grace, hold in zip(channels, graces, done, strict=True):
            if hold == Hold.RENEWED and polled.get(channel, 0.0) < now + grace:
                polled[channel] = now + grace

    @staticmethod
    def _poll_entry(session: Session, client: str) -> PresenceEntry:
        return PresenceEntry(
            client, session.user, session.credentials.info, "poll", session.client_ip
        )

    def _may_add(self, session: Session, channels: int) -> bool:
        """Whether a poll may add its client to ``channels`` more presences: within its
        principal's new poll clients, and within its subscriptions
        (``limits.client_subscribe_rate``), for each is a join, as a connection's subscribe is."""
        who = session.rate_key
        subscribes = self.hub.subscribes
        if subscribes.left(who) < channels or not self._poll_entries.take(who):
            return False
        subscribes.spend(who, channels)
        return True

    async def _joined(self, channel: str, session: Session, entry: PresenceEntry) -> None:
        """``entry`` (``session``'s, or its long-poll client's) was added: its join, to the
        lifecycle's listeners and in the namespace's mode."""
        hub = self.hub
        if hub.lifecycle_listeners:
            hub.emit("join", {"channel": channel, **entry.to_dict()})
        options = hub.options(channel)
        mode = options.join_leave_mode
        if mode == "client":
            shown = entry.to_dict(info=options.presence_info)
            self._announce(channel, entry.client, "join", {"channel": channel, **shown})
        elif mode == "user" and session.user is not None:
            pending = self._retiring.pop((channel, session.user), None)
            if pending is not None:
                pending.cancel()  # back within the grace: the leave check is moot
            if await hub.engine.presence_announce(channel, session.user):
                await hub.engine.broadcast_event(
                    channel, "join", _user_event(channel, entry, options)
                )

    async def drain(self, timeout: float) -> None:
        """Send the join/leave events still waiting for their window now, and wait for them
        (a node shutting down: its clients' leaves reach the other nodes before the engine
        closes)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
        self._flush()
        if self._sending is not None and not self._sending.done():
            await asyncio.wait([self._sending], timeout=timeout)

    def _announce(self, channel: str, client: str, kind: str, event: dict[str, Any]) -> None:
        """Queue a client's ``join``/``leave`` for the next flush, ``ANNOUNCE_WINDOW`` away.

        A join and a leave of one client within the window cancel out: readers hear of changes
        that lasted, not of each subscribe/unsubscribe pair, so churn — even from connections
        that come back with a fresh command budget — costs every reader little.
        """
        waiting = self._outgoing.get(channel)
        if waiting is None:
            waiting = self._outgoing[channel] = {}
        earlier = waiting.pop(client, None)
        if earlier is not None and earlier[0] != kind:
            if not waiting:
                del self._outgoing[channel]
            return
        waiting[client] = (kind, event)
        if self._flush_at is None:
            loop = asyncio.get_running_loop()
            self._flush_at = loop.call_later(ANNOUNCE_WINDOW, self._flush)

    def _flush(self) -> None:
        self._flush_at = None
        batch, self._outgoing = self._outgoing, {}
        if batch:
            self._sending = self.hub.spawn(self._send(batch, self._sending))

    async def _send(
        self,
        batch: dict[str, dict[str, tuple[str, dict[str, Any]]]],
        before: asyncio.Task[None] | None,
    ) -> None:
        if before is not None and not before.done():
            await asyncio.wait([before])  # in order, across batches too
        broadcast = self.hub.engine.broadcast_event
        sent = [(c, kind, event) for c, events in batch.items() for kind, event in events.values()]
        outcomes: list[BaseException | None] = []
        if self.hub.publishes_inline:  # each one done at once: no task each
            for channel, kind, event in sent:
                try:
                    await broadcast(channel, kind, event)
                    outcomes.append(None)
                except ClarionError as exc:
                    outcomes.append(exc)
        else:
            # All at once, in this order: on Redis they share pipelines, where one after
            # another they cost a round trip each and fell behind a burst of sessions.
            outcomes = await asyncio.gather(
                *(broadcast(channel, kind, event) for channel, kind, event in sent),
                return_exceptions=True,
            )
        for (channel, kind, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, ClarionError):  # e.g. the engine is unreachable
                log.warning("presence %s on %s failed: %s", kind, channel, outcome.message)
            elif isinstance(outcome, Exception):  # each said, not only the first
                log.error("presence %s on %s failed", kind, channel, exc_info=outcome)

    async def join(self, session: Session, sub: Subscription) -> None:
        """Add the session to ``sub``'s channel and announce it, once per subscription.

        Awaited by the subscribe that made ``sub``, so a connection has at most one join on its
        way and its next command waits for it: churn cannot pile up joins. A subscription
        ended before its join was announced is never announced, and gets no leave either.
        """
        sub.joined = JOINING
        try:
            await self._join(session, sub)
        except ClarionError as exc:  # e.g. the engine is unreachable: the session goes on
            log.warning("presence join on %s failed: %s", sub.channel, exc.message)
            if sub.joined == JOINING:
                sub.joined = JOINED  # perhaps added: its leave removes it
            elif session.subscriptions.get(sub.channel) is None:
                await self._forget(session, sub.channel)

    async def _forget(self, session: Session, channel: str) -> None:
        """Take back an entry that was never announced (unless a newer subscription of the
        session's to the channel holds it: entries go by session)."""
        try:
            await self.hub.engine.presence_remove(channel, session.id)
        except ClarionError as exc:  # entries expire
            log.warning("presence cleanup failed for %s: %s", channel, exc.message)

    async def _join(self, session: Session, sub: Subscription) -> None:
        hub = self.hub
        engine = hub.engine
        channel = sub.channel
        entry = entry_of(session)
        await engine.presence_add(channel, entry)
        if sub.joined == LEFT:
            # Ended while the entry was being added: nobody was told it came, nobody is told
            # it went.
            if session.subscriptions.get(channel) is None:
                await self._forget(session, channel)
            return
        await self._joined(channel, session, entry)
        if sub.joined == LEFT:
            # Ended while its join was being announced: one leave follows it.
            await self._leave(session, channel, remove=session.subscriptions.get(channel) is None)
        else:
            sub.joined = JOINED

    async def leave(self, session: Session, sub: Subscription) -> None:
        """``sub`` ended: its leave, if its join was announced (or is being announced: then
        the join sends it once done). Never twice."""
        state = sub.joined
        sub.joined = LEFT
        if state == JOINED:
            await self._leave(session, sub.channel)

    async def _leave(self, session: Session, channel: str, *, remove: bool = True) -> None:
        hub = self.hub
        # A long poll subscribes only while it waits: in presence it would join and leave on
        # every poll, so it never joins.
        options = hub.options(channel)
        if not options.presence or session.transport.kind == "poll":
            return
        removal = None
        if remove:
            if session.user is not None and not hub.closing and _graced(options):
                # Its entry stays as long as its user's leave waits: a reader arriving within
                # the grace sees the user, who gets no join if back within it (a reload). One
                # removal per client and channel: the latest leave's grace decides.
                key = (channel, session.id)
                earlier = self._taking_out.pop(key, None)
                if earlier is not None:
                    earlier.cancel()
                removal = self._taking_out[key] = hub.spawn(
                    self._take_out_later(session, channel, options.presence_grace),
                    name="clarion-presence-out",
                )
            else:
                await hub.engine.presence_remove(channel, session.id)
        if hub.lifecycle_listeners:
            hub.emit("leave", {"channel": channel, **session.info()})
        self._went(channel, entry_of(session), options, removal)

    async def _take_out_later(self, session: Session, channel: str, grace: float) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._hurry.wait()
            if self._taking_out.get((channel, session.id)) is asyncio.current_task():
                del self._taking_out[(channel, session.id)]
            sub = session.subscriptions.get(channel)
            # Unless back on this connection with its join made or on its way (that one's leave
            # takes the entry out): a subscribe still reading history may yet fail, and one
            # that succeeds adds the entry again.
            if sub is None or sub.joined not in (JOINING, JOINED):
                await self.hub.engine.presence_remove(channel, session.id)
        except ClarionError as exc:  # e.g. the engine is unreachable: entries expire
            log.warning("presence cleanup failed for %s: %s", channel, exc.message)

    def _went(
        self,
        channel: str,
        entry: PresenceEntry,
        options: NamespaceOptions,
        removal: asyncio.Task[None] | None = None,
    ) -> None:
        """``entry``'s client left ``channel`` of its own accord: its leave, in the
        namespace's mode (a user's after ``removal``, its entry's, if still to come)."""
        mode = options.join_leave_mode
        if mode == "client":
            shown = entry.to_dict(info=options.presence_info)
            self._announce(channel, entry.client, "leave", {"channel": channel, **shown})
        elif mode == "user" and entry.user is not None and not self.hub.closing:
            # The user leaves once none of its clients is back within the grace, on any node:
            # a reload or a reconnect storm sends neither leave nor join.
            key = (channel, entry.user)
            pending = self._retiring.pop(key, None)
            if pending is not None:
                pending.cancel()
            event = _user_event(channel, entry, options)
            self._retiring[key] = self.hub.spawn(
                self._retire_later(key, event, options.presence_grace, removal),
                name="clarion-retire",
            )

    async def _retire_later(
        self,
        key: tuple[str, str],
        event: dict[str, Any],
        grace: float,
        removal: asyncio.Task[None] | None,
    ) -> None:
        channel, user = key
        try:
            await asyncio.sleep(grace)
            if removal is not None:
                # Taken out first, or the user would seem to have a client still. Shielded: a
                # return within the grace cancels this leave, never the entry's removal.
                await asyncio.shield(removal)
            if self._retiring.get(key) is asyncio.current_task():
                del self._retiring[key]
            if await self.hub.engine.presence_retire(channel, user):
                await self.hub.engine.broadcast_event(channel, "leave", event)
        except ClarionError as exc:  # e.g. the engine is unreachable: no leave is sent
            log.warning("presence leave on %s failed: %s", channel, exc.message)

    async def leave_all(self, session: Session, subs: list[Subscription]) -> None:
        for sub in subs:
            try:
                await self.leave(session, sub)
            except ClarionError as exc:  # e.g. the engine is unreachable: entries expire
                log.warning("presence cleanup failed for %s: %s", sub.channel, exc.message)
            except Exception:
                log.warning("presence cleanup failed for %s", sub.channel, exc_info=True)
