"""The SQLite outbox gives disk back: once a backlog is delivered or its endpoint deleted, the
database and its write-ahead log shrink back to about what they hold."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clarion.webhooks.sqlite_outbox import SQLiteOutbox
from clarion.webhooks.sqlite_schema import SCHEMA

from ..conftest import RunningHub, timeout
from .conftest import register
from .receiver import OK, Answer, Received, Receiver

BIG = "x" * 40_000


def _sizes(data: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in data.glob(SQLiteOutbox.FILE + "*")}


def _size(data: Path) -> int:
    return sum(f.stat().st_size for f in data.glob(SQLiteOutbox.FILE + "*"))


async def _until_small(data: Path, limit: int) -> int:
    async def small() -> None:
        while _size(data) > limit:
            await asyncio.sleep(0.1)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(small(), timeout(20))
    return _size(data)


@pytest.mark.parametrize("end", ["delivered", "deleted"])
async def test_a_backlog_gives_its_disk_back(
    make_hub: Callable[..., Any], tmp_path: Path, end: str
) -> None:
    """12 MB of deliveries wait for a receiver that answers 503; once they are delivered, or
    their endpoint is deleted, the database and its log are a few pages again."""
    running: RunningHub = await make_hub()
    data = tmp_path / "data"
    accepting = False

    def behave(r: Received) -> Answer:
        return OK if accepting else Answer(status=503)

    async with Receiver(behave) as receiver, running.http() as http:
        hook = await register(running, receiver, ["big:*"])
        body = {"channel": "big:a", "data": {"b": BIG}}
        for _ in range(15):  # 300 deliveries of 40 KB
            answers = await asyncio.gather(
                *(http.post("/api/publish", json=body) for _ in range(20))
            )
            assert all(r.status_code == 200 for r in answers), answers[0].text
        assert _size(data) > 10 << 20
        if end == "deleted":
            assert (await http.delete(f"/api/webhooks/{hook['id']}")).status_code == 200
        else:
            accepting = True
        assert await _until_small(data, 1 << 20) <= 1 << 20, _sizes(data)
        if end == "delivered":
            assert len(receiver.received) >= 300


def test_a_file_made_without_auto_vacuum_is_converted_when_opened(tmp_path: Path) -> None:
    path = tmp_path / SQLiteOutbox.FILE
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    db.execute("CREATE TABLE filler (b BLOB)")
    for _ in range(200):
        db.execute("INSERT INTO filler VALUES (zeroblob(60000))")
    db.execute("DELETE FROM filler")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert path.stat().st_size > 10 << 20

    async def reopen() -> None:
        outbox = SQLiteOutbox(tmp_path)
        await outbox.open()
        try:
            assert outbox.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        finally:
            await outbox.aclose()

    asyncio.run(reopen())
    assert _size(tmp_path) < 2 << 20
