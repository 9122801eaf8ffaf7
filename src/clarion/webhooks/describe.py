"""An endpoint as ``GET /api/webhooks`` shows it: its configuration and how delivery goes."""

from __future__ import annotations

import time
from typing import Any

from clarion.protocol.cursor import encode_single
from clarion.webhooks.counts import QueueCounts
from clarion.webhooks.endpoint import Endpoint
from clarion.webhooks.outbox import Outbox
from clarion.webhooks.replay import MAX_POSITIONS
from clarion.webhooks.worker import EndpointWorker, millis


async def describe(
    endpoint: Endpoint,
    worker: EndpointWorker | None,
    counts: QueueCounts,
    outbox: Outbox,
    detail: bool = False,
) -> dict[str, Any]:
    """``detail`` adds the secret and the last delivered position per channel."""
    out = endpoint.describe()
    head = worker.head if worker is not None else None
    out["backlog"] = counts.backlog.get(endpoint.id, 0)
    out["dead_letters"] = counts.dead.get(endpoint.id, 0)
    out["in_flight"] = bool(worker and worker.in_flight)
    out["attempts"] = head.attempts if head is not None else 0
    out["next_attempt_at"] = (
        None
        if head is None or endpoint.disabled or out["backlog"] == 0
        else max(millis(head.next_attempt) or 0, millis(time.time()) or 0)
    )
    if detail:
        out["secret"] = endpoint.secret
        out["positions"] = {
            channel: {
                "epoch": epoch,
                "offset": offset,
                "cursor": encode_single(channel, epoch, offset),
            }
            for channel, epoch, offset in await outbox.positions(endpoint.id, MAX_POSITIONS)
        }
    return out
