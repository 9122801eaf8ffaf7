"""Several STOMP subscriptions of one connection to one destination, behind one hub subscription.

The hub holds one subscription per channel and connection. A further STOMP subscription to a
channel moves it to :data:`SHARED_FORMAT`, whose push hands each publication to every STOMP
subscription of the channel, each with its own frames and ack state; one that resumes or asks
for the latest publication reads history alone while live publications wait in its buffer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from clarion.asgi.stompwire import BinaryTail, message_tail_of
from clarion.core.fanout import Push, WireFormat
from clarion.core.pages import fitting, page_bytes, read_start, replay_budget
from clarion.core.resume import reset_reason, short_of
from clarion.core.session import Session
from clarion.protocol.codes import CloseCode
from clarion.protocol.cursor import Cursor
from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import Publication, StreamPosition
from clarion.protocol.stomp import RemoteProtocolError, StompSubscription, Subscribe
from clarion.protocol.stomp.message import TOPIC, is_binary

if TYPE_CHECKING:
    from clarion.asgi.stomp import StompConnection


async def subscribe_shared(conn: StompConnection, session: Session, event: Subscribe) -> None:
    """A further subscription to a destination this connection already subscribes to.

    The hub holds one subscription per channel and connection: the first STOMP
    subscription's is moved to :data:`SHARED_FORMAT`, whose push hands each publication to
    every STOMP subscription of the channel, each with its own frames and ack state.
    """
    sub = event.subscription
    channel = sub.channel
    shared = conn.shared.get(channel)
    if shared is None:
        local = conn.hub.local.get(channel)
        position = None if local is None else local.position
        if position is None:
            raise _still_resuming(channel)
        shared = Shared(conn, channel, position)
        for first in conn.stomp.by_channel[channel]:
            if first is not sub:
                shared.add(first)
        if not conn.hub.retarget(session, channel, SHARED_FORMAT, shared.push):
            raise _still_resuming(channel)
        conn.shared[channel] = shared
    since = event.since
    start = shared.position
    if since is None and event.latest:
        await _latest_shared(conn, shared, event)
        return
    if since is None or since == start:
        sub.start(start)
        shared.add(sub)
        conn._reply(event.receipt, ("x-cursor", Cursor.single(channel, start).encode()))
        return
    # Resume this subscription alone: live publications wait in its buffer meanwhile.
    buffer = shared.add(sub, pending=True)
    hub = conn.hub
    full = replay_budget(hub.settings.limits.send_queue_bytes, 0)
    allowance = hub.reads.budget(session.rate_key, full)
    history, paged = await read_start(
        hub.engine, channel, hub.options(channel), since, False, allowance, full
    )
    if shared.buffers.get(sub) is not buffer or conn.shared.get(channel) is not shared:
        return  # unsubscribed meanwhile
    reason = None if history.covers(since) else reset_reason(history, since)
    last = since if reason is None else history.position
    sub.start(last)
    cursor = Cursor.single(channel, last).encode()
    conn._reply(event.receipt, ("x-cursor", cursor))
    if reason is not None:
        frame = conn.stomp.reset(sub, reason, cursor)
        if frame is not None:
            conn.wire.send(frame)
    else:
        # As every resume: the replay stops at what the send budget has left, and a client
        # that missed more is closed as slow once that part is out, to resume from it.
        pubs = [p for p in history.publications if p.epoch == last.epoch and p.offset > last.offset]
        budget = replay_budget(hub.settings.limits.send_queue_bytes, conn.backlog())
        if pubs:  # and the client's own allowance, across its connections
            budget = hub.reads.budget(session.rate_key, budget)
        count = fitting(pubs, budget)
        hub.reads.spend(session.rate_key, page_bytes(pubs[:count]))
        for pub in pubs[:count]:
            shared.deliver(sub, pub)
            last = pub.position
        if count < len(pubs) or (paged and short_of(last, history.position)):
            hub.stats.slow_disconnects += 1
            session.close(CloseCode.SLOW)
            return
    _go_live(shared, sub, buffer, last)


async def _latest_shared(conn: StompConnection, shared: Shared, event: Subscribe) -> None:
    """``x-latest`` on a further subscription: the newest stored publication first."""
    sub, channel, start = event.subscription, shared.channel, shared.position
    buffer = shared.add(sub, pending=True)
    hub = conn.hub
    history = await hub.engine.history(channel, hub.options(channel), limit=1, reverse=True)
    if shared.buffers.get(sub) is not buffer or conn.shared.get(channel) is not shared:
        return  # unsubscribed meanwhile
    sub.start(start)
    conn._reply(event.receipt, ("x-cursor", Cursor.single(channel, start).encode()))
    last = start
    for pub in history.publications:
        shared.deliver(sub, pub)
        if pub.epoch == last.epoch and pub.offset > last.offset:
            last = pub.position
    _go_live(shared, sub, buffer, last)


def _still_resuming(channel: str) -> RemoteProtocolError:
    # The hub's subscription is not live yet (still reading history, or held back while slow).
    return RemoteProtocolError(
        f"{TOPIC + channel!r} is still being caught up on this connection: "
        "subscribe again once its first subscription's messages arrive",
        code=ErrorCode.BUSY,
    )


# The hub's format for a channel with several STOMP subscriptions on one connection: the
# publication itself, which Shared turns into each subscription's frame.
SHARED_FORMAT = WireFormat("stomp/shared", "stomp", lambda pub: pub)


class Shared:
    """The STOMP subscriptions of one connection to one channel, behind one hub subscription.

    Each gets the frame of its own flavour (the tails are memoised on the publication like any
    wire format's); one whose ``ack`` ids carry a suffix gets a tail of its own.
    """

    __slots__ = ("buffers", "channel", "connection", "last", "pushes")

    def __init__(self, connection: StompConnection, channel: str, position: StreamPosition) -> None:
        self.connection = connection
        self.channel = channel
        self.pushes: dict[StompSubscription, Push] = {}
        # Subscriptions still reading history, and the live publications they wait on.
        self.buffers: dict[StompSubscription, list[Publication]] = {}
        # The last publication delivered (where it started before the first): its position is
        # made only where it is read, not per publication (a frozen dataclass costs ~0.8 µs).
        self.last: Publication | StreamPosition = position

    @property
    def position(self) -> StreamPosition:
        last = self.last
        return last if type(last) is StreamPosition else StreamPosition(last.epoch, last.offset)

    def add(self, sub: StompSubscription, *, pending: bool = False) -> list[Publication]:
        buffer: list[Publication] = []
        if pending:
            self.buffers[sub] = buffer
        else:
            self.pushes[sub] = self.connection.wire.push_for(sub.prefix)
        return buffer

    def live(self, sub: StompSubscription) -> None:
        if self.buffers.pop(sub, None) is not None:
            self.pushes[sub] = self.connection.wire.push_for(sub.prefix)

    def remove(self, sub: StompSubscription) -> None:
        self.pushes.pop(sub, None)
        self.buffers.pop(sub, None)

    def push(self, pub: Publication) -> None:
        if not pub.ephemeral:  # a live signal has no place in the stream
            self.last = pub
        for buffer in self.buffers.values():
            buffer.append(pub)
        for sub in list(self.pushes):
            self.deliver(sub, pub)

    def deliver(self, sub: StompSubscription, pub: Publication) -> None:
        push = self.pushes.get(sub) or self.connection.wire.push_for(sub.prefix)
        wire = self.connection.wire
        escaped = self.connection.stomp.escaped
        if sub.ack_suffix and sub.needs_ack:
            frame = message_tail_of(pub, escaped=escaped, ack=True, ack_suffix=sub.ack_suffix)
            tail = BinaryTail(frame) if is_binary(pub) else wire.encode(frame)
        else:
            fmt = wire.formats[(escaped, sub.needs_ack)]
            tail = pub.encoded(fmt, fmt.encode)
        push(tail)


def _go_live(
    shared: Shared, sub: StompSubscription, buffer: Iterable[Publication], last: StreamPosition
) -> None:
    """Deliver what was buffered past ``last`` (no duplicates), then switch ``sub`` to live."""
    for pub in buffer:
        if pub.epoch == last.epoch and pub.offset <= last.offset:
            continue
        shared.deliver(sub, pub)
        if not pub.ephemeral:
            last = pub.position
    shared.live(sub)
