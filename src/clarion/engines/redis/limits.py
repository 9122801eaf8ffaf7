"""Limits shared by every node through Redis: connection counts and publish rates.

Connection counts are sorted sets of members (one per connection) scored by expiry; the
owning node refreshes its members with its presence entries, so a crashed node's connections
stop counting within the presence TTL.

Every Redis failure (including a wait for a pooled connection that timed out) is raised as
:class:`~clarion.errors.EngineUnavailable`, as the engine's other calls are: callers in the
core know clarion's errors, not the client library's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError

from clarion.engines.redis import scripts
from clarion.engines.redis.batch import Batcher
from clarion.engines.redis.keys import Keys
from clarion.errors import EngineUnavailable


def _unavailable(exc: BaseException, doing: str) -> EngineUnavailable:
    return EngineUnavailable(f"Redis unavailable while {doing}: {exc or 'timeout'}")


class ClusterLimits:
    def __init__(self, client: Any, keys: Keys, ttl_ms: int, batch: Batcher) -> None:
        self._batch = batch  # a connection burst becomes a few pipelines, not a call each
        self._keys = keys
        self._ttl_ms = ttl_ms
        self._acquire = client.register_script(scripts.CONNECTION_ACQUIRE)
        self._count = client.register_script(scripts.CONNECTION_COUNT)
        self._renew = client.register_script(scripts.CONNECTION_RENEW)
        self._take = client.register_script(scripts.RATE_TAKE)
        self._client = client
        self._held: dict[str, set[str]] = {}  # key → this node's members

    async def acquire_connection(self, kind: str, key: str, member: str, limit: int) -> bool:
        """Count ``member`` (a connection id) under ``kind``/``key`` unless ``limit`` is reached.

        ``kind`` is e.g. ``"user"`` or ``"ip"``. Returns whether the connection is admitted.
        """
        name = self._keys.connections(kind, key)
        try:
            # The acquires of one key queued together are one script call, in call order.
            admitted, _ = await self._batch.join(
                name, self._acquire, [name], [self._ttl_ms], [], [member, limit]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc, f"counting a connection per {kind}") from None
        if admitted:
            self._held.setdefault(name, set()).add(member)
        return bool(admitted)

    async def release_connection(self, kind: str, key: str, member: str) -> None:
        name = self._keys.connections(kind, key)
        held = self._held.get(name)
        if held is not None:
            held.discard(member)
            if not held:
                del self._held[name]
        # Not refreshed any more: should this fail, the member expires within the TTL.
        try:
            await self._release(name, member)
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc, f"releasing a connection per {kind}") from None

    def _release(self, name: str, member: str) -> Any:
        # The releases of one key queued together are one ZREM.
        return self._batch.join(name, None, [], ["ZREM", name], [], [member])

    async def connection_count(self, kind: str, key: str) -> int:
        try:
            name = self._keys.connections(kind, key)
            return int(await self._batch.script(self._count, keys=[name]))
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc, f"counting the connections per {kind}") from None

    async def take_token(self, key: str, rate: float, burst: int) -> bool:
        """One token from the bucket ``key`` (refilled at ``rate``/s, holding ``burst``)."""
        try:
            name = self._keys.rate(key)
            return bool(await self._batch.script(self._take, keys=[name], args=[rate, burst]))
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc, "taking a publish token") from None

    async def refresh(self) -> None:
        """Renew this node's members' leases; add back those Redis lost (raises what Redis
        raised)."""
        if not self._held:
            return
        names = list(self._held)
        calls = [
            (self._renew, [name], [self._ttl_ms, "renew", *self._held[name]]) for name in names
        ]
        missing = await self._batch.now(calls)
        lost: list[tuple[str, list[str]]] = []
        for name, members in zip(names, missing, strict=True):
            # Those released while the renewal was under way are gone for good, not lost.
            held = self._held.get(name, set())
            back = [m for raw in members if (m := _text(raw)) in held]
            if back:
                lost.append((name, back))
        if not lost:
            return
        await self._batch.now(
            [(self._renew, [name], [self._ttl_ms, "add", *members]) for name, members in lost]
        )
        # A member released while it was being added back may be counted again (its release
        # ran first): release it again, now that the addition has run.
        await asyncio.gather(
            *(
                self._release(name, member)
                for name, members in lost
                for member in members
                if member not in self._held.get(name, ())
            )
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
