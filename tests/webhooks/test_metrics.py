"""Webhook figures on ``/metrics``, per endpoint, from real deliveries to a real receiver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..conftest import RunningHub
from .conftest import register, wait_state
from .receiver import Answer, Receiver


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_attempts_latency_backlog_and_dead_letters_per_endpoint(
    make_hub: Callable[..., Any],
) -> None:
    running: RunningHub = await make_hub(webhook_delivery={"retry_window": 0.4})
    async with Receiver() as good, Receiver(lambda r: Answer(status=500)) as bad:
        ok = await register(running, good, ["orders:*"])
        failing = await register(running, bad, ["audit:*"])
        await running.publish("orders:1", {"n": 1})
        await running.publish("orders:1", {"n": 2})
        await running.publish("audit:1", {"n": 3})
        await good.wait_acknowledged(2)
        await wait_state(running, failing["id"], lambda s: s["dead_letters"] == 1)
        await wait_state(running, ok["id"], lambda s: s["backlog"] == 0)
        async with running.http() as http:
            text = (await http.get("/metrics")).text
    attempts = samples(text, "clarion_webhook_attempts_total")
    assert attempts[("endpoint", ok["id"]), ("outcome", "delivered")] == 2
    assert attempts[("endpoint", failing["id"]), ("outcome", "failed")] >= 2
    assert (("endpoint", failing["id"]), ("outcome", "delivered")) not in attempts
    latency = samples(text, "clarion_webhook_attempt_seconds_count")
    assert latency[(("endpoint", ok["id"]),)] == 2
    dead = samples(text, "clarion_webhook_dead_letters")
    assert dead[(("endpoint", failing["id"]),)] == 1 and dead[(("endpoint", ok["id"]),)] == 0
    backlog = samples(text, "clarion_webhook_backlog")
    assert backlog[(("endpoint", ok["id"]),)] == 0
