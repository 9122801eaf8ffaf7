"""A call that loses its first cancel, as one inside redis-py does on Python 3.11 when its write
completes as the cancel comes (see :mod:`clarion.tasks`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def losing_one_cancel(
    called: asyncio.Event, lost: list[asyncio.CancelledError]
) -> Callable[..., Coroutine[Any, Any, None]]:
    """A call that sets ``called``, waits until cancelled, and at the first cancel returns as if
    none had come (noting it in ``lost``); later cancels end it."""

    async def call(*args: Any) -> None:
        called.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError as exc:
            if lost:
                raise
            lost.append(exc)

    return call
