"""Giving disk back: the SQLite outbox's file shrinks as deliveries leave it.

The file is kept in ``auto_vacuum = INCREMENTAL`` mode (a file made before is converted by one
``VACUUM`` when opened). After rows are deleted, free pages are returned a bounded number at a
time on the outbox's writer thread, between its other calls, and the write-ahead log is
truncated once they are (``wal_checkpoint(TRUNCATE)``; ``journal_size_limit`` bounds it
otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

WAL_LIMIT = 4 << 20  # bytes of write-ahead log kept after a checkpoint


def open_incremental(db: sqlite3.Connection) -> None:
    """Make sure free pages can be given back (``auto_vacuum = INCREMENTAL``). A new file
    takes the mode before its first table; one made before needs a ``VACUUM``, once, which
    rewrites it (live rows only, so it is short unless the backlog is large)."""
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # tables exist already
        db.execute("VACUUM")


class Reclaimer:
    """Returns a file's free pages to the disk after deletes, a step at a time.

    From RECLAIM_AT free pages on, at most STEP_PAGES per call on the writer thread (4 MiB a
    step with SQLite's 4 KiB pages: milliseconds, so deliveries wait little behind it), a pause
    between steps, and while rows keep being deleted (a backlog that drains) a look every
    CHECK_EVERY s; once quiet, the log back to nothing.
    """

    RECLAIM_AT = 256
    STEP_PAGES = 1024
    STEP_PAUSE = 0.01
    CHECK_EVERY = 1.0

    def __init__(
        self,
        call: Callable[[Callable[[], Any]], Awaitable[Any]],
        db: Callable[[], sqlite3.Connection | None],
    ) -> None:
        self._call = call  # runs a function on the writer thread, after what came before
        self._db = db
        self._task: asyncio.Task[None] | None = None
        self._deleted = False  # rows deleted since the last look at the free pages

    def soon(self) -> None:
        """Rows were deleted: give their pages back."""
        self._deleted = True
        if self._task is None and self._db() is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="clarion-webhook-reclaim"
            )

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()  # a step under way finishes on the thread; close waits for it
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        try:
            while self._db() is not None:
                self._deleted = False
                if await self._call(self._step):
                    await asyncio.sleep(self.STEP_PAUSE)
                elif self._deleted:  # deletes go on (a backlog draining): look again later
                    await asyncio.sleep(self.CHECK_EVERY)
                else:
                    # Quiet now: the log, up to WAL_LIMIT long, back to nothing.
                    await self._call(self._truncate_log)
                    break
        except (RuntimeError, sqlite3.Error):
            pass  # closed meanwhile; what is left free is reclaimed after the next deletes
        finally:
            self._task = None

    def _step(self) -> bool:
        """Return up to STEP_PAGES free pages to the file system (writer thread); ``True``
        while more are left."""
        db = self._db()
        if db is None:
            return False
        free: int = db.execute("PRAGMA freelist_count").fetchone()[0]
        if free < self.RECLAIM_AT:
            return False
        # executescript, not execute: the pragma frees one page per step of its statement, and
        # execute() steps a statement without result columns once.
        db.executescript(f"PRAGMA incremental_vacuum({self.STEP_PAGES});")
        return free > self.STEP_PAGES

    def _truncate_log(self) -> None:
        """Copy what the log holds to the file, which it may shorten, and empty the log
        (writer thread; durable all along: the log is emptied only once copied)."""
        db = self._db()
        if db is not None:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
