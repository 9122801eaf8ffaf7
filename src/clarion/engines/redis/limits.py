"""Limits shared by every node through Redis: connection counts and publish rates.

Connection counts are sorted sets of members (one per connection, named by its node) scored by
expiry; the owning node refreshes its members with its presence entries, so a crashed node's
connections stop counting within the presence TTL. A count at its cap is not taken at its word
before a refusal, though: see :meth:`ClusterLimits.acquire_connection`.

Every Redis failure (including a wait for a pooled connection that timed out) is raised as
:class:`~clarion.errors.EngineUnavailable`, as the engine's other calls are: callers in the
core know clarion's errors, not the client library's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError

from clarion.engines.base import ANNOUNCE_INTERVAL, GONE_AFTER
from clarion.engines.redis import scripts
from clarion.engines.redis.batch import Batcher
from clarion.engines.redis.keys import Keys
from clarion.errors import EngineUnavailable
from clarion.tasks import stop


def _unavailable(exc: BaseException, doing: str) -> EngineUnavailable:
    return EngineUnavailable(f"Redis unavailable while {doing}: {exc or 'timeout'}")


class ClusterLimits:
    def __init__(self, client: Any, keys: Keys, ttl_ms: int, batch: Batcher, node: str) -> None:
        self._batch = batch  # a connection burst becomes a few pipelines, not a call each
        self._keys = keys
        self._ttl_ms = ttl_ms
        self._node = node
        self._acquire = client.register_script(scripts.CONNECTION_ACQUIRE)
        self._count = client.register_script(scripts.CONNECTION_COUNT)
        self._renew = client.register_script(scripts.CONNECTION_RENEW)
        self._nodes = client.register_script(scripts.CONNECTION_NODES)
        self._purge = client.register_script(scripts.CONNECTION_PURGE)
        self._seen = client.register_script(scripts.NODES_SEEN)
        self._take = client.register_script(scripts.RATE_TAKE)
        self._client = client
        self._held: dict[str, set[str]] = {}  # key → this node's members
        # key → members whose release failed (Redis away): released again by the next refresh,
        # or at once by a refusal of their key, rather than left counted until they lapse.
        self._unreleased: dict[str, set[str]] = {}
        self._looking: dict[str, asyncio.Task[bool]] = {}  # key → a look after a refusal

    async def acquire_connection(self, kind: str, key: str, member: str, limit: int) -> bool:
        """Count ``member`` (a connection id) under ``kind``/``key`` unless ``limit`` is reached.

        ``kind`` is e.g. ``"user"`` or ``"ip"``. Returns whether the connection is admitted.

        A node that stops without releasing its members (killed, or its machine lost) leaves
        them counted until their leases lapse, ``presence_ttl`` later; its clients reconnect
        to the other nodes at once, and a refusal there (4503) would end their reconnecting
        for good. So a count at its cap is checked before a refusal (see :meth:`_recount`),
        which may take up to :data:`GONE_AFTER` when another node counted has just stopped.
        """
        name = self._keys.connections(kind, key)
        member = f"{self._node}:{member}"
        try:
            admitted = await self._acquire_one(name, member, limit)
            if not admitted:
                admitted = await self._recount(name, member, limit)
        except (RedisError, OSError, TimeoutError) as exc:
            # Admitted anyway (the caller fails open while Redis is away): held here, so that
            # the next refresh, which adds back what Redis lacks, counts it cluster-wide.
            self._held.setdefault(name, set()).add(member)
            raise _unavailable(exc, f"counting a connection per {kind}") from None
        if admitted:
            self._held.setdefault(name, set()).add(member)
        return admitted

    async def _acquire_one(self, name: str, member: str, limit: int) -> bool:
        # The acquires of one key queued together are one script call, in call order.
        admitted, _ = await self._batch.join(
            name, self._acquire, [name], [self._ttl_ms], [], [member, limit]
        )
        return bool(admitted)

    async def _recount(self, name: str, member: str, limit: int) -> bool:
        """After a refusal: admitted after all if the count held members of stopped nodes.
        The refusals of one key at one time share one look (a burst of them stays a few
        calls)."""
        if name in self._unreleased:  # this node's own leftovers first: they are no one's
            await self._release_again([name])
            if await self._acquire_one(name, member, limit):
                return True
        looking = self._looking.get(name)
        if looking is None:
            looking = self._looking[name] = asyncio.create_task(self._drop_stopped(name, limit))
            looking.add_done_callback(lambda done: self._looked(name, done))
        return await asyncio.shield(looking) and await self._acquire_one(name, member, limit)

    def _looked(self, name: str, done: asyncio.Task[bool]) -> None:
        if self._looking.get(name) is done:
            del self._looking[name]
        if not done.cancelled():
            done.exception()  # retrieved: each waiting refusal raises it itself

    async def _drop_stopped(self, name: str, limit: int) -> bool:
        """Wait until each other node counted under ``name`` has announced itself since (it
        is running: its members stand) or has been silent :data:`GONE_AFTER` (it stopped: its
        members go). Returns whether members went; waits only while the undecided nodes'
        members could make room."""
        counted = await self._batch.script(self._nodes, keys=[name])
        counts = {_text(counted[i]): int(counted[i + 1]) for i in range(0, len(counted), 2)}
        # This node's members stand, as do an older version's, which name no node.
        standing = counts.pop(self._node, 0) + counts.pop("", 0)
        undecided = set(counts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GONE_AFTER + 2 * ANNOUNCE_INTERVAL
        since: int | None = None
        while undecided and standing < limit and loop.time() < deadline:
            now, seen = await self._seen_nodes()
            if since is None:
                since = now
            stopped = [n for n in undecided if n in seen and now - seen[n] > GONE_AFTER * 1000]
            if stopped:
                await self._batch.script(self._purge, keys=[name], args=stopped)
                return True
            # Not in the directory: withdrawn (its members were released) or forgotten long
            # ago (they lapsed); announced since the refusal: running.
            running = {n for n in undecided if n not in seen or seen[n] > since}
            undecided -= running
            standing += sum(counts[n] for n in running)
            if undecided and standing < limit:
                await asyncio.sleep(ANNOUNCE_INTERVAL / 2)
        return False

    async def close(self) -> None:
        """Stop the looks under way (the engine is closing)."""
        await stop(list(self._looking.values()))

    async def _seen_nodes(self) -> tuple[int, dict[str, int]]:
        """Redis' time and each node's last announce, both in milliseconds."""
        now, flat = await self._batch.script(self._seen, keys=[self._keys.node_seen()])
        return int(now), {_text(flat[i]): int(float(flat[i + 1])) for i in range(0, len(flat), 2)}

    async def release_connection(self, kind: str, key: str, member: str) -> None:
        name = self._keys.connections(kind, key)
        member = f"{self._node}:{member}"
        held = self._held.get(name)
        if held is not None:
            held.discard(member)
            if not held:
                del self._held[name]
        # Not refreshed any more: should this fail, it is released again by the next refresh.
        try:
            await self._release(name, member)
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreleased.setdefault(name, set()).add(member)
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

    async def _release_again(self, names: list[str]) -> None:
        """Release the members of ``names`` whose release failed (raises what Redis raised;
        those not released stay to be tried again)."""
        taken = {name: set(self._unreleased[name]) for name in names}
        calls: list[tuple[Any, list[Any], list[Any]]] = [
            (None, [], ["ZREM", name, *members]) for name, members in taken.items()
        ]
        await self._batch.now(calls)
        for name, members in taken.items():
            left = self._unreleased.get(name)  # more may have failed meanwhile
            if left is not None:
                left -= members
                if not left:
                    del self._unreleased[name]

    async def release_failed(self) -> None:
        """Release again the members whose release failed, if any (raises what Redis raised)."""
        if self._unreleased:
            await self._release_again(list(self._unreleased))

    async def refresh(self) -> None:
        """Release again what failed to be; renew this node's members' leases; add back those
        Redis lost (raises what Redis raised)."""
        await self.release_failed()
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
