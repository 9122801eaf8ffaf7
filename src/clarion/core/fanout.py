"""Fan-out: one node's subscribers of one channel, and delivery by encoding once per format.

The hot path is :meth:`LocalChannel.deliver`: for each wire format in use on the channel the
publication is encoded once (memoised on the publication), then handed to every live subscriber of
that format as the same object. A subscriber's ``push`` is a plain synchronous append into its
connection's buffer — no JSON encoding, no coroutine, no task per subscriber.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from clarion.protocol.cursor import encode_single
from clarion.protocol.publication import Publication, StreamPosition

if TYPE_CHECKING:
    from clarion.core.session import Session

Push = Callable[[Any], None]


def publication_cursor(pub: Publication) -> str:
    """The single-channel cursor pointing just after ``pub`` (memoised on the publication)."""
    cursor = pub.cursor
    if cursor is None:
        cursor = pub.cursor = encode_single(pub.channel, pub.epoch, pub.offset)
    return cursor


def cursor_if_stored(pub: Publication) -> str | None:
    """:func:`publication_cursor`, or ``None`` for an ephemeral publication (it has no place
    in the stream, so it moves no reader's cursor)."""
    return None if pub.ephemeral else publication_cursor(pub)


def deliver_each(targets: Iterable[Any], data: Any) -> None:
    """The default fan-out loop: each target is a ``push`` callable."""
    for push in targets:
        push(data)


class WireFormat:
    """How publications look on one kind of connection; ``encode`` runs once per publication.

    ``deliver(targets, data)`` hands the encoded ``data`` to every live subscriber of the
    format; a transport may supply a tighter loop than calling each subscriber's ``push``
    (clarion's server appends to connection buffers directly).
    """

    __slots__ = ("deliver", "encode", "name", "transport")

    def __init__(
        self,
        name: str,
        transport: str,
        encode: Callable[[Publication], Any],
        deliver: Callable[[Iterable[Any], Any], None] = deliver_each,
    ) -> None:
        self.name = name
        self.transport = transport
        self.encode = encode
        self.deliver = deliver

    def __repr__(self) -> str:
        return f"WireFormat({self.name!r})"


# ``Subscription.joined``: no presence entry; its join is on its way; announced (or at least
# added); its leave has been sent.
NOT_JOINED, JOINING, JOINED, LEFT = range(4)


class Subscription:
    """One session's subscription to one channel on this node.

    ``push`` delivers one encoded publication to this subscriber; ``target`` is what the
    format's ``deliver`` loop receives for it (``push`` itself unless the transport says).
    """

    __slots__ = ("channel", "fmt", "joined", "push", "server", "session", "target")

    def __init__(
        self,
        session: Session,
        channel: str,
        fmt: WireFormat,
        push: Push,
        target: Any = None,
        *,
        server: bool = False,
    ) -> None:
        self.session = session
        self.channel = channel
        self.fmt = fmt
        self.push = push
        self.target = push if target is None else target
        # Made by the backend (``POST /api/subscribe``): its grant, not the token's, so a
        # change of token does not end it.
        self.server = server
        # Where its presence stands (:class:`~clarion.core.presence.Roster`): a join not yet
        # announced is never followed by a leave.
        self.joined = NOT_JOINED


class LocalChannel:
    """The subscribers of one channel on this node and the last position delivered to them."""

    __slots__ = (
        "ahead",
        "by_format",
        "conflating",
        "delivered",
        "folded_delivered",
        "folded_published",
        "last",
        "live_count",
        "name",
        "namespace",
        "pending",
        "published",
        "rate",
        "ready",
    )

    def __init__(self, name: str, namespace: str) -> None:
        self.name = name
        # What it delivered, counted on the hot path; rates and namespace totals are made from
        # these apart from it (clarion.core.rates).
        self.namespace = namespace
        self.published = self.delivered = 0
        self.folded_published = self.folded_delivered = 0
        self.rate = 0.0  # publications per second over the reporter's last pass
        # format -> {subscription: target}; dicts keep insertion order and O(1) removal.
        self.by_format: dict[WireFormat, dict[Subscription, Any]] = {}
        # Subscriptions still reading history: they buffer live publications until caught up.
        self.pending: dict[Subscription, list[Publication]] = {}
        # Subscriptions of slow sessions under the "conflate" policy: only the latest is kept.
        self.conflating: dict[Subscription, Publication | None] = {}
        # Subscriptions that already hold publications this node has not delivered live yet
        # (the history they read is ahead of pub/sub): each goes live at its position.
        self.ahead: dict[Subscription, StreamPosition] = {}
        # The last publication delivered, or the position delivery starts from: the channel's
        # position, kept as the publication itself, which carries it (one object less made per
        # publication).
        self.last: Publication | StreamPosition | None = None
        self.live_count = 0
        self.ready: Any = None  # set by the hub while the node subscription is being made

    @property
    def position(self) -> StreamPosition | None:
        last = self.last
        if last is None or type(last) is StreamPosition:
            return last
        return StreamPosition(last.epoch, last.offset)

    @position.setter
    def position(self, position: StreamPosition | None) -> None:
        self.last = position

    def __len__(self) -> int:
        return self.live_count + len(self.pending) + len(self.conflating) + len(self.ahead)

    def subscriptions(self) -> list[Subscription]:
        subs: list[Subscription] = list(self.pending)
        subs.extend(self.conflating)
        subs.extend(self.ahead)
        for group in self.by_format.values():
            subs.extend(group)
        return subs

    def add_live(self, sub: Subscription) -> None:
        group = self.by_format.get(sub.fmt)
        if group is None:
            group = self.by_format[sub.fmt] = {}
        group[sub] = sub.target
        self.live_count += 1

    def catch_up(self, pub: Publication) -> None:
        """``pub`` was just delivered: subscriptions that already had it go live after it."""
        for sub, position in list(self.ahead.items()):
            if position.epoch != pub.epoch or position.offset <= pub.offset:
                del self.ahead[sub]
                self.add_live(sub)

    def all_live(self) -> None:
        """After a reset every subscriber starts again from the reset position: none is ahead."""
        for sub in self.ahead:
            self.add_live(sub)
        self.ahead.clear()

    def remove(self, sub: Subscription) -> bool:
        if self.pending.pop(sub, None) is not None:
            return True
        if sub in self.conflating:
            del self.conflating[sub]
            return True
        if self.ahead.pop(sub, None) is not None:
            return True
        group = self.by_format.get(sub.fmt)
        if group is not None and group.pop(sub, None) is not None:
            self.live_count -= 1
            if not group:
                del self.by_format[sub.fmt]
            return True
        return False
