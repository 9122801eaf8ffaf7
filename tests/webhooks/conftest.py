"""Fixtures for webhook tests: a hub whose retry schedule is shortened, and registration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..conftest import RunningHub, timeout
from ..redis_fixture import redis_server
from .receiver import Receiver

__all__ = ["redis_server"]  # the fixture, for the shared (Redis) outbox tests

# Retries come quickly in tests; the window stays long unless a test wants dead letters.
FAST: dict[str, Any] = {"timeout": 3.0, "retry_base": 0.02, "retry_cap": 0.1, "retry_window": 60}


@pytest.fixture
def make_hub(hub_factory: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    async def make(**overrides: Any) -> RunningHub:
        delivery = {**FAST, **overrides.pop("webhook_delivery", {})}
        settings: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "webhook_allow_hosts": ["127.0.0.1"],
            "webhook_delivery": delivery,
            **overrides,
        }
        running: RunningHub = await hub_factory(**settings)
        return running

    return make


@pytest.fixture
async def webhook_hub(make_hub: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await make_hub()
    return running


async def register(
    running: RunningHub, receiver: Receiver, channels: list[str], **extra: Any
) -> dict[str, Any]:
    """Register ``receiver`` and give it the secret to verify signatures with."""
    async with running.http() as http:
        r = await http.post(
            "/api/webhooks", json={"url": receiver.url, "channels": channels, **extra}
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    receiver.secret = body["secret"]
    return body


async def state(running: RunningHub, endpoint_id: str) -> dict[str, Any]:
    async with running.http() as http:
        r = await http.get(f"/api/webhooks/{endpoint_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def wait_state(
    running: RunningHub,
    endpoint_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    wait: float = 10,
) -> dict[str, Any]:
    """Poll the endpoint's state until ``predicate`` holds (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout(wait)
    while True:
        current = await state(running, endpoint_id)
        if predicate(current):
            return current
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"state never matched: {current}")
        await asyncio.sleep(0.05)


BACKLOG_BYTES = 20_000  # room for five or six of the payloads below, as stored
PAYLOAD = "x" * 3000


async def fill_past_backlog_bytes(
    publisher: RunningHub, reader: RunningHub, receiver: Receiver, failing: list[bool]
) -> str:
    """With the receiver failing, publications past ``max_backlog_bytes`` dead-letter (their
    number would fit ``max_backlog``); once it answers, the backlog drains and its room is
    free again. ``failing[0]`` is the receiver's switch."""
    hook = await register(publisher, receiver, ["bb:*"])
    await asyncio.sleep(0.2)  # every node knows the endpoint
    for n in range(10):
        await publisher.publish("bb:x", {"n": n, "pad": PAYLOAD})
    held = await wait_state(reader, hook["id"], lambda s: s["backlog"] + s["dead_letters"] == 10)
    assert 4 <= held["backlog"] <= 6, held
    async with reader.http() as http:
        letters = (await http.get(f"/api/webhooks/{hook['id']}/dead-letters")).json()
    reasons = {d["last_error"] for d in letters["dead_letters"]}
    assert reasons == {f"backlog full (max_backlog_bytes {BACKLOG_BYTES})"}, reasons
    failing[0] = False
    await receiver.wait_acknowledged(held["backlog"], wait=15)
    await wait_state(reader, hook["id"], lambda s: s["backlog"] == 0)
    for n in range(10, 14):
        await publisher.publish("bb:x", {"n": n, "pad": PAYLOAD})
    acked = await receiver.wait_acknowledged(held["backlog"] + 4, wait=15)
    assert [r.payload["data"]["n"] for r in acked][-4:] == [10, 11, 12, 13]
    await wait_state(reader, hook["id"], lambda s: s["backlog"] == 0)
    return str(hook["id"])


DEAD_LETTER_BYTES = 10_000  # two or three of the payloads above


async def keep_newest_dead_letters_within_bytes(
    publisher: RunningHub, reader: RunningHub, receiver: Receiver
) -> list[int]:
    """What does not fit the backlog goes to the dead letters, which keep the newest that fit
    ``max_dead_letter_bytes``; the endpoint's count follows. Returns the ``n`` of those kept."""
    hook = await register(publisher, receiver, ["db:*"])
    await asyncio.sleep(0.2)  # every node knows the endpoint
    for n in range(12):
        await publisher.publish("db:x", {"n": n, "pad": PAYLOAD})
    async with reader.http() as http:
        url = f"/api/webhooks/{hook['id']}/dead-letters"
        deadline = asyncio.get_running_loop().time() + timeout(10)
        while True:
            kept = [d["payload"]["data"]["n"] for d in (await http.get(url)).json()["dead_letters"]]
            if kept and kept[-1] == 11:
                break
            assert asyncio.get_running_loop().time() < deadline, kept
            await asyncio.sleep(0.05)
    assert 1 <= len(kept) <= 3 and kept == list(range(12 - len(kept), 12)), kept
    await wait_state(reader, hook["id"], lambda s: s["dead_letters"] == len(kept))
    # The metrics count what the outbox holds, not every dead letter ever made.
    async with reader.http() as http:
        text = (await http.get("/metrics")).text
    gauge = f'clarion_webhook_dead_letters{{endpoint="{hook["id"]}"}} {float(len(kept))}'
    assert gauge in text, [line for line in text.splitlines() if "dead_letters{" in line]
    return kept
