"""Whether Redis answers: the health check behind ``/healthz`` and the subscribe guard.

On a connection of its own, outside the command pool: a burst of commands queued for the pool
must not make a busy node look dead to its load balancer. Concurrent checks share one PING.
On a Redis Cluster every primary must answer: each owns channels nobody else can serve.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.exceptions import RedisError

from clarion.tasks import stop

PING_TIMEOUT = 1.0


class HealthCheck:
    def __init__(self, client: Any, *, cluster: bool) -> None:
        self._client = client
        self._cluster = cluster
        self._conn: Any = None  # the checks' own connection (not on a cluster)
        self._pinging: asyncio.Task[bool] | None = None  # the check under way
        self._closed = False

    async def ping(self) -> bool:
        """Whether Redis answers a PING within ``PING_TIMEOUT``."""
        if self._closed:
            return False
        pinging = self._pinging
        if pinging is None:
            pinging = self._pinging = asyncio.create_task(
                self._ping_once(), name="clarion-redis-ping"
            )
            pinging.add_done_callback(self._done)
        try:
            return await asyncio.shield(pinging)
        except asyncio.CancelledError:
            # The check stopped by close() answers its callers, unless they were cancelled too.
            caller = asyncio.current_task()
            if pinging.cancelled() and self._closed and caller and not caller.cancelling():
                return False
            raise

    def _done(self, pinging: asyncio.Task[bool]) -> None:
        if self._pinging is pinging:
            self._pinging = None

    async def _ping_once(self) -> bool:
        if self._cluster:
            try:
                async with asyncio.timeout(PING_TIMEOUT):
                    await self._client.ping(target_nodes=self._client.PRIMARIES)
            except (RedisError, OSError, TimeoutError):
                return False
            return True
        conn = self._conn
        if conn is None:
            conn = self._conn = self._client.connection_pool.make_connection()
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                # Twice at most: the socket kept from the last check may be one Redis closed
                # (it restarted since), which only a PING finds out; a fresh one then tells.
                for retry in (True, False):
                    try:
                        await conn.connect()
                        await conn.send_command("PING", check_health=False)
                        await conn.read_response()
                        return True
                    except (RedisError, OSError):
                        # Whatever was half sent or half read: the next try is on a new socket.
                        with contextlib.suppress(Exception):
                            await conn.disconnect(nowait=True)
                        if not retry:
                            raise
        except (RedisError, OSError, TimeoutError):
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
        return False

    async def close(self) -> None:
        self._closed = True
        # Stopped, not left to end by itself: closing its connection misses one still connecting.
        if self._pinging is not None:
            await stop([self._pinging])
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect(nowait=True)
            self._conn = None
