"""Deliver again: what history holds after a cursor, and dead letters back into the queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clarion.errors import BadRequest
from clarion.protocol.channels import validate_channel
from clarion.protocol.cursor import Cursor
from clarion.webhooks.counts import QueueCounts
from clarion.webhooks.endpoint import Endpoint
from clarion.webhooks.intake import Intake, publication_deliveries
from clarion.webhooks.outbox import Outbox

if TYPE_CHECKING:
    from clarion.core.hub import Hub

MAX_POSITIONS = 1000  # channel positions read per endpoint, latest first


async def replay(
    hub: Hub, intake: Intake, endpoint: Endpoint, since: object, channels: object = None
) -> dict[str, Any]:
    """Enqueue again what history holds after the cursor ``since``, channel by channel.

    The channels are those named, or else the endpoint's exact patterns and the channels it
    has had deliveries on — whichever the cursor holds a position for.
    """
    cursor = Cursor.decode(since)
    if channels is not None:
        if not isinstance(channels, list) or not channels:
            raise BadRequest("'channels' must be a non-empty list of channel names")
        names = [validate_channel(c) for c in channels]
        for name in names:
            if not endpoint.wants_channel(name):
                raise BadRequest(f"webhook {endpoint.id} does not deliver channel {name!r}")
            if cursor.get(name) is None:
                raise BadRequest(f"the cursor holds no position for channel {name!r}")
    else:
        known = [p for p in endpoint.channels if "*" not in p]
        positions = await intake.outbox.positions(endpoint.id, MAX_POSITIONS)
        known += [channel for channel, _, _ in positions]
        names = [c for c in dict.fromkeys(known) if cursor.get(c) is not None]
        if not names:
            raise BadRequest(
                "the cursor holds no position for a channel this webhook delivers; "
                "name the channels in 'channels'"
            )
    return await _replay(hub, intake, names, cursor, endpoint)


async def _replay(
    hub: Hub, intake: Intake, names: list[str], cursor: Cursor, endpoint: Endpoint
) -> dict[str, Any]:
    enqueued = 0
    resets: list[dict[str, str]] = []
    for name in names:
        position = cursor.get(name)
        while True:
            history, reason = await hub.history(name, since=position)
            if reason is not None and not any(r["channel"] == name for r in resets):
                resets.append({"channel": name, "reason": reason})
            if not history.publications:
                break
            enqueued += await intake.store(
                [d for pub in history.publications for d in publication_deliveries(pub, [endpoint])]
            )
            position = history.publications[-1].position
            if position.offset >= history.position.offset:
                break
    return {"enqueued": enqueued, "channels": names, "resets": resets}


async def revive(
    outbox: Outbox, counts: QueueCounts, endpoint: Endpoint, ids: object = None
) -> int:
    """Move dead letters back to the end of the endpoint's queue; returns how many."""
    if ids is not None and (
        not isinstance(ids, list)
        or not all(isinstance(i, str) for i in ids)
        or not 0 < len(ids) <= 1000
    ):
        raise BadRequest("'ids' must be a list of 1 to 1000 message ids")
    revived, size = await outbox.revive(endpoint.id, ids)
    counts.dead = await outbox.dead_count()
    counts.add_backlog(endpoint.id, revived, size)
    return revived
