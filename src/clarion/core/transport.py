"""What the hub needs of a transport: the calls each adapter's connection answers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from clarion.core.session import Session
    from clarion.protocol.publication import StreamPosition


class Transport(Protocol):
    """What an adapter provides for each connection. All calls are synchronous and cheap."""

    kind: str  # "ws", "sse", "poll", "stomp": the metrics label

    @property
    def last_activity(self) -> float:
        """``time.monotonic()`` of the last sign of life from the peer."""

    def ping(self) -> None:
        """Ask the peer for a sign of life (a WebSocket ping, a STOMP heart-beat...)."""

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        """Tell the client it missed publications on ``channel`` that cannot be recovered."""

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        """A presence ``join``/``leave`` event."""

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        """The hub ended the subscription to ``channel`` (it is already detached)."""

    async def hub_subscribe(
        self, session: Session, channel: str, since: StreamPosition | None, *, server: bool
    ) -> None:
        """Subscribe ``session`` to ``channel`` on the hub's initiative (the backend's
        ``POST /api/subscribe``, or the token's ``subs`` claim) in this transport's format, and
        push ``subscribe`` to the client once it is ready. The one coroutine of a transport."""

    def close(self, code: int, reason: str) -> None:
        """End the connection with a documented code; must be idempotent."""


@runtime_checkable
class Backlogged(Protocol):
    """A transport that can report its backlog, needed by the ``conflate`` slow-consumer policy."""

    def backlog(self) -> int:
        """Bytes queued for the peer and not yet written."""

    def watch_overflow(self) -> None:
        """Report the next overflow again (after a conflation ended)."""

    def cut(self) -> bool:
        """Past twice the send budget: nothing more is queued, and the connection must end
        (as slow, whatever the slow-consumer policy)."""
