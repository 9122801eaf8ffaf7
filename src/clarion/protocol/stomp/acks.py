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

from typing import Literal

from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import StreamPosition
from clarion.protocol.stomp.errors import RemoteProtocolError

AckMode = Literal["auto", "client", "client-individual"]
ACK_MODES: tuple[AckMode, ...] = ("auto", "client", "client-individual")
MAX_OUT_OF_ORDER = 4096  # individually acknowledged offsets held beyond the acked position
MAX_EPOCHS = 8  # epochs remembered, to tell late acks of an old epoch from new ones


class AckPosition:
    """The acked position of one subscription in ``client`` or ``client-individual`` mode."""

    __slots__ = ("_acked", "_epochs", "individual", "position")

    def __init__(self, start: StreamPosition, *, individual: bool) -> None:
        self.position = start
        self.individual = individual
        self._acked: set[StreamPosition] = set()
        self._epochs: list[str] = [start.epoch]

    def _epoch_rank(self, epoch: str) -> int:
        # An epoch never seen is newer than every known one: the hub announces a new epoch with
        # a reset before its first message, but the ack may race that bookkeeping.
        try:
            return self._epochs.index(epoch)
        except ValueError:
            return len(self._epochs)

    def _note_epoch(self, epoch: str) -> None:
        if epoch not in self._epochs:
            self._epochs.append(epoch)
            del self._epochs[:-MAX_EPOCHS]

    def reset(self, position: StreamPosition) -> None:
        """A reset to ``position`` was sent on this subscription."""
        self._note_epoch(position.epoch)

    def ack(self, position: StreamPosition, *, cumulative: bool = False) -> None:
        current = self._epoch_rank(self.position.epoch)
        rank = self._epoch_rank(position.epoch)
        if rank < current or (rank == current and position.offset <= self.position.offset):
            return  # already covered: a late or repeated acknowledgement
        self._note_epoch(position.epoch)
        if cumulative or not self.individual:
            self.position = position
            self._acked = {
                p for p in self._acked if p.epoch == position.epoch and p.offset > position.offset
            }
        else:
            following = rank == current and position.offset == self.position.offset + 1
            if not following and len(self._acked) >= MAX_OUT_OF_ORDER:
                raise RemoteProtocolError(
                    f"over {MAX_OUT_OF_ORDER} messages acknowledged out of order",
                    code=ErrorCode.TOO_MANY_ACKS,
                )
            self._acked.add(position)
        self._advance()

    def _advance(self) -> None:
        acked = self._acked
        following = StreamPosition(self.position.epoch, self.position.offset + 1)
        while following in acked:
            acked.discard(following)
            self.position = following
            following = StreamPosition(following.epoch, following.offset + 1)

    @property
    def out_of_order(self) -> int:
        return len(self._acked)
