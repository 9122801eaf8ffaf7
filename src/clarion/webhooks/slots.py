"""The attempts in flight, all endpoints together, and the share failing endpoints may hold.

One pool of ``concurrency`` slots would let endpoints whose receiver hangs hold every slot for
a whole timeout each, attempt after attempt, and a healthy endpoint would queue behind all of
them for each delivery. An endpoint not known to answer (it never delivered, or its last
attempt failed) therefore takes a slot of the failing share first (half the pool), then one of
the pool: the other half is always there for endpoints that answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Slots:
    def __init__(self, concurrency: int) -> None:
        self.pool = asyncio.Semaphore(concurrency)
        self.failing_share = max(concurrency // 2, 1)
        self.failing = asyncio.Semaphore(self.failing_share)

    @asynccontextmanager
    async def taken(self, *, failing: bool) -> AsyncIterator[None]:
        if not failing:
            async with self.pool:
                yield
            return
        async with self.failing, self.pool:
            yield
