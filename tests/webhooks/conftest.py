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
