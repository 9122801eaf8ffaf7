"""Pending deliveries and dead letters per endpoint, as this node last counted them.

Kept in memory for ``GET /api/webhooks`` and the ``max_backlog`` and ``max_backlog_bytes``
bounds, adjusted as deliveries
are stored and delivered, and read again from the outbox when it is opened or, when shared,
refreshed.
"""

from __future__ import annotations

from clarion.webhooks.outbox import Outbox


class QueueCounts:
    def __init__(self, max_dead_letters: int) -> None:
        self.backlog: dict[str, int] = {}
        self.backlog_bytes: dict[str, int] = {}  # what the pending deliveries' payloads take
        self.dead: dict[str, int] = {}
        self._max_dead = max_dead_letters

    async def reload(self, outbox: Outbox) -> None:
        self.backlog = await outbox.backlog()
        self.backlog_bytes = await outbox.backlog_bytes()
        self.dead = await outbox.dead_count()

    def add_backlog(self, endpoint_id: str, delta: int, size: int) -> None:
        """``delta`` deliveries of ``size`` payload bytes in all joined (or left) the backlog."""
        self.backlog[endpoint_id] = max(0, self.backlog.get(endpoint_id, 0) + delta)
        held = self.backlog_bytes.get(endpoint_id, 0)
        self.backlog_bytes[endpoint_id] = max(0, held + (size if delta > 0 else -size))

    def add_dead(self, endpoint_id: str) -> None:
        # The outbox keeps at most max_dead_letters, dropping the oldest: count the same way.
        held = self.dead.get(endpoint_id, 0) + 1
        self.dead[endpoint_id] = min(held, self._max_dead)

    def forget(self, endpoint_id: str) -> None:
        self.backlog.pop(endpoint_id, None)
        self.backlog_bytes.pop(endpoint_id, None)
        self.dead.pop(endpoint_id, None)
