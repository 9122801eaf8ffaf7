"""From the hub to the outbox: publications and lifecycle events become deliveries.

For each enabled endpoint that wants it, a publication or event becomes one
:class:`~clarion.webhooks.endpoint.Delivery`. The publish listener returns the outbox's future
and the hub awaits it, so the publish call returns once the deliveries are stored; writes of
one loop iteration are committed together, off the event loop. One too large for
``max_body_bytes``, or beyond the endpoint's ``max_backlog`` or ``max_backlog_bytes``, goes
straight to the dead letters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from clarion.core.limits import LogLimit
from clarion.errors import EngineUnavailable
from clarion.protocol.jsonkeep import dumps_to_keep
from clarion.protocol.publication import Publication
from clarion.settings import WebhookDelivery
from clarion.webhooks.counts import QueueCounts
from clarion.webhooks.endpoint import Delivery, Endpoint
from clarion.webhooks.kinds import PUBLICATION
from clarion.webhooks.outbox import Outbox
from clarion.webhooks.registry import Registry
from clarion.webhooks.signing import event_msg_id, publication_msg_id

log = logging.getLogger("clarion.webhooks")
# Anonymous sessions' joins and publications make deliveries too: a full backlog must not
# make each of them a line (one per endpoint a minute).
_dead = LogLimit(log)


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

    def on_publication(self, pub: Publication) -> asyncio.Future[int] | None:
        """The hub's publish listener: store a delivery for every matching endpoint; the hub
        waits for the future before answering the publisher."""
        targets = self.registry.targets(pub.channel)
        if targets:
            return self.store(publication_deliveries(pub, targets), refuse_on_failure=True)
        return None

    def on_lifecycle(self, kind: str, payload: dict[str, Any]) -> None:
        """The hub's lifecycle listener: events go out like publications, with a version."""
        targets = self.registry.event_targets(kind, payload)
        if not targets:
            return
        self.version += 1
        version = self.version
        now = time.time()
        body = dumps_to_keep(  # queued until delivered
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
        self.store(deliveries, event_version=version)  # nobody waits: the outbox flushes at close

    def store(
        self,
        deliveries: list[Delivery],
        event_version: int | None = None,
        *,
        refuse_on_failure: bool = False,
    ) -> asyncio.Future[int]:
        """Hand deliveries to the outbox; the future is done once they are stored, with how
        many are new. When the outbox cannot store them, the future raises
        :class:`EngineUnavailable` if ``refuse_on_failure`` (a publication: its publisher is
        told) and is otherwise logged as lost (a lifecycle event has nobody to tell). Counted
        as pending at once, so that ``max_backlog`` holds within a loop iteration too."""
        config = self.config
        for d in deliveries:
            reason = None
            if len(d.body) > config.max_body_bytes:
                reason = f"payload over max_body_bytes ({config.max_body_bytes})"
            elif self.counts.backlog.get(d.endpoint, 0) >= config.max_backlog:
                reason = f"backlog full (max_backlog {config.max_backlog})"
            elif (
                self.counts.backlog_bytes.get(d.endpoint, 0) + len(d.body)
                > config.max_backlog_bytes
            ):
                reason = f"backlog full (max_backlog_bytes {config.max_backlog_bytes})"
            if reason is not None:
                d.dead_at, d.last_error = d.created_at, reason
                _dead.log(
                    logging.WARNING,
                    d.endpoint,
                    "webhook %s: %s dead-lettered: %s",
                    d.endpoint,
                    d.msg_id,
                    reason,
                )
            else:
                self.counts.add_backlog(d.endpoint, 1, len(d.body))
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def answer(stored: list[Delivery] | None, failure: BaseException | None) -> None:
            new = self._stored(deliveries, stored, failure, refused=refuse_on_failure)
            if done.done():
                return
            if stored is None and refuse_on_failure:
                done.set_exception(
                    EngineUnavailable(
                        f"the webhook outbox could not store this publication's deliveries "
                        f"({failure or 'cancelled'}); it was published to subscribers: "
                        "publish again with the same id to queue its webhooks"
                    )
                )
            else:
                done.set_result(new)

        try:
            writing = self.outbox.enqueue(deliveries, event_version)
        except Exception as exc:
            answer(None, exc)
            return done

        def settle(writing: asyncio.Future[list[Delivery]]) -> None:
            failure = writing.exception() if not writing.cancelled() else None
            answer(None if writing.cancelled() or failure else writing.result(), failure)

        writing.add_done_callback(settle)
        return done

    def _stored(
        self,
        deliveries: list[Delivery],
        stored: list[Delivery] | None,
        failure: BaseException | None,
        *,
        refused: bool = False,
    ) -> int:
        """Settle the counts once the outbox answered; wake the workers of what is new."""
        if stored is None:
            if refused:
                log.error(
                    "webhook outbox write failed: %d deliveries not queued, publish refused: %s",
                    len(deliveries),
                    failure or "cancelled",
                )
            else:  # a lifecycle event: nobody to tell, so say loudly what is lost
                log.error(
                    "webhook outbox write failed: %d deliveries lost: %s",
                    len(deliveries),
                    failure or "cancelled",
                )
            stored = []
        new = {id(d) for d in stored}
        for d in deliveries:
            if d.dead_at is not None:
                continue  # counted by the outbox, which knows what its bounds let go
            if id(d) in new:
                self.registry.wake(d.endpoint)
            else:  # already pending, or lost
                self.counts.add_backlog(d.endpoint, -1, len(d.body))
        return len(stored)
