"""The memory engine forgets what nobody needs, on its own clock."""

from __future__ import annotations

from clarion.engines.memory import UNWRITTEN_TTL, MemoryEngine
from clarion.settings import NamespaceOptions

OPTS = NamespaceOptions(history_size=10, history_ttl=60, history_meta_ttl=3600)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_channels_only_read_are_forgotten_soon() -> None:
    clock = Clock()
    engine = MemoryEngine(clock=clock)
    for n in range(1000):  # reading arbitrary names: each creates a channel state
        await engine.history(f"probe:{n}", OPTS, limit=0)
    await engine.publish("kept", 1, OPTS)
    clock.now += UNWRITTEN_TTL + 1
    assert engine.sweep() == 1000
    # The written channel keeps its epoch and offset until its meta TTL.
    kept = await engine.history("kept", OPTS, limit=0)
    assert kept.position.offset == 1
    clock.now += 3600
    assert engine.sweep() == 1
    assert (await engine.history("kept", OPTS, limit=0)).position.offset == 0


async def test_a_read_channel_keeps_its_epoch_within_the_grace() -> None:
    clock = Clock()
    engine = MemoryEngine(clock=clock)
    before = (await engine.history("c", OPTS, limit=0)).position
    clock.now += UNWRITTEN_TTL / 2
    engine.sweep()
    pub = await engine.publish("c", 1, OPTS)
    assert pub.epoch == before.epoch and pub.offset == 1
