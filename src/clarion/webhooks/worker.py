"""One endpoint's delivery worker: its queue, in order, one attempt at a time.

The worker reads a batch of the oldest pending deliveries from the outbox and works through
them; it looks at the next only once the current one is delivered or dead-lettered, which is
what keeps deliveries in order. Attempts hold one of the context's ``slots``: at most
``concurrency`` requests are in flight across all endpoints, each endpoint has at most one, and
endpoints whose last attempt failed hold at most half of them (:mod:`clarion.webhooks.slots`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clarion import tasks
from clarion.core.limits import LogLimit
from clarion.webhooks.counts import QueueCounts
from clarion.webhooks.endpoint import Delivery, Endpoint
from clarion.webhooks.outbox import Outbox
from clarion.webhooks.outcome import unexpected_failure
from clarion.webhooks.schedule import RetrySchedule
from clarion.webhooks.slots import Slots
from clarion.webhooks.targets import shown

if TYPE_CHECKING:
    from clarion.webhooks.sender import Sender

log = logging.getLogger("clarion.webhooks")
# A backlog that outlives the retry window is buried a delivery at a time: a line per
# endpoint a minute.
_dead = LogLimit(log)

BATCH = 64  # deliveries a worker reads from the outbox at once
FAILURE_PAUSE = 1.0  # seconds a worker rests after an unexpected error of its own


def millis(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


@dataclass(slots=True)
class WorkerContext:
    """What every endpoint's worker delivers with, shared by all of them."""

    outbox: Outbox
    sender: Sender
    slots: Slots  # ``concurrency`` attempts in flight, all endpoints together
    schedule: RetrySchedule
    counts: QueueCounts
    on_disabled: Callable[[Endpoint], None]  # the receiver answered 410 Gone


class EndpointWorker:
    """Delivers one endpoint's queue, in order, one attempt at a time."""

    def __init__(self, context: WorkerContext, endpoint: Endpoint) -> None:
        self.context = context
        self.endpoint = endpoint
        self.wake = asyncio.Event()
        self.queue: deque[Delivery] = deque()
        self.in_flight = False
        self.holding = False  # whether this node had the endpoint's lease at the last step
        # Set by stop() next to cancelling the task: a cancellation swallowed by a library
        # call (now and then one is) must not leave the worker running and stop() waiting.
        self.stopping = False
        self.task = asyncio.create_task(self._run(), name=f"clarion-webhook-{endpoint.id}")

    @property
    def head(self) -> Delivery | None:
        return self.queue[0] if self.queue else None

    async def _run(self) -> None:
        failing = False
        while not self.stopping:
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
        context, endpoint = self.context, self.endpoint
        outbox = context.outbox
        if endpoint.disabled:
            self.wake.clear()
            await self.wake.wait()
            return
        if not await outbox.claim(endpoint.id):
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
            self.queue.extend(await outbox.head(endpoint.id, BATCH))
            if not self.queue:
                await self._rest()
                return
        delivery = self.queue[0]
        # next_attempt is wall-clock time, to outlive a restart; the wait is bounded by what the
        # schedule could have chosen, so a clock stepped back delays no retry by the step.
        wait = delivery.next_attempt - time.time()
        ceiling = context.schedule.ceiling(delivery.attempts) if delivery.attempts else 0.0
        wait = min(wait, max(ceiling, delivery.asked_wait))
        if wait > 0:
            await asyncio.sleep(wait)
        async with context.slots.taken(failing=endpoint.failing):
            self.in_flight = True
            try:
                outcome = await context.sender.attempt(endpoint, delivery)
            except Exception as exc:
                # Counted as a failed attempt, not left to _run's reload: that would try the
                # same head again every FAILURE_PAUSE, for ever, with no backoff and no dead
                # letter, and the deliveries behind it would wait for ever.
                outcome = unexpected_failure(endpoint, exc)
            finally:
                self.in_flight = False
        now = time.time()
        if outcome.delivered:
            endpoint.last_msg_id = delivery.msg_id
            endpoint.last_delivered_at = millis(now)
            await outbox.delivered(delivery, endpoint)
            self.queue.popleft()
            context.counts.add_backlog(endpoint.id, -1, len(delivery.body))
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
            await outbox.failed(delivery, endpoint)
            await outbox.save_endpoint(endpoint)
            context.on_disabled(endpoint)
            log.warning(
                "webhook %s disabled: %s answered 410 Gone", endpoint.id, shown(endpoint.url)
            )
            return
        next_attempt = context.schedule.next_attempt(delivery.attempts, delivery.first_failure, now)
        if next_attempt is None:
            delivery.dead_at = now
            await outbox.bury(delivery)
            self.queue.popleft()
            context.counts.add_backlog(endpoint.id, -1, len(delivery.body))
            _dead.log(
                logging.WARNING,
                endpoint.id,
                "webhook %s: %s dead-lettered after %d attempts",
                endpoint.id,
                delivery.msg_id,
                delivery.attempts,
            )
            return
        if outcome.retry_after is not None:
            # A 429 or 503 that says when to come back: not before (within the schedule's cap).
            delivery.asked_wait = min(outcome.retry_after, context.schedule.cap)
            next_attempt = max(next_attempt, now + delivery.asked_wait)
        delivery.next_attempt = next_attempt
        await outbox.failed(delivery, endpoint)

    async def _rest(self) -> None:
        """Wait to be woken; on a shared outbox, also look again every ``poll_interval``:
        other nodes queue deliveries without telling this one."""
        self.wake.clear()
        poll = self.context.outbox.poll_interval
        if poll is None:
            await self.wake.wait()
            return
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for may swallow a cancellation that
        # meets its own timeout, and stop() would then wait for this task forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll):
                await self.wake.wait()

    async def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        # Bounded, re-cancelling: a step awaits the outbox and the sender's HTTP client, which
        # may lose a cancel (see clarion.tasks).
        await tasks.stop([self.task])
        if not self.task.done():
            # Left running (tasks.stop warned): its lease is not given up here, so that no
            # other node takes the endpoint while this one may still deliver.
            return
        if self.holding:
            self.holding = False
            try:
                await self.context.outbox.release(self.endpoint.id)
            except Exception as exc:  # the lease lapses by itself
                log.warning("webhook %s: releasing its lease failed: %s", self.endpoint.id, exc)
