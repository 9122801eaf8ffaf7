"""What the webhook service needs from storage: :class:`Outbox`.

Each engine makes its own (``Engine.webhook_outbox``): the memory engine's is
:class:`~clarion.webhooks.sqlite_outbox.SQLiteOutbox`, the Redis engine's
:class:`~clarion.webhooks.redis_outbox.RedisOutbox`, shared by every node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from clarion.webhooks.endpoint import Delivery, Endpoint


class Outbox(Protocol):
    """Storage for the webhook service, made by the engine (``Engine.webhook_outbox``).

    :meth:`enqueue` is called from the hub's listeners and never blocks the event loop: what is
    enqueued in one loop iteration is stored together (one transaction, one round trip), and the
    future it returns is done once the deliveries are stored as durably as the implementation
    promises — the publish call waits for it. Everything else is awaited.
    """

    # True when several nodes share the outbox: endpoints change under this node's feet, and
    # each endpoint's queue is delivered by whichever node holds its lease.
    shared: bool
    # Seconds between looks at a queue this node has not been told about (``None``: never).
    poll_interval: float | None
    # Told which endpoints have new deliveries once they are stored (wakes their workers).
    on_written: Callable[[set[str]], None] | None
    # Told when another node announces a change of the endpoint registry (shared outboxes).
    on_registry_changed: Callable[[], None] | None
    # Told how many dead letters an endpoint holds after a write of this node's gave it more
    # (an outbox that is not shared: a shared one's counts are read at each refresh).
    on_dead_counted: Callable[[str, int], None] | None

    def in_use(self) -> bool:
        """Whether to open the outbox at start: it holds something, or other nodes may add to
        it. Otherwise it is opened with the first endpoint, and a hub that never uses webhooks
        leaves nothing behind."""

    async def open(self) -> None: ...

    def enqueue(
        self, deliveries: list[Delivery], event_version: int | None = None
    ) -> asyncio.Future[list[Delivery]]:
        """Append ``deliveries`` in order (those with ``dead_at`` set go to dead letters).

        The future's result is the deliveries stored: one whose ``(endpoint, msg_id)`` is already
        pending may be skipped. It fails when they could not be stored.
        """

    async def load_endpoints(self) -> list[Endpoint]: ...

    async def save_endpoint(self, endpoint: Endpoint) -> None: ...

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """Forget the endpoint with its pending deliveries, dead letters and positions."""

    async def registry_version(self) -> int:
        """Changes with every endpoint saved or deleted by any node sharing the outbox."""

    async def head(self, endpoint_id: str, limit: int) -> list[Delivery]:
        """The oldest pending deliveries of an endpoint, oldest first."""

    async def delivered(self, delivery: Delivery, endpoint: Endpoint) -> None:
        """Forget a delivery the receiver acknowledged; record the endpoint's position."""

    async def failed(self, delivery: Delivery, endpoint: Endpoint) -> None:
        """Record a failed attempt (attempts, next attempt time, error)."""

    async def bury(self, delivery: Delivery) -> None:
        """Move a pending delivery to the dead letters (the oldest beyond the bound go)."""

    async def backlog(self) -> dict[str, int]:
        """Pending deliveries per endpoint."""

    async def backlog_bytes(self) -> dict[str, int]:
        """What the pending deliveries take, per endpoint: their payloads' bytes (on Redis,
        their stored form, payload and retry state)."""

    async def dead_count(self) -> dict[str, int]: ...

    async def dead_letters(self, endpoint_id: str, after_seq: int, limit: int) -> list[Delivery]:
        """Dead letters of an endpoint, oldest first."""

    async def revive(self, endpoint_id: str, ids: list[str] | None) -> tuple[int, int]:
        """Move dead letters (all, or those with these message ids) back to the outbox's end:
        how many are pending again, and their payloads' bytes."""

    async def positions(self, endpoint_id: str, limit: int) -> list[tuple[str, str, int]]:
        """``(channel, epoch, offset)`` of the last delivery per channel, latest first."""

    async def event_version(self) -> int: ...

    async def claim(self, endpoint_id: str) -> bool:
        """Take or renew the right to deliver the endpoint; ``False`` while another node has it."""

    async def release(self, endpoint_id: str) -> None:
        """Give up the right to deliver the endpoint."""

    async def flush(self) -> None:
        """Wait until what :meth:`enqueue` accepted so far is stored (or has failed)."""

    def close(self) -> None: ...

    async def aclose(self) -> None:
        """Store what is pending, give up what this node holds, and close."""
