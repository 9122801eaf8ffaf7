"""The memory engine's revocations in data_dir: many at once, each stored before it returns."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from clarion.engines.memory import MemoryEngine

from .helpers import RecordingSink


async def test_revocations_made_at_once_are_each_stored_before_they_return(
    tmp_path: Path,
) -> None:
    engine = MemoryEngine(data_dir=tmp_path)
    await engine.start(RecordingSink())
    until = time.time() + 60
    stored: list[int] = []

    async def revoke(n: int) -> None:
        await engine.revoke("jti", f"t-{n}", until)
        # Returned: the file holds it (written by this call or by one that began after it).
        stored.append(f"jti:t-{n}" in json.loads((tmp_path / "revocations.json").read_bytes()))

    try:
        await asyncio.gather(*(revoke(n) for n in range(1000)))
    finally:
        await engine.close()
    assert len(stored) == 1000 and all(stored)
    again = MemoryEngine(data_dir=tmp_path)
    await again.start(RecordingSink())
    try:
        _, entries = await again.revocations()
        assert len(entries) == 1000 and {until} == {u for _, _, u in entries}
    finally:
        await again.close()
