"""The node directory on Redis: each node's last record and when it was announced.

Two keys under one hash tag (one Redis Cluster slot): a hash of records by node id and a sorted
set of node ids scored by the announce time (Redis' clock, milliseconds). Both expire
:data:`KEEP` seconds after the last announce of any node, so a cluster that is gone leaves
nothing; a node quiet for :data:`FORGET` seconds is dropped by the next reader.

Every Redis failure is raised as :class:`~clarion.errors.EngineUnavailable`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.exceptions import RedisError

from clarion.engines.redis.connect import RedisTarget
from clarion.engines.redis.keys import Keys
from clarion.errors import EngineUnavailable

KEEP = 600  # seconds both keys live after the last announce
FORGET = 300.0  # seconds after which a quiet node is no longer listed, even as gone

# One script: the announce time is Redis' own, like every other time the engine keeps.
_ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return now
"""

_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]))
for _, node in ipairs(old) do
  redis.call('HDEL', KEYS[1], node)
  redis.call('ZREM', KEYS[2], node)
end
return {now, redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[1])}
"""


class RedisNodes:
    """:class:`~clarion.engines.base.NodeDirectory` shared by every node of one prefix."""

    def __init__(self, target: RedisTarget, keys: Keys, node: str) -> None:
        self.node = node
        self._target = target
        self._records = keys.node_records()
        self._seen = keys.node_seen()
        # A client of its own: the directory outlives the engine's client at shutdown
        # (the node withdraws last) and its round trips measure Redis, not the engine's queue.
        self._client: Any = None
        self._announce: Any = None
        self._read: Any = None

    def _connected(self) -> Any:
        if self._client is None:
            self._client = self._target.client()
            self._announce = self._client.register_script(_ANNOUNCE)
            self._read = self._client.register_script(_READ)
        return self._client

    async def announce(self, record: dict[str, Any]) -> None:
        self._connected()
        try:
            await self._announce(
                keys=[self._records, self._seen], args=[self.node, orjson.dumps(record), KEEP]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise EngineUnavailable(f"Redis unavailable while announcing: {exc}") from None

    async def withdraw(self) -> None:
        client = self._connected()
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hdel(self._records, self.node)
                pipe.zrem(self._seen, self.node)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise EngineUnavailable(f"Redis unavailable while withdrawing: {exc}") from None

    async def nodes(self) -> list[tuple[dict[str, Any], float]]:
        self._connected()
        try:
            redis_now, seen, records = await self._read(
                keys=[self._records, self._seen], args=[int(FORGET * 1000)]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise EngineUnavailable(f"Redis unavailable while listing nodes: {exc}") from None
        # Announce times on this node's clock: an age is Redis' to measure, whatever the two
        # clocks' difference (else a node an hour off would see every other one as gone).
        shift = time.time() - float(redis_now) / 1000
        times = {seen[i]: float(seen[i + 1]) / 1000 + shift for i in range(0, len(seen), 2)}
        out = []
        for i in range(0, len(records), 2):
            when = times.get(records[i])
            if when is None:
                continue
            try:
                record = orjson.loads(records[i + 1])
            except orjson.JSONDecodeError:
                continue  # not a record of ours: skipped, not fatal
            if isinstance(record, dict):
                out.append((record, when))
        return out

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
