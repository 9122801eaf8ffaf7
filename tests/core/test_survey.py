"""The node's pass over its channels: rates, namespace totals and the busiest channels, made a
slice at a time so that a node with many rooms never stops its loop for all of them at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from clarion import Hub, Settings
from clarion.core import nodes


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Hub]:
    # The node's own pass runs once, at the start, over no channel: only the tests' come after.
    monkeypatch.setattr(nodes, "INTERVAL", 3600.0)
    running = Hub(Settings())
    await running.start()
    try:
        yield running
    finally:
        await running.close()


async def test_the_pass_gives_the_loop_back_after_each_slice(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodes, "SLICE", 50)
    for n in range(501):
        await hub.local_channels.acquire(f"room:{n}")
    turns = 0

    async def beside() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(beside())
    await asyncio.sleep(0)
    before = turns
    await hub.nodes.survey()
    other.cancel()
    # Eleven slices: the other task ran between each two of them.
    assert turns - before >= 10
    assert hub.nodes.record()["channels_total"] == 501


async def test_the_pass_makes_rates_totals_and_the_busiest(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodes, "SLICE", 2)
    monkeypatch.setattr(nodes, "TOP_BY_SUBSCRIBERS", 0)
    monkeypatch.setattr(nodes, "TOP_BY_RATE", 1)
    held = {n: await hub.local_channels.acquire(f"room:{n}") for n in range(7)}
    await hub.nodes.survey()  # what was counted before starts here
    for _ in range(5):
        await hub.publish("room:5", "x")
    await hub.publish("room:2", "y")
    await hub.nodes.survey()
    # Only the busiest by rate is listed, whichever slice it was in.
    [(name, subscribers, rate)] = hub.nodes.busiest
    assert (name, subscribers) == ("room:5", 0) and rate > 0
    assert held[5].rate > held[2].rate > held[0].rate == 0
    assert hub.stats.activity.publications["default"] == 6
    # A channel that goes keeps what it counted since the last pass.
    await hub.publish("room:2", "z")
    hub.local_channels.release(held[2])
    await hub.nodes.survey()
    assert hub.stats.activity.publications["default"] == 7
    assert [row[0] for row in (await hub.nodes.channels())[0]] == [
        f"room:{n}" for n in (0, 1, 3, 4, 5, 6)
    ]
