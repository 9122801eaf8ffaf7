"""Presence on Redis: per channel, the clients' leases and entries, and per user their leases.

The node that owns a session adds its entry and refreshes all its entries every third of
``presence_ttl``; readers skip expired ones. A node that crashes stops refreshing, so its
sessions leave presence within ``presence_ttl``; a node that shuts down removes them at once.
The nodes with subscribers on a channel take its ended leases out (``lapsed``), so that their
``leave`` is sent once; readers drop those still there a TTL later.
Entries are kept here first, so that an entry added while Redis was down is put back by the
next refresh.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from redis.exceptions import RedisError

from clarion.engines.base import Hold, PresenceEntry, PresenceStats
from clarion.engines.redis import scripts
from clarion.engines.redis.batch import Batcher
from clarion.engines.redis.connect import unavailable
from clarion.engines.redis.keys import Keys

log = logging.getLogger("clarion.engines.redis")

DAY_MS = 86_400_000
LAPSED_PER_CALL = 1000  # ended leases taken out per channel and call (the rest at the next)
ORPHANED_PER_LOOK = 200  # channels with no live lease claimed at a time
ORPHANED_BATCHES = 50  # claims per look at most (the rest at the next)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _entries(flat: list[Any]) -> list[PresenceEntry]:
    """Entries from a flat list of client, entry JSON."""
    out = []
    for i in range(0, len(flat), 2):
        obj = orjson.loads(flat[i + 1])
        out.append(
            PresenceEntry(
                obj["client"],
                obj.get("user"),
                obj.get("info"),
                obj.get("transport", "ws"),
                obj.get("address"),
            )
        )
    return out


class RedisPresence:
    """This node's presence entries, and the presence reads, through the engine's batcher."""

    def __init__(self, client: Any, keys: Keys, ttl_ms: int, batch: Batcher) -> None:
        self._keys = keys
        self._ttl_ms = ttl_ms
        self._batch = batch
        self._add = client.register_script(scripts.PRESENCE_ADD)
        self._renew = client.register_script(scripts.PRESENCE_RENEW)
        self._remove = client.register_script(scripts.PRESENCE_REMOVE)
        self._stats = client.register_script(scripts.PRESENCE_STATS)
        self._announce = client.register_script(scripts.PRESENCE_ANNOUNCE)
        self._retire = client.register_script(scripts.PRESENCE_RETIRE)
        self._get = client.register_script(scripts.PRESENCE_GET)
        self._lapse = client.register_script(scripts.PRESENCE_LAPSE)
        self._hold = client.register_script(scripts.PRESENCE_HOLD)
        self._release = client.register_script(scripts.PRESENCE_RELEASE)
        self._channels_hold = client.register_script(scripts.PRESENCE_CHANNELS_HOLD)
        self._channels_due = client.register_script(scripts.PRESENCE_CHANNELS_DUE)
        self._channels_settle = client.register_script(scripts.PRESENCE_CHANNELS_SETTLE)
        self._last_lease = client.register_script(scripts.PRESENCE_LAST_LEASE)
        self.scripts = (
            self._hold,
            self._release,
            self._channels_hold,
            self._channels_due,
            self._channels_settle,
            self._last_lease,
            self._add,
            self._renew,
            self._remove,
            self._stats,
            self._announce,
            self._retire,
            self._get,
            self._lapse,
        )
        # This node's entries, for refresh: channel -> client -> (entry, user or "").
        self.held: dict[str, dict[str, tuple[bytes, str]]] = {}

    def _channel_keys(self, channel: str, *users: str) -> list[str]:
        keys = self._keys
        out = [
            keys.presence_expiry(channel),
            keys.presence_entries(channel),
            keys.presence_users(channel),
        ]
        # An entry without a user names no key of its own: the users zset stands in.
        out += [keys.presence_user(channel, u) if u else out[2] for u in users]
        return out

    async def add(self, channel: str, entry: PresenceEntry) -> None:
        value = orjson.dumps(entry.to_dict(address=True))
        user = entry.user or ""
        # Kept locally first: if Redis is down now, the next refresh puts the entry back.
        first = channel not in self.held
        self.held.setdefault(channel, {})[entry.client] = (value, user)
        keys = self._channel_keys(channel)
        try:
            # The adds and removes of one channel queued together are one script call each,
            # run in call order.
            added = self._batch.join(
                keys[0],
                self._add,
                keys,
                [self._ttl_ms],
                [self._keys.presence_user(channel, user) if user else keys[2]],
                [entry.client, value, user],
            )
            if first:  # known from now on, should this node stop without removing it
                await asyncio.gather(added, self._known([channel], self._ttl_ms))
            else:
                await added
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"adding presence on {channel!r}") from None

    async def _known(self, channels: list[str], lease_ms: int) -> None:
        """Record leases on ``channels`` until ``lease_ms`` from now, at least. Failing (the
        index's shard unreachable), the entry holds all the same: a refresh records it."""
        index = self._keys.presence_channels()
        try:
            # Those of one moment (a stream's many channels, a burst of sessions) are one call:
            # the index is one key. A family per lease: the script raises scores only (ZADD GT),
            # so the calls of different leases may run in any order.
            await self._batch.join(
                (index, lease_ms), self._channels_hold, [index], [lease_ms], [], channels
            )
        except (RedisError, OSError, TimeoutError) as exc:
            # Said at DEBUG: the refresh meets the same shard and the engine warns of it then.
            log.debug("recording presence channels failed: %s", exc)

    async def hold(self, channel: str, entry: PresenceEntry, lease: float, *, create: bool) -> Hold:
        """A long-poll client's entry, for ``lease`` seconds: no node keeps or renews it."""
        user = entry.user or ""
        keys = self._channel_keys(channel)
        keys.append(self._keys.presence_user(channel, user) if user else keys[2])
        value = orjson.dumps(entry.to_dict(address=True))
        lease_ms = max(1, round(lease * 1000))
        args = [lease_ms, entry.client, value, user, "1" if create else "0", entry.address or ""]
        try:
            done = Hold(int(await self._batch.script(self._hold, keys=keys, args=args)))
            if done == Hold.ADDED:  # a renewed one's channel is known, or was looked at since
                await self._known([channel], lease_ms)
            return done
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"holding presence on {channel!r}") from None

    async def release(self, channel: str, entry: PresenceEntry) -> PresenceEntry | None:
        """A long-poll client's entry, taken out at its word (if it is ``entry.user``'s)."""
        user = entry.user or ""
        keys = self._channel_keys(channel, user)
        args = [entry.client, user, entry.address or ""]
        try:
            found = await self._batch.script(self._release, keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"releasing presence on {channel!r}") from None
        return _entries([entry.client, found])[0] if found is not None else None

    async def remove(self, channel: str, client: str) -> None:
        entries = self.held.get(channel)
        held = entries.pop(client, None) if entries is not None else None
        if entries is not None and not entries:
            del self.held[channel]
        user = held[1] if held is not None else ""
        try:
            await self._removal(channel, client, user)
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"removing presence on {channel!r}") from None

    def _removal(self, channel: str, client: str, user: str) -> Any:
        keys = self._channel_keys(channel)
        mine = self._keys.presence_user(channel, user) if user else keys[2]
        return self._batch.join(keys[0], self._remove, keys, [], [mine], [client, user])

    async def announce(self, channel: str, user: str) -> bool:
        keys = [self._keys.presence_announced(channel), self._keys.presence_users(channel)]
        # The set outlives a crashed node's users only by a day: nothing else ends it then.
        try:
            return bool(await self._batch.script(self._announce, keys=keys, args=[user, DAY_MS]))
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"announcing presence on {channel!r}") from None

    async def retire(self, channel: str, user: str) -> bool:
        keys = [self._keys.presence_announced(channel), self._keys.presence_users(channel)]
        try:
            return bool(await self._batch.script(self._retire, keys=keys, args=[user]))
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"retiring presence on {channel!r}") from None

    async def stats(self, channel: str) -> PresenceStats:
        """Two counts in one round trip, however many are present."""
        keys = [self._keys.presence_expiry(channel), self._keys.presence_users(channel)]
        try:
            clients, users = await self._batch.script(self._stats, keys=keys, args=[])
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"counting presence on {channel!r}") from None
        return PresenceStats(int(clients), int(users))

    async def entries(self, channel: str, limit: int | None = None) -> list[PresenceEntry]:
        """The live entries, at most ``limit`` of them (the script reads no more)."""
        args = [self._ttl_ms, -1 if limit is None else limit]
        try:
            # An ended lease stays a TTL more for lapsed() to find: its leave is sent then.
            # Batched with the iteration's other calls: a burst of readers shares pipelines.
            flat = await self._batch.script(self._get, self._channel_keys(channel), args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"reading presence on {channel!r}") from None
        return _entries(flat)

    async def lapsed(self, channel: str) -> list[PresenceEntry]:
        """Take out the entries whose lease ended (their node stopped without removing them);
        each is returned to one caller only."""
        keys = [self._keys.presence_expiry(channel), self._keys.presence_entries(channel)]
        try:
            flat = await self._batch.script(self._lapse, keys=keys, args=[LAPSED_PER_CALL])
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"reading lapsed presence on {channel!r}") from None
        return _entries(flat)

    async def orphaned(self) -> list[tuple[str, list[PresenceEntry]]]:
        """The ended entries of channels where no lease is known to live (the nodes that held
        them stopped without removing them, and none renews any), taken out, each returned to
        one caller only; the channels with none left are forgotten.

        Channels are claimed a few hundred at a time, so that the nodes share them, until none
        is due (or ``ORPHANED_BATCHES`` batches): a backlog is worked off in one look, before
        the ended entries' keys expire. What one channel's calls raised leaves the others' as
        found; raised only when nothing was found."""
        index = self._keys.presence_channels()
        out: list[tuple[str, list[PresenceEntry]]] = []
        failed: BaseException | None = None
        for _ in range(ORPHANED_BATCHES):
            try:
                claim, *due = await self._batch.script(
                    self._channels_due,
                    keys=[index],
                    args=[ORPHANED_PER_LOOK, self._ttl_ms // 3],
                )
            except (RedisError, OSError, TimeoutError) as exc:
                failed = exc
                break
            channels = [_text(raw) for raw in due]
            found = await asyncio.gather(
                *(self._orphans(index, channel, claim) for channel in channels),
                return_exceptions=True,
            )
            for channel, entries in zip(channels, found, strict=True):
                if isinstance(entries, BaseException):
                    failed = entries  # claimed: looked at again once the claim lapses
                elif entries:
                    out.append((channel, entries))
            if len(due) < ORPHANED_PER_LOOK or failed is not None:
                break
        if failed is not None and not out:
            if isinstance(failed, RedisError | OSError | TimeoutError):
                raise unavailable(failed, "reading orphaned presence") from None
            raise failed
        return out

    async def _orphans(self, index: str, channel: str, claim: Any) -> list[PresenceEntry]:
        entries = await self.lapsed(channel)  # raised: nothing taken out
        try:
            last = await self._batch.script(
                self._last_lease, keys=[self._keys.presence_expiry(channel)], args=[]
            )
            # A lease that lives on there (a node renewing, a poll client, or more ended ones
            # than one call takes out) keeps the channel, looked at again once it has ended.
            await self._batch.script(
                self._channels_settle, keys=[index], args=[channel, claim, last or ""]
            )
        except (RedisError, OSError, TimeoutError):
            pass  # the entries are out: their leaves are due; the claim lapses, and it is settled
        return entries

    async def refresh(self) -> list[tuple[str, str]]:
        """Renew every entry this node holds, in one pipeline (raises what Redis raised); the
        (channel, client) of those added again.

        Only the leases are renewed: the entries are in Redis already. Those Redis no longer
        has (it restarted, or they lapsed while it was out of reach, and another node sent
        their leave) are added again, whole, in a second pipeline."""
        if not self.held:
            return []
        calls = []
        channels = list(self.held)
        for channel in channels:
            plain: list[Any] = []
            users: list[str] = []
            pairs: list[Any] = []
            for client, (_, user) in self.held[channel].items():
                if user:
                    users.append(user)
                    pairs += [client, user]
                else:
                    plain.append(client)
            keys = self._channel_keys(channel)
            keys += [self._keys.presence_user(channel, user) for user in users]
            calls.append((self._renew, keys, [self._ttl_ms, len(plain), *plain, *pairs]))
        missing = await self._batch.now(calls)
        # Each channel is known to hold a lease for as long as these last.
        await self._known(channels, self._ttl_ms)
        lost: list[tuple[str, str, str]] = []
        again = []
        for channel, clients in zip(channels, missing, strict=True):
            # Those removed while the renewal was under way are gone for good, not lost.
            entries = self.held.get(channel, {})
            for raw in clients:
                client = raw.decode() if isinstance(raw, bytes) else raw
                if client in entries:
                    value, user = entries[client]
                    lost.append((channel, client, user))
                    keys = self._channel_keys(channel, user)
                    again.append((self._add, keys, [self._ttl_ms, client, value, user]))
        if not again:
            return []
        await self._batch.now(again)
        # An entry removed while it was being added back may be back (its removal ran first):
        # remove it again, now that the addition has run.
        await asyncio.gather(
            *(
                self._removal(channel, client, user)
                for channel, client, user in lost
                if client not in self.held.get(channel, {})
            )
        )
        return [(c, client) for c, client, _ in lost if client in self.held.get(c, {})]

    async def leave_all(self) -> None:
        """Remove every entry this node holds (at shutdown: not after the TTL)."""
        calls = [
            (self._remove, self._channel_keys(channel, user), [client, user])
            for channel, entries in self.held.items()
            for client, (_, user) in entries.items()
        ]
        self.held.clear()
        if calls:
            await self._batch.now(calls)
