"""The hub's close ends its background tasks in bounded time, even one that lost its cancel.

On Python 3.11 a cancel can be lost in an engine call (see :mod:`clarion.tasks`): the task runs
on, into its next sleep and its next call. Here the engine call swallows the first cancel, as
one does whose write completes as the cancel comes.
"""

from __future__ import annotations

import asyncio

import pytest

from clarion import Hub, Settings
from clarion.core import sweeper

from ..conftest import timeout
from ..redis_fixture import RedisServer, redis_server
from ..support.cancels import losing_one_cancel

__all__ = ["redis_server"]  # the fixture


async def closes_by_itself(hub: Hub) -> bool:
    """Whether ``hub.close()`` ends on its own in time; it is cancelled otherwise, so that the
    test's failure leaves nothing running."""
    closing = asyncio.create_task(hub.close())
    # Longer than clarion.tasks.STOP_TIMEOUT: a close that gave up on the task still ends.
    done, _ = await asyncio.wait({closing}, timeout=timeout(10))
    if not done:
        closing.cancel()
        await asyncio.wait({closing}, timeout=timeout(5))
    return bool(done)


async def test_close_ends_a_node_report_that_lost_its_cancel(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = Hub(Settings(engine=redis_server.url))
    reporting = asyncio.Event()
    lost: list[asyncio.CancelledError] = []
    # Before the start, which makes the first report at once.
    monkeypatch.setattr(hub.nodes.directory, "announce", losing_one_cancel(reporting, lost))
    await hub.start()
    await asyncio.wait_for(reporting.wait(), timeout(5))
    reporter = hub.nodes._task
    assert reporter is not None
    assert await closes_by_itself(hub), "the close waited for the node reporter"
    assert lost and reporter.done()


async def test_close_ends_a_revocation_sync_that_lost_its_cancel(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeper, "REVOCATION_SYNC", 0.01)
    hub = Hub(Settings(engine=redis_server.url))
    await hub.start()  # with the start's own sync, a real one
    syncing = asyncio.Event()
    lost: list[asyncio.CancelledError] = []
    monkeypatch.setattr(hub.registry, "sync_revocations", losing_one_cancel(syncing, lost))
    await asyncio.wait_for(syncing.wait(), timeout(5))
    timers = list(hub.sweeper._timers)
    assert await closes_by_itself(hub), "the close waited for the revocation sync"
    assert lost and all(timer.done() for timer in timers)
