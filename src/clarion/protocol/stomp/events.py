"""What a client's frames mean once checked: one value per client command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clarion.protocol.publication import StreamPosition
from clarion.protocol.stomp.acks import AckMode, AckPosition, AckRoom
from clarion.protocol.stomp.message import message_prefix
from clarion.protocol.stomp.negotiation import HeartBeat


class StompSubscription:
    """One ``SUBSCRIBE`` of a session: its id, channel, ack mode and acked position.

    ``ack_suffix`` tells this subscription's ``ack`` ids from those of other subscriptions of the
    session to the same destination: empty for the first one (its ack id is the bare cursor),
    ``.<n>`` for the others.
    """

    __slots__ = ("ack", "ack_suffix", "acks", "channel", "id", "prefix", "room")

    def __init__(
        self,
        sub_id: str,
        channel: str,
        ack: AckMode,
        *,
        escaped: bool,
        ack_suffix: str = "",
        room: AckRoom | None = None,
    ) -> None:
        self.id = sub_id
        self.channel = channel
        self.ack = ack
        self.ack_suffix = ack_suffix
        self.prefix = message_prefix(sub_id, escaped=escaped)
        self.acks: AckPosition | None = None
        self.room = room if room is not None else AckRoom()  # the connection's, shared

    def start(self, position: StreamPosition) -> None:
        """Deliveries begin after ``position``: the acked position starts there."""
        if self.ack != "auto":
            self.end()
            individual = self.ack == "client-individual"
            self.acks = AckPosition(position, individual=individual, room=self.room)

    def end(self) -> None:
        """The subscription ended: what it held out of order stops counting."""
        if self.acks is not None:
            self.acks.release()

    @property
    def needs_ack(self) -> bool:
        return self.ack != "auto"

    def __repr__(self) -> str:
        return f"StompSubscription({self.id!r}, {self.channel!r}, ack={self.ack})"


@dataclass(frozen=True, slots=True)
class Connect:
    version: str
    heart_beat: HeartBeat
    token: str | None
    login: str | None
    host: str | None


@dataclass(frozen=True, slots=True)
class Send:
    channel: str
    data: Any
    receipt: str | None
    idempotency_key: str | None
    transaction: str | None = None  # held until that transaction's COMMIT
    attrs: dict[str, Any] | None = None  # the publication's attributes (user headers, body)
    ephemeral: bool = False  # ``x-ephemeral:true``: a live signal, never stored
    key: str | None = None  # ``x-key``: the signal's key


@dataclass(frozen=True, slots=True)
class Subscribe:
    subscription: StompSubscription
    since: StreamPosition | None
    receipt: str | None
    latest: bool = False  # ``x-latest:true``: the newest stored publication first


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    subscription: StompSubscription | None  # None: no such subscription (not an error)
    receipt: str | None


@dataclass(frozen=True, slots=True)
class Ack:
    subscription: StompSubscription | None  # None: the subscription has ended meanwhile
    position: StreamPosition
    negative: bool  # NACK
    receipt: str | None
    transaction: str | None = None  # held until that transaction's COMMIT
    cumulative: bool = False  # a reset's ack: accepts the gap it announces


@dataclass(frozen=True, slots=True)
class Begin:
    transaction: str
    receipt: str | None


@dataclass(frozen=True, slots=True)
class Commit:
    """The transaction's ``SEND``s and ``ACK``/``NACK``s, in the order they arrived: the
    adapter carries them out now (:meth:`StompSession.apply_ack` for the acks)."""

    transaction: str
    frames: tuple[Send | Ack, ...]
    receipt: str | None


@dataclass(frozen=True, slots=True)
class Abort:
    transaction: str
    receipt: str | None


@dataclass(frozen=True, slots=True)
class Disconnect:
    receipt: str | None


Event = Connect | Send | Subscribe | Unsubscribe | Ack | Begin | Commit | Abort | Disconnect
