"""Background tasks stopped at shutdown in bounded time, even those that lost their cancel.

A cancel can be lost inside any library that wraps an await in ``asyncio.wait_for``: on
Python 3.11, ``wait_for`` returns the result of what it waits for when that finished before
the cancel was handled. redis-py, which clarion uses, wraps each command's write in one. The
task then runs on as if never cancelled: into its next sleep, or into a read that may wait for
good. Awaiting it once after ``cancel()`` would wait as long; and ``suppress(CancelledError)``
around that await swallows a cancel of the caller as well.

clarion's own code bounds its waits with ``asyncio.timeout``, which loses no cancel (ruff
refuses ``asyncio.wait_for`` in ``src``). Only the standard library here: every layer of the
package may use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("clarion.tasks")

STOP_TIMEOUT = 5.0  # seconds a shutdown waits for its tasks, at most
# Seconds a timer that found its peers silent after a stall of this process waits for the event
# loop to read its sockets once: the loop wakes its timers before it reads (see :func:`tick`).
READ_FIRST = 0.05
# Seconds a cancelled task has to end before it is cancelled again: long enough for the
# cleanup a task may await when cancelled (closing a connection), which a new cancel would cut.
RECANCEL = 0.5


async def stop(tasks: Iterable[asyncio.Task[Any]], timeout: float = STOP_TIMEOUT) -> None:
    """Cancel ``tasks`` and wait for them to end, ``timeout`` seconds at most.

    Those still running after ``RECANCEL`` seconds are cancelled again (a lost cancel costs
    that much), and those still running after ``timeout`` are left, with a warning. A cancel
    of the caller is not swallowed: it is raised, and the tasks stay cancelled.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and (left := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        # asyncio.wait, not awaiting the tasks: it neither cancels them nor hides our own cancel.
        _, pending = await asyncio.wait(pending, timeout=min(left, RECANCEL))
    if pending:
        names = ", ".join(sorted(task.get_name() for task in pending))
        log.warning("left running after %g s, though cancelled: %s", timeout, names)
    for task in tasks:
        # Logged here; retrieving it also keeps asyncio from logging it later as never retrieved.
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)


async def tick(seconds: float) -> None:
    """Sleep ``seconds`` before a periodic check of peers; if the process could not run for a
    while meanwhile (stopped, a paused VM, a machine out of CPU), :data:`READ_FIRST` more.

    The event loop wakes its timers before it reads: a check run at once would judge peers by
    what it had read before the stall, and take a reply that came during it (a pong, a poll)
    for silence.
    """
    loop = asyncio.get_running_loop()
    due = loop.time() + seconds
    await asyncio.sleep(seconds)
    if loop.time() - due > seconds:
        await asyncio.sleep(READ_FIRST)
