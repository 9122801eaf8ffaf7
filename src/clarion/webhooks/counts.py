"""Pending deliveries and dead letters per endpoint, as this node last counted them.

Kept in memory for ``GET /api/webhooks``, the metrics and the ``max_backlog`` and
``max_backlog_bytes`` bounds, adjusted as deliveries are stored and delivered, and read again
from the outbox when it is opened or, when shared, refreshed. The dead letters' count comes from
the outbox only (told after each write by one of this node's, read at refresh when shared): it
alone knows which of them its bounds let go.
"""

from __future__ import annotations

from clarion.webhooks.outbox import Outbox


class QueueCounts:
    def __init__(self) -> None:
        self.backlog: dict[str, int] = {}
        self.backlog_bytes: dict[str, int] = {}  # what the pending deliveries' payloads take
        self.dead: dict[str, int] = {}

    async def reload(self, outbox: Outbox) -> None:
        self.backlog = await outbox.backlog()
        self.backlog_bytes = await outbox.backlog_bytes()
        self.dead = await outbox.dead_count()

    def add_backlog(self, endpoint_id: str, delta: int, size: int) -> None:
        """``delta`` deliveries of ``size`` payload bytes in all joined (or left) the backlog."""
        self.backlog[endpoint_id] = max(0, self.backlog.get(endpoint_id, 0) + delta)
        held = self.backlog_bytes.get(endpoint_id, 0)
        self.backlog_bytes[endpoint_id] = max(0, held + (size if delta > 0 else -size))

    def dead_counted(self, endpoint_id: str, held: int) -> None:
        """The outbox holds ``held`` dead letters for the endpoint now."""
        self.dead[endpoint_id] = held

    def forget(self, endpoint_id: str) -> None:
        self.backlog.pop(endpoint_id, None)
        self.backlog_bytes.pop(endpoint_id, None)
        self.dead.pop(endpoint_id, None)
