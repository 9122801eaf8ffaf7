"""Receivers that hang do not starve the others: endpoints not known to answer hold at most
half of the attempts in flight (``webhook_delivery.concurrency``), so an endpoint that answers
is delivered at its own pace however many others time out, attempt after attempt. And a
receiver that asks to be left alone for a while (``Retry-After``) is."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest

from ..conftest import until
from .conftest import register
from .receiver import Answer, Received, Receiver

HUNG = 8  # twice the slots: each of them times out, and tries again, and again


async def test_hung_receivers_do_not_hold_up_one_that_answers(
    make_hub: Callable[..., Any],
) -> None:
    running = await make_hub(webhook_delivery={"timeout": 1.0, "concurrency": 4})
    async with contextlib.AsyncExitStack() as stack:
        healthy = await stack.enter_async_context(Receiver())
        await register(running, healthy, ["fair:*"])
        await running.publish("fair:a", 0)
        await healthy.wait_acknowledged(1)  # it answers: known to
        hung = [
            await stack.enter_async_context(Receiver(lambda r: Answer(hang=True)))
            for _ in range(HUNG)
        ]
        for receiver in hung:
            await register(running, receiver, ["fair:*"])
        for n in range(1, 11):
            await running.publish("fair:a", n)
        # With one pool for all, each of these waited behind the hung endpoints' attempts,
        # HUNG / concurrency timeouts of a second each: twenty seconds for the ten.
        got = await healthy.wait_acknowledged(11, wait=8)
        assert [r.payload["data"] for r in got] == list(range(11))
        # And the hung ones are tried meanwhile, in their half of the slots.
        await until(lambda: all(r.received for r in hung), wait=15)


@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_a_receiver_that_asks_to_wait_is_not_asked_again_before(
    make_hub: Callable[..., Any], form: str
) -> None:
    """A 429 (or 503) with ``Retry-After`` sets the next attempt no earlier than it asks
    (within ``retry_cap``), in seconds or as an HTTP date; the schedule alone would come back
    within a tenth of a second here."""
    running = await make_hub(webhook_delivery={"retry_cap": 5.0})

    def behave(received: Received) -> Answer:
        if receiver.received:  # an attempt before this one
            return Answer()
        wait = "2" if form == "seconds" else formatdate(time.time() + 2, usegmt=True)
        return Answer(status=429, retry_after=wait)

    async with Receiver(behave) as receiver:
        await register(running, receiver, ["wait:*"])
        await running.publish("wait:a", 1)
        await receiver.wait_acknowledged(1)
        first, second = receiver.received[0], receiver.received[1]
        assert first.answer.status == 429 and second.acknowledged
        assert second.at - first.at >= (1.9 if form == "seconds" else 0.9)
