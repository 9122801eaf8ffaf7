"""Acknowledgements mapped to stream positions.

clarion is not a broker: it never redelivers on its own. Acknowledgements instead move a
per-subscription *acked position* forward, which the client reads back (``x-cursor`` in the
``RECEIPT`` of an ``ACK``/``NACK``/``UNSUBSCRIBE``) and resumes from with ``x-since``; whatever
was delivered but not acknowledged is delivered again on that resume, from history.

* ``client``: an ``ACK`` acknowledges its message and everything before it.
* ``client-individual``: an ``ACK`` acknowledges its message only; the position advances over
  the unbroken run of acknowledged offsets.
* a reset ``MESSAGE`` (``message-id: reset-<cursor>``) acknowledged in either mode accepts the
  gap it announces: the position moves to its cursor.
* ``NACK`` acknowledges nothing.
"""

from __future__ import annotations

import heapq
from typing import Literal

from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import StreamPosition
from clarion.protocol.stomp.errors import RemoteProtocolError

AckMode = Literal["auto", "client", "client-individual"]
ACK_MODES: tuple[AckMode, ...] = ("auto", "client", "client-individual")
# Offsets acknowledged out of order and held beyond the acked positions, across one
# connection's subscriptions: a bound per connection, not per subscription, so that many
# subscriptions do not multiply it.
MAX_OUT_OF_ORDER = 4096
MAX_EPOCHS = 8  # epochs remembered, to tell late acks of an old epoch from new ones


class AckRoom:
    """What one connection's subscriptions hold out of order, together."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0


class AckPosition:
    """The acked position of one subscription in ``client`` or ``client-individual`` mode.

    An epoch never seen is taken as newer than every known one (the hub announces a new epoch
    with a reset before its first message; an id naming one it did not announce is forged or
    stale, and moves only this subscription's own position). Only the last MAX_EPOCHS are
    remembered, with what is held out of order in them.
    """

    __slots__ = ("_acked", "_epochs", "individual", "position", "room")

    def __init__(
        self, start: StreamPosition, *, individual: bool, room: AckRoom | None = None
    ) -> None:
        self.position = start
        self.individual = individual
        self.room = room if room is not None else AckRoom()
        # Offsets acknowledged out of order, by epoch: a set to tell repeats, and a heap of the
        # same offsets whose top is the lowest, so that an ack dropping what it covers costs
        # O(log n) per offset dropped (each is pushed and popped once), not a walk over all.
        self._acked: dict[str, tuple[set[int], list[int]]] = {}
        self._epochs: list[str] = [start.epoch]

    def _epoch_rank(self, epoch: str) -> int | None:
        try:
            return self._epochs.index(epoch)
        except ValueError:
            return None

    def _note_epoch(self, epoch: str) -> None:
        if epoch not in self._epochs:
            self._epochs.append(epoch)
            for old in self._epochs[:-MAX_EPOCHS]:
                self._drop_epoch(old)
            del self._epochs[:-MAX_EPOCHS]

    def reset(self, position: StreamPosition) -> None:
        """A reset to ``position`` was sent on this subscription."""
        self._note_epoch(position.epoch)

    def ack(self, position: StreamPosition, *, cumulative: bool = False) -> None:
        self._note_epoch(position.epoch)
        rank = self._epochs.index(position.epoch)
        current = self._epoch_rank(self.position.epoch)
        current = -1 if current is None else current  # its epoch is older than those kept
        if rank < current or (rank == current and position.offset <= self.position.offset):
            return  # already covered: a late or repeated acknowledgement
        if cumulative or not self.individual:
            for epoch in self._epochs[:rank]:
                self._drop_epoch(epoch)
            self.position = position
            self._drop_through(position)
        else:
            following = rank == current and position.offset == self.position.offset + 1
            if following:
                self.position = position
            else:
                held = self._acked.get(position.epoch)
                if held is None:
                    held = self._acked[position.epoch] = (set(), [])
                offsets, lowest = held
                if position.offset in offsets:
                    return
                if self.room.held >= MAX_OUT_OF_ORDER:
                    raise RemoteProtocolError(
                        f"over {MAX_OUT_OF_ORDER} messages acknowledged out of order",
                        code=ErrorCode.TOO_MANY_ACKS,
                    )
                offsets.add(position.offset)
                heapq.heappush(lowest, position.offset)
                self.room.held += 1
                return
        self._advance()

    def _drop_epoch(self, epoch: str) -> None:
        held = self._acked.pop(epoch, None)
        if held is not None:
            self.room.held -= len(held[0])

    def _drop_through(self, position: StreamPosition) -> None:
        """Forget the offsets of ``position``'s epoch at or before it."""
        held = self._acked.get(position.epoch)
        if held is None:
            return
        offsets, lowest = held
        while lowest and lowest[0] <= position.offset:
            offsets.discard(heapq.heappop(lowest))
            self.room.held -= 1

    def _advance(self) -> None:
        """Move over the unbroken run of offsets acknowledged after the position."""
        held = self._acked.get(self.position.epoch)
        if held is None:
            return
        offsets, lowest = held
        epoch, offset = self.position.epoch, self.position.offset
        moved = False
        while lowest and lowest[0] == offset + 1:
            offset = heapq.heappop(lowest)
            offsets.discard(offset)
            self.room.held -= 1
            moved = True
        if moved:
            self.position = StreamPosition(epoch, offset)

    def release(self) -> None:
        """The subscription ended: what it held out of order no longer counts."""
        for epoch in list(self._acked):
            self._drop_epoch(epoch)

    @property
    def out_of_order(self) -> int:
        return sum(len(offsets) for offsets, _ in self._acked.values())
