"""The memory engine's byte budget keeps its books straight, whatever happens in what order.

Random sequences of publications (with and without history, idempotency keys of every
length, payloads small and large), history reads that make more encodings, time passing,
sweeps and evictions, each followed by a check of the engine's ledger against what it
actually holds: the bytes counted equal the bytes recomputed, every stored publication and
key stub has its record and every record something that holds it, and the logs listed as
holding nothing are exactly those that hold nothing.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from clarion.engines.memory import HELD_OVERHEAD, LOG_OVERHEAD, MemoryEngine
from clarion.protocol.publication import Publication
from clarion.settings import NamespaceOptions

OPTIONS = [
    NamespaceOptions(
        history_size=size, history_ttl=ttl, idempotency_window=window, history_meta_ttl=meta
    )
    for size in (0, 1, 3, 50)
    for ttl in (5, 100)
    for window in (0, 3, 60)
    for meta in (10, 1000)
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def check_books(engine: MemoryEngine) -> None:
    logs, held = engine._logs, engine._held
    counted = sum(pub.held + HELD_OVERHEAD for _, pub, _ in held.values())
    counted += sum(LOG_OVERHEAD + len(name) for name in logs)
    assert engine.held_bytes == counted
    assert engine.bare_bytes == sum(LOG_OVERHEAD + len(name) for name in engine._bare)
    assert engine.held_bytes <= engine.history_bytes + LOG_OVERHEAD + 300  # the newest's log
    for name, log in logs.items():
        assert log.name == name
        assert log.bare == (not log.entries and not log.keys) == (name in engine._bare)
        for pub in [*log.entries, *(pub for _, pub in log.keys.values())]:
            record = held.get(id(pub))
            assert record is not None and record[1] is pub, (name, pub.offset)
    for log, pub, slot in held.values():
        assert logs.get(log.name) is log, "a record of a forgotten channel"
        by_key = slot is not None and slot in log.keys and log.keys[slot][1] is pub
        assert by_key or any(entry is pub for entry in log.entries), "a record of nothing"


async def shuffle(seed: int, steps: int) -> None:
    rnd = random.Random(seed)
    clock = Clock()
    engine = MemoryEngine(clock, history_bytes=rnd.choice([1_048_576, 1_200_000]))
    names = [f"c{n}" + "x" * rnd.randrange(200) for n in range(rnd.choice([5, 50, 600, 3000]))]
    options: dict[str, NamespaceOptions] = {}

    def encode(pub: Publication) -> bytes:
        return b"z" * rnd.randrange(10, 3000)

    for _ in range(steps):
        channel = rnd.choice(names)
        opts = options.setdefault(channel, rnd.choice(OPTIONS))
        roll = rnd.random()
        if roll < 0.6:
            key = rnd.choice([None, None, f"k{rnd.randrange(20)}", "K" * rnd.randrange(1, 300)])
            await engine.publish(
                channel,
                "d" * rnd.choice([1, 100, 5000, 60_000]),
                opts,
                idempotency_key=key,
                idempotency_scope=rnd.choice([None, "user:u1"]) if key else None,
            )
        elif roll < 0.75:
            for pub in engine.history_now(channel, opts).publications:
                if rnd.random() < 0.3:
                    pub.encoded(("format", rnd.randrange(3)), encode)
        elif roll < 0.85:
            clock.now += rnd.choice([0.5, 2, 10, 100])
        elif roll < 0.9:
            engine.sweep()
        elif roll < 0.95:
            engine._evict()
        else:
            engine._sweep_one(channel, clock())
        await asyncio.sleep(0)  # an eviction an encoding asked for runs on the loop's turn
        check_books(engine)


@pytest.mark.parametrize("seed", range(6))
async def test_the_ledger_matches_what_is_held(seed: int) -> None:
    await shuffle(seed, 3000)
