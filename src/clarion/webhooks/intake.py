"""From the hub to the outbox: publications and lifecycle events become deliveries.

For each enabled endpoint that wants it, a publication or event becomes one
:class:`~clarion.webhooks.endpoint.Delivery`, stored in the outbox before the hub's listener
returns — so before the publish call returns to its caller. One too large for
``max_body_bytes``, or beyond the endpoint's ``max_backlog``, goes straight to the dead letters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson

from clarion.protocol.publication import Publication
from clarion.settings import WebhookDelivery
from clarion.webhooks.counts import QueueCounts
from clarion.webhooks.endpoint import PUBLICATION, Delivery, Endpoint
from clarion.webhooks.outbox import Outbox
from clarion.webhooks.registry import Registry
from clarion.webhooks.signing import event_msg_id, publication_msg_id

log = logging.getLogger("clarion.webhooks")


def publication_deliveries(pub: Publication, targets: Sequence[Endpoint]) -> list[Delivery]:
    body = pub.json()
    now = time.time()
    return [
        Delivery(
            endpoint=e.id,
            msg_id=publication_msg_id(e.id, pub.channel, pub.epoch, pub.offset),
            kind=PUBLICATION,
            body=body,
            channel=pub.channel,
            epoch=pub.epoch,
            offset=pub.offset,
            created_at=now,
        )
        for e in targets
    ]


class Intake:
    """The hub's publish and lifecycle listeners, and the one way into the outbox."""

    def __init__(
        self,
        outbox: Outbox,
        registry: Registry,
        counts: QueueCounts,
        config: WebhookDelivery,
        event_version: int,
    ) -> None:
        self.outbox = outbox
        self.registry = registry
        self.counts = counts
        self.config = config
        self.version = event_version  # of the last lifecycle event this node made

    def on_publication(self, pub: Publication) -> None:
        """The hub's publish listener: store a delivery for every matching endpoint."""
        targets = self.registry.targets(pub.channel)
        if targets:
            self.store(publication_deliveries(pub, targets))

    def on_lifecycle(self, kind: str, payload: dict[str, Any]) -> None:
        """The hub's lifecycle listener: events go out like publications, with a version."""
        targets = self.registry.event_targets(kind, payload)
        if not targets:
            return
        self.version += 1
        version = self.version
        now = time.time()
        body = orjson.dumps(
            {"type": kind, "version": version, "time": int(now * 1000), "data": payload}
        )
        channel = payload.get("channel")
        deliveries = [
            Delivery(
                endpoint=e.id,
                msg_id=event_msg_id(e.id, version),
                kind=kind,
                body=body,
                channel=channel if isinstance(channel, str) else None,
                created_at=now,
            )
            for e in targets
        ]
        self.store(deliveries, event_version=version)

    def store(self, deliveries: list[Delivery], event_version: int | None = None) -> int:
        """Commit deliveries to the outbox and wake their workers; returns how many are new."""
        config = self.config
        for d in deliveries:
            reason = None
            if len(d.body) > config.max_body_bytes:
                reason = f"payload over max_body_bytes ({config.max_body_bytes})"
            elif self.counts.backlog.get(d.endpoint, 0) >= config.max_backlog:
                reason = f"backlog full (max_backlog {config.max_backlog})"
            if reason is not None:
                d.dead_at, d.last_error = d.created_at, reason
                log.warning("webhook %s: %s dead-lettered: %s", d.endpoint, d.msg_id, reason)
        try:
            stored = self.outbox.enqueue(deliveries, event_version)
        except Exception:
            # Nothing can be raised to the publisher from a listener; say loudly what is lost.
            log.exception("webhook outbox write failed: %d deliveries lost", len(deliveries))
            return 0
        for d in stored:
            if d.dead_at is not None:
                self.counts.add_dead(d.endpoint)
                continue
            self.counts.add_backlog(d.endpoint, 1)
            self.registry.wake(d.endpoint)
        return len(stored)
