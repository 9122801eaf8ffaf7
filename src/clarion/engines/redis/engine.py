"""The Redis engine: many hub nodes share channels, history and presence through one Redis.

* Publish is one Lua script per publication: the channel's meta (epoch, top offset; a fresh
  epoch when missing), the next offset, ``XADD`` to the channel's stream (entry id = offset,
  trimmed by size and TTL), idempotency, and ``PUBLISH`` to the channel's pub/sub channel.
* Each node holds one pub/sub connection and subscribes only to channels with local
  subscribers. Pub/sub is at-most-once, so the node keeps the last position it saw per
  channel and, every ``check_interval`` seconds and after every reconnect, compares it with
  the channel's meta; publications it missed are read back from the stream and handed to the
  hub, which drops what it already has. A lost *last* publication is thus delivered within one
  interval, and the hub's own gap detection covers the ones followed by another.
* Presence entries expire unless their node refreshes them, so a crashed node's sessions
  leave presence within ``presence_ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from clarion.engines.base import EngineSink, History, PresenceEntry, PresenceStats
from clarion.engines.redis import scripts
from clarion.engines.redis.batch import Batcher
from clarion.engines.redis.connect import parse_url
from clarion.engines.redis.keys import (
    EVENT,
    PUBLICATION,
    SIGNAL,
    Keys,
    decode_entry,
    decode_event,
    decode_publication,
    decode_signal,
    encode_body,
    encode_event,
    encode_signal,
    entry_offset,
    publication_from_body,
)
from clarion.engines.redis.limits import ClusterLimits
from clarion.engines.redis.pubsub import PubSubLink
from clarion.engines.redis.sharded import ShardedLink
from clarion.errors import ConfigError, EngineUnavailable
from clarion.protocol.channels import namespace_of
from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import NamespaceOptions, Settings

if TYPE_CHECKING:
    from clarion.engines.redis.nodes import RedisNodes
    from clarion.webhooks.outbox import Outbox

log = logging.getLogger("clarion.engines.redis")

START_TIMEOUT = 5.0  # seconds to reach Redis at start
SUBSCRIBE_TIMEOUT = 5.0  # seconds for Redis to confirm a subscription
PING_TIMEOUT = 1.0
CHECK_BATCH = 500  # channels per pipelined position check
CATCH_UP_ROUNDS = 10  # history reads per channel per check, at most
MIN_REDIS = (6, 2)  # XTRIM MINID, ZADD GT
DAY_MS = 86_400_000
# Decoded publications kept by (channel, epoch, offset), which names one content for good: the
# history reads of a reconnect storm then share objects, and with them their encoded frames.
RECENT = 4096


def new_epoch() -> str:
    return os.urandom(6).hex()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisEngine:
    """Engine for many nodes behind one load balancer, sharing one Redis (or Sentinel set)."""

    name = "redis"

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.target = parse_url(url)
        self.keys = Keys(self.target.prefix, sharded=bool(self.target.cluster))
        # On a cluster, a channel's messages go through its shard (see keys.py).
        self._publish_command = "SPUBLISH" if self.target.cluster else "PUBLISH"
        self.node_id = os.urandom(8).hex()
        self.check_interval = self.target.check_interval
        self.presence_ttl = self.target.presence_ttl
        self._client: Any = None
        self._sink: EngineSink | None = None
        self._link: PubSubLink | ShardedLink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: dict[str, StreamPosition] = {}  # subscribed channel → last position seen
        self._resync_lock = asyncio.Lock()
        # This node's entries, for refresh: channel -> client -> (entry, user or "").
        self._presence: dict[str, dict[str, tuple[bytes, str]]] = {}
        self._recent: dict[tuple[str, str, int], Publication] = {}  # see RECENT
        self._failing: str | None = None  # what last failed, to log an outage once
        self._ping_conn: Any = None  # health checks' own connection, outside the pool
        self._pinging: asyncio.Future[bool] | None = None  # the health check under way
        self.limits: ClusterLimits | None = None
        self.recovered = 0  # publications read back from streams after pub/sub lost them

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, sink: EngineSink) -> None:
        self._sink = sink
        client = self._client = self.target.client()
        self._publish = client.register_script(scripts.PUBLISH)
        self._history = client.register_script(scripts.HISTORY)
        self._presence_add = client.register_script(scripts.PRESENCE_ADD)
        self._presence_remove = client.register_script(scripts.PRESENCE_REMOVE)
        self._presence_stats = client.register_script(scripts.PRESENCE_STATS)
        self._presence_announce = client.register_script(scripts.PRESENCE_ANNOUNCE)
        self._presence_retire = client.register_script(scripts.PRESENCE_RETIRE)
        self._presence_get = client.register_script(scripts.PRESENCE_GET)
        self._revoke = client.register_script(scripts.REVOKE)
        # Per-session commands (history, presence, shared counts) issued in one loop
        # iteration share one pipeline: a burst of sessions costs round trips per iteration.
        self._batch = Batcher(client)
        self.limits = ClusterLimits(client, self.keys, _ms(self.presence_ttl), self._batch)
        where = self.target.description
        try:
            info = await asyncio.wait_for(client.info("server"), START_TIMEOUT)
            version = tuple(int(p) for p in str(info["redis_version"]).split(".")[:2])
            if version < MIN_REDIS:
                raise ConfigError(
                    f"Redis at {where} is version {info['redis_version']}; clarion needs "
                    f"{MIN_REDIS[0]}.{MIN_REDIS[1]} or later"
                )
            for script in (
                self._publish,
                self._history,
                self._presence_add,
                self._presence_remove,
                self._presence_stats,
                self._presence_announce,
                self._presence_retire,
                self._presence_get,
                self._revoke,
            ):
                await client.script_load(script.script)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._close_client()
            raise EngineUnavailable(f"cannot reach Redis at {where}: {exc or 'timeout'}") from None
        except BaseException:
            await self._close_client()
            raise
        name = f"clarion-pubsub-{self.node_id}"
        if self.target.cluster:
            self._link = ShardedLink(
                self.keys, self.target, client, self._on_message, self._on_resubscribed, name
            )
        else:
            self._link = PubSubLink(
                self.keys,
                client.connection_pool.make_connection,
                self._on_message,
                self._on_resubscribed,
                client_name=name,
            )
        try:
            await self._link.start(START_TIMEOUT)
        except BaseException:
            await self._close_client()
            raise
        self._tasks = [
            asyncio.create_task(self._check_forever(), name="clarion-redis-check"),
            asyncio.create_task(self._heartbeat_forever(), name="clarion-redis-heartbeat"),
            asyncio.create_task(self._refresh_forever(), name="clarion-redis-refresh"),
        ]
        log.info(
            "redis engine connected to %s (prefix %r, node %s)",
            where,
            self.keys.prefix,
            self.node_id,
        )

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._link is not None:
            await self._link.close()
            self._link = None
        if self._client is not None:
            await self._batch.close(PING_TIMEOUT)
        # Leave presence now rather than after the TTL; best effort.
        if self._presence and self._client is not None:
            with contextlib.suppress(Exception):
                calls = [
                    (self._presence_remove, self._presence_keys(channel, user), [client, user])
                    for channel, entries in self._presence.items()
                    for client, (_, user) in entries.items()
                ]
                await asyncio.wait_for(self._batch.now(calls), PING_TIMEOUT)
        self._presence.clear()
        if self._ping_conn is not None:
            with contextlib.suppress(Exception):
                await self._ping_conn.disconnect(nowait=True)
            self._ping_conn = None
        await self._close_client()

    async def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    def _unavailable(self, exc: BaseException, doing: str) -> EngineUnavailable:
        return EngineUnavailable(f"Redis unavailable while {doing}: {exc or 'timeout'}")

    # ---- publish and history ----------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        options: NamespaceOptions,
        *,
        idempotency_key: str | None = None,
        info: dict[str, Any] | None = None,
        idempotency_scope: str | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> Publication:
        return await self._store(
            channel,
            data,
            options,
            idempotency_key,
            info,
            self.keys.pubsub(channel),
            idempotency_scope=idempotency_scope,
            attrs=attrs,
        )

    async def _store(
        self,
        channel: str,
        data: Any,
        options: NamespaceOptions,
        idempotency_key: str | None,
        info: dict[str, Any] | None,
        pubsub_channel: str,
        *,
        idempotency_scope: str | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> Publication:
        body = encode_body(data, info, idempotency_key, attrs)
        window = 0
        idem = self.keys.meta(channel)  # a key of the same slot when there is no idempotency key
        if idempotency_key is not None and options.idempotency_window > 0:
            window = _ms(options.idempotency_window)
            idem = self.keys.idempotency(channel, idempotency_key, idempotency_scope)
        try:
            # Batched: the publications made in one loop iteration share one round trip. Each
            # is still its own script, run atomically and in call order.
            offset, epoch, time, duplicate, earlier = await self._batch.script(
                self._publish,
                keys=[self.keys.stream(channel), self.keys.meta(channel), idem],
                args=[
                    body,
                    options.history_size,
                    _ms(options.history_ttl),
                    _ms(options.history_meta_ttl),
                    new_epoch(),
                    pubsub_channel,
                    window,
                    self._publish_command,
                ],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"publishing to {channel!r}") from None
        if duplicate:
            pub = publication_from_body(channel, offset, epoch.decode(), time, earlier)
            pub.repeated = True
            return pub
        return Publication(
            channel, offset, epoch.decode(), data, time, info, idempotency_key, attrs
        )

    async def publish_ephemeral(self, pub: Publication) -> None:
        # Pub/sub only: no stream entry, no offset; batched with the iteration's other calls.
        try:
            await self._batch.command(
                self._publish_command, self.keys.pubsub(pub.channel), encode_signal(pub)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"publishing to {pub.channel!r}") from None

    async def history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> History:
        try:
            epoch_b, top, earliest, entries = await self._batch.script(
                self._history,
                keys=[self.keys.stream(channel), self.keys.meta(channel)],
                args=[
                    since.epoch if since is not None else "",
                    since.offset if since is not None else 0,
                    -1 if limit is None else limit,
                    new_epoch(),
                    _ms(options.history_meta_ttl),
                    _ms(options.history_ttl),
                    options.history_size,
                    1 if reverse else 0,
                ],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"reading the history of {channel!r}") from None
        epoch = epoch_b.decode()
        pubs = [self._decoded(channel, epoch, entry) for entry in entries]
        return History(pubs, StreamPosition(epoch, int(top)), int(earliest))

    def _decoded(self, channel: str, epoch: str, entry: list[Any]) -> Publication:
        recent = self._recent.get((channel, epoch, entry_offset(entry)))
        if recent is not None:
            return recent
        pub = decode_entry(channel, epoch, entry)
        self._remember(pub)
        return pub

    def _remember(self, pub: Publication) -> None:
        recent = self._recent
        recent[(pub.channel, pub.epoch, pub.offset)] = pub
        if len(recent) > RECENT:
            del recent[next(iter(recent))]  # the oldest remembered

    # ---- subscriptions and delivery ---------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        link = self._require_link()
        if not link.up and not await self._ping():
            raise EngineUnavailable(f"Redis unavailable while subscribing to {channel!r}")
        try:
            await link.subscribe(channel, SUBSCRIBE_TIMEOUT)
            # The position now is the baseline of the checks: everything after it was
            # published while the subscription was live, and everything up to it the hub
            # reads from history right after this returns.
            history = await self.history(channel, self._options(channel), limit=0)
        except BaseException:
            # The hub treats a failed subscribe as never made: leave no subscription behind.
            self._seen.pop(channel, None)
            await asyncio.shield(link.unsubscribe(channel))
            raise
        self._note(history.position, channel)

    async def unsubscribe(self, channel: str) -> None:
        self._seen.pop(channel, None)
        if self._link is not None:
            await self._link.unsubscribe(channel)

    def _require_link(self) -> PubSubLink | ShardedLink:
        if self._link is None:
            raise EngineUnavailable("the redis engine is not started")
        return self._link

    def _options(self, channel: str) -> NamespaceOptions:
        return self.settings.namespace(namespace_of(channel))

    def _note(self, position: StreamPosition, channel: str, *, baseline: bool = True) -> None:
        seen = self._seen.get(channel)
        if seen is None:
            if baseline:
                self._seen[channel] = position
        elif seen.epoch != position.epoch or position.offset > seen.offset:
            self._seen[channel] = position

    def _on_message(self, pubsub_channel: bytes, payload: bytes) -> None:
        sink = self._sink
        if sink is None or not payload:
            return
        try:
            if pubsub_channel == self.keys.control_bytes:
                self._on_control(payload)
                return
            channel = self.keys.channel_of(pubsub_channel)
            if channel is None:
                return
            if payload[0] == PUBLICATION:
                pub = decode_publication(channel, payload)
                self._remember(pub)
                self._note(pub.position, channel, baseline=False)
                sink.on_publication(pub)
            elif payload[0] == SIGNAL:
                sink.on_ephemeral(decode_signal(channel, payload))
            elif payload[0] == EVENT:
                kind, event = decode_event(payload)
                sink.on_event(channel, kind, event)
        except Exception:
            log.exception("could not handle a pub/sub message on %r", pubsub_channel)

    def _on_control(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        if msg.get("n") == self.node_id or self._sink is None:
            return  # already applied locally
        self._sink.on_control(str(msg["c"]), dict(msg.get("p") or {}))

    def _on_resubscribed(self, channels: list[str]) -> None:
        if self._seen:
            self._spawn(self._resync_after_reconnect(), "clarion-redis-resync")

    async def _resync_after_reconnect(self) -> None:
        try:
            await self._resync(list(self._seen))
        except (RedisError, OSError, TimeoutError, EngineUnavailable) as exc:
            # The periodic check retries within one interval.
            self._outage("resync after reconnect", exc)
        except Exception:
            log.exception("resync after reconnect failed")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._tasks_done)

    def _tasks_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    # ---- position checks: publications pub/sub lost are read back from the streams ----------

    async def _heartbeat_forever(self) -> None:
        # Apart from the checks, which may wait on a slow Redis: a link that stops answering
        # is replaced within two intervals whatever the other connections do.
        while True:
            await asyncio.sleep(self.check_interval)
            if self._link is not None:
                try:
                    await self._link.heartbeat()
                except Exception:
                    log.exception("pub/sub heartbeat failed")

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                if self._link is not None and self._link.up:
                    await self._resync(list(self._seen))
                self._recovered_from_outage()
            except (RedisError, OSError, TimeoutError, EngineUnavailable) as exc:
                self._outage("position check", exc)
            except Exception:
                log.exception("position check failed")

    async def _resync(self, channels: list[str]) -> None:
        """Compare each channel's stored position with the last one seen; catch up the lagging."""
        async with self._resync_lock:
            lagging: list[str] = []
            for i in range(0, len(channels), CHECK_BATCH):
                chunk = channels[i : i + CHECK_BATCH]
                pipe = self._client.pipeline(transaction=False)
                for channel in chunk:
                    pipe.hmget(self.keys.meta(channel), "e", "s")
                rows = await pipe.execute()
                for channel, (epoch, top) in zip(chunk, rows, strict=True):
                    seen = self._seen.get(channel)
                    if seen is None or epoch is None:
                        continue  # unsubscribed, or nothing published since the meta was lost
                    # A top below what was seen: Redis lost writes (failover); the history
                    # read of the catch-up starts a new epoch for it.
                    if epoch.decode() != seen.epoch or int(top) != seen.offset:
                        lagging.append(channel)
            for channel in lagging:
                await self._catch_up(channel)

    async def _catch_up(self, channel: str) -> None:
        options = self._options(channel)
        batch = self.settings.limits.max_history_batch
        for _ in range(CATCH_UP_ROUNDS):
            seen = self._seen.get(channel)
            if seen is None or self._sink is None:
                return
            history = await self.history(channel, options, since=seen, limit=batch)
            if history.position.epoch != seen.epoch:
                # Everything held of the new epoch; the hub resets its subscribers on it.
                history = await self.history(channel, options, limit=batch)
            if self._seen.get(channel) is None:
                return  # unsubscribed meanwhile
            if history.publications:
                log.info(
                    "recovered %d publication(s) on %s that pub/sub did not deliver",
                    len(history.publications),
                    channel,
                )
            for pub in history.publications:
                self.recovered += 1
                self._note(pub.position, channel)
                self._sink.on_publication(pub)
            last = history.publications[-1].offset if history.publications else None
            if last is None or last >= history.position.offset:
                # Nothing more to read (trimmed or history off): the hub resets on the next
                # publication's gap; stop comparing against a position nobody can fill.
                self._note(history.position, channel)
                return

    # ---- presence ---------------------------------------------------------------------------

    def _presence_keys(self, channel: str, *users: str) -> list[str]:
        keys = self.keys
        out = [
            keys.presence_expiry(channel),
            keys.presence_entries(channel),
            keys.presence_users(channel),
        ]
        # An entry without a user names no key of its own: the users zset stands in.
        out += [keys.presence_user(channel, u) if u else out[2] for u in users]
        return out

    async def presence_add(self, channel: str, entry: PresenceEntry) -> None:
        value = orjson.dumps(entry.to_dict(address=True))
        user = entry.user or ""
        # Kept locally first: if Redis is down now, the next refresh puts the entry back.
        self._presence.setdefault(channel, {})[entry.client] = (value, user)
        try:
            await self._batch.script(
                self._presence_add,
                keys=self._presence_keys(channel, user),
                args=[_ms(self.presence_ttl), entry.client, value, user],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"adding presence on {channel!r}") from None

    async def presence_remove(self, channel: str, client: str) -> None:
        entries = self._presence.get(channel)
        held = entries.pop(client, None) if entries is not None else None
        if entries is not None and not entries:
            del self._presence[channel]
        user = held[1] if held is not None else ""
        try:
            await self._batch.script(
                self._presence_remove,
                keys=self._presence_keys(channel, user),
                args=[client, user],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"removing presence on {channel!r}") from None

    async def presence_announce(self, channel: str, user: str) -> bool:
        keys = [self.keys.presence_announced(channel), self.keys.presence_users(channel)]
        # The set outlives a crashed node's users only by a day: nothing else ends it then.
        try:
            return bool(
                await self._batch.script(self._presence_announce, keys=keys, args=[user, DAY_MS])
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"announcing presence on {channel!r}") from None

    async def presence_retire(self, channel: str, user: str) -> bool:
        keys = [self.keys.presence_announced(channel), self.keys.presence_users(channel)]
        try:
            return bool(await self._batch.script(self._presence_retire, keys=keys, args=[user]))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"retiring presence on {channel!r}") from None

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Two counts in one round trip, however many are present."""
        keys = self.keys
        try:
            clients, users = await self._batch.script(
                self._presence_stats,
                keys=[keys.presence_expiry(channel), keys.presence_users(channel)],
                args=[],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"counting presence on {channel!r}") from None
        return PresenceStats(int(clients), int(users))

    async def presence(self, channel: str) -> list[PresenceEntry]:
        try:
            flat = await self._presence_get(keys=self._presence_keys(channel))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"reading presence on {channel!r}") from None
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

    async def _refresh_forever(self) -> None:
        # Three refreshes per TTL: an entry survives two lost refreshes in a row.
        interval = self.presence_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._refresh()
                self._recovered_from_outage()
            except (RedisError, OSError, TimeoutError) as exc:
                self._outage("presence refresh", exc)
            except Exception:
                log.exception("presence refresh failed")

    async def _refresh(self) -> None:
        if self._presence:
            ttl = _ms(self.presence_ttl)
            calls = []
            for channel, entries in self._presence.items():
                args: list[Any] = [ttl]
                for client, (value, user) in entries.items():
                    args += [client, value, user]
                users = [user for _, user in entries.values()]
                calls.append((self._presence_add, self._presence_keys(channel, *users), args))
            await self._batch.now(calls)
        if self.limits is not None:
            await self.limits.refresh()

    def _outage(self, doing: str, exc: BaseException) -> None:
        if self._failing is None:
            log.warning("redis unavailable (%s failed: %s)", doing, exc or "timeout")
        self._failing = doing

    def _recovered_from_outage(self) -> None:
        if self._failing is not None:
            log.info("redis reachable again")
            self._failing = None

    # ---- events, control, health ------------------------------------------------------------

    async def broadcast_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        try:
            await self._client.execute_command(
                self._publish_command, self.keys.pubsub(channel), encode_event(kind, event)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"sending a {kind} event on {channel!r}") from None

    async def broadcast_control(self, command: str, payload: dict[str, Any]) -> None:
        # Applied here directly, so that this node acts even while its pub/sub is down.
        if self._sink is not None:
            self._sink.on_control(command, payload)
        message = orjson.dumps({"n": self.node_id, "c": command, "p": payload})
        try:
            await self._client.publish(self.keys.control, message)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"sending {command!r} to other nodes") from None

    # ---- revocations: one sorted set, scored by when each lapses --------------------------------

    async def revoke(self, kind: str, key: str, until: float) -> None:
        try:
            args = [f"{kind}:{key}", repr(until), repr(time.time())]
            await self._revoke(keys=[self.keys.revocations()], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, "storing a revocation") from None

    async def revocations(self) -> list[tuple[str, str, float]]:
        try:
            rows = await self._client.zrangebyscore(
                self.keys.revocations(), f"({time.time()!r}", "+inf", withscores=True
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, "reading revocations") from None
        out = []
        for member, until in rows:
            kind, _, key = member.decode().partition(":")
            out.append((kind, key, float(until)))
        return out

    async def _ping(self) -> bool:
        """Whether Redis answers a PING within ``PING_TIMEOUT``.

        On a connection of its own: a burst of commands queued for the pool must not make a
        busy node look dead to its load balancer. Concurrent checks share one PING.
        """
        if self._client is None:
            return False
        if self.target.cluster:
            # Every primary answers: each owns channels nobody else can serve.
            try:
                async with asyncio.timeout(PING_TIMEOUT):
                    await self._client.ping(target_nodes=self._client.PRIMARIES)
            except (RedisError, OSError, TimeoutError):
                return False
            return True
        pinging = self._pinging
        if pinging is None:
            pinging = self._pinging = asyncio.ensure_future(self._ping_once())
            pinging.add_done_callback(self._ping_done)
        return await asyncio.shield(pinging)

    def _ping_done(self, pinging: asyncio.Future[bool]) -> None:
        if self._pinging is pinging:
            self._pinging = None

    async def _ping_once(self) -> bool:
        conn = self._ping_conn
        if conn is None:
            conn = self._ping_conn = self._client.connection_pool.make_connection()
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await conn.connect()
                await conn.send_command("PING", check_health=False)
                await conn.read_response()
        except (RedisError, OSError, TimeoutError):
            # Whatever was half sent or half read: the next check starts on a fresh socket.
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            return False
        return True

    def webhook_outbox(self, settings: Settings) -> Outbox:
        """One outbox in Redis shared by every node; each endpoint delivered by one node."""
        from clarion.webhooks.redis_outbox import RedisOutbox

        return RedisOutbox(self, max_dead_letters=settings.webhook_delivery.max_dead_letters)

    def node_directory(self) -> RedisNodes:
        """Every node of this prefix, each announced with its figures."""
        from clarion.engines.redis.nodes import RedisNodes

        return RedisNodes(self.target, self.keys.prefix, self.node_id)

    async def healthy(self) -> bool:
        """Redis answers, and this node's pub/sub connection is up."""
        return self._link is not None and self._link.up and await self._ping()
