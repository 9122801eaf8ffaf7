"""One endpoint's delivery worker: its queue, in order, one attempt at a time.

The worker reads a batch of the oldest pending deliveries from the outbox and works through
them; it looks at the next only once the current one is delivered or dead-lettered, which is
what keeps deliveries in order. Attempts hold one of the service's ``slots``: at most
``concurrency`` requests are in flight across all endpoints, and each endpoint has at most one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from clarion.webhooks.endpoint import Delivery, Endpoint

if TYPE_CHECKING:
    from clarion.webhooks.service import WebhookService

log = logging.getLogger("clarion.webhooks")

BATCH = 64  # deliveries a worker reads from the outbox at once
FAILURE_PAUSE = 1.0  # seconds a worker rests after an unexpected error of its own


def millis(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


class EndpointWorker:
    """Delivers one endpoint's queue, in order, one attempt at a time."""

    def __init__(self, service: WebhookService, endpoint: Endpoint) -> None:
        self.service = service
        self.endpoint = endpoint
        self.wake = asyncio.Event()
        self.queue: deque[Delivery] = deque()
        self.in_flight = False
        self.holding = False  # whether this node had the endpoint's lease at the last step
        self.task = asyncio.create_task(self._run(), name=f"clarion-webhook-{endpoint.id}")

    @property
    def head(self) -> Delivery | None:
        return self.queue[0] if self.queue else None

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self._step()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                # Once per run of failures: a shared outbox's Redis may be away for a while.
                if not failing:
                    log.exception(
                        "webhook worker for %s failed; reloading its queue", self.endpoint.id
                    )
                failing = True
                self.queue.clear()
                self.holding = False
                await asyncio.sleep(FAILURE_PAUSE)

    async def _step(self) -> None:
        service, endpoint = self.service, self.endpoint
        if endpoint.disabled:
            self.wake.clear()
            await self.wake.wait()
            return
        if not await service.outbox.claim(endpoint.id):
            # Another node delivers this endpoint; look again in case its lease lapses.
            self.holding = False
            self.queue.clear()
            await self._rest()
            return
        if not self.holding:
            # The queue may have moved on while another node held the lease: read it afresh.
            self.holding = True
            self.queue.clear()
        if not self.queue:
            self.wake.clear()
            self.queue.extend(await service.outbox.head(endpoint.id, BATCH))
            if not self.queue:
                await self._rest()
                return
        delivery = self.queue[0]
        wait = delivery.next_attempt - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        async with service.slots:
            self.in_flight = True
            try:
                outcome = await service.sender.attempt(endpoint, delivery)
            finally:
                self.in_flight = False
        now = time.time()
        if outcome.delivered:
            endpoint.last_msg_id = delivery.msg_id
            endpoint.last_delivered_at = millis(now)
            await service.outbox.delivered(delivery, endpoint)
            self.queue.popleft()
            service.count_backlog(endpoint.id, -1)
            return
        delivery.attempts += 1
        delivery.last_error = outcome.error
        endpoint.last_error = outcome.error
        endpoint.last_error_at = millis(now)
        if delivery.first_failure is None:
            delivery.first_failure = now
        log.info("webhook %s: %s failed: %s", endpoint.id, delivery.msg_id, outcome.error)
        if outcome.gone:
            endpoint.disabled_reason = "the receiver answered 410 Gone"
            delivery.next_attempt = now
            await service.outbox.failed(delivery, endpoint)
            await service.outbox.save_endpoint(endpoint)
            service.endpoints_changed()
            log.warning("webhook %s disabled: %s answered 410 Gone", endpoint.id, endpoint.url)
            return
        next_attempt = service.schedule.next_attempt(delivery.attempts, delivery.first_failure, now)
        if next_attempt is None:
            delivery.dead_at = now
            await service.outbox.bury(delivery)
            self.queue.popleft()
            service.count_backlog(endpoint.id, -1)
            service.count_dead(endpoint.id)
            log.warning(
                "webhook %s: %s dead-lettered after %d attempts",
                endpoint.id,
                delivery.msg_id,
                delivery.attempts,
            )
            return
        delivery.next_attempt = next_attempt
        await service.outbox.failed(delivery, endpoint)

    async def _rest(self) -> None:
        """Wait to be woken; on a shared outbox, also look again every ``poll_interval``:
        other nodes queue deliveries without telling this one."""
        self.wake.clear()
        poll = self.service.outbox.poll_interval
        if poll is None:
            await self.wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), poll)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.holding:
            self.holding = False
            try:
                await self.service.outbox.release(self.endpoint.id)
            except Exception as exc:  # the lease lapses by itself
                log.warning("webhook %s: releasing its lease failed: %s", self.endpoint.id, exc)
