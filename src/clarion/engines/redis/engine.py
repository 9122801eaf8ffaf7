"""The Redis engine: many hub nodes share channels, history and presence through one Redis.

* Publish is one Lua script per publication (``scripts.PUBLISH``): meta, next offset, stream
  entry, trims, idempotency and the pub/sub announcement, atomically (with ``wait_replicas``
  the announcement comes once WAIT has confirmed the write: ``scripts.ANNOUNCE``).
* Each node subscribes only to channels with local subscribers (``pubsub.py``; ``sharded.py``
  on a cluster); what pub/sub loses is read back from the streams (``positions.py``).
* Presence entries expire unless their node refreshes them (``presence.py``).

Over ~500 lines because it is the whole ``Engine`` protocol; each concern's logic is its module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from clarion.engines.base import (
    UNWRITTEN_TTL,
    EngineSink,
    History,
    Hold,
    PresenceEntry,
    PresenceStats,
    RevocationMark,
)
from clarion.engines.redis import scripts
from clarion.engines.redis.batch import Batcher
from clarion.engines.redis.connect import no_such_database, parse_url, unavailable
from clarion.engines.redis.health import PING_TIMEOUT, HealthCheck
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
from clarion.engines.redis.positions import Positions
from clarion.engines.redis.presence import RedisPresence
from clarion.engines.redis.pubsub import PubSubLink
from clarion.engines.redis.reads import SharedReads, stands
from clarion.engines.redis.sharded import ShardedLink
from clarion.errors import ConfigError, EngineUnavailable
from clarion.protocol.channels import namespace_of
from clarion.protocol.numbers import ascii_int
from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import NamespaceOptions, Settings
from clarion.tasks import stop

if TYPE_CHECKING:
    from clarion.engines.redis.nodes import RedisNodes
    from clarion.webhooks.outbox import Outbox

log = logging.getLogger("clarion.engines.redis")

START_TIMEOUT = 5.0  # seconds to reach Redis at start
SUBSCRIBE_TIMEOUT = 5.0  # seconds for Redis to confirm a subscription
MIN_REDIS = (7, 0)  # XTRIM MINID, ZADD GT (6.2); script flags, so maxmemory holds (7.0)
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
        self._durable = self.target.wait_replicas > 0
        # Per channel, the last confirmed publication whose announcement failed (wait_replicas).
        self._unannounced: dict[str, tuple[str, list[Any]]] = {}
        self.node_id = os.urandom(8).hex()
        self.check_interval = self.target.check_interval
        self.presence_ttl = self.target.presence_ttl
        self._client: Any = None
        self._sink: EngineSink | None = None
        self._link: PubSubLink | ShardedLink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False  # from close() on, no task starts (see _spawn)
        self._positions = Positions(
            self.keys,
            self.history,
            self._options,
            self._deliver_recovered,
            self.settings.limits.max_history_batch,
            announced=self._durable,
        )
        self._presence: RedisPresence | None = None
        self._recent: dict[tuple[str, str, int], Publication] = {}  # see RECENT
        self._failing: str | None = None  # what last failed, to log an outage once
        self._health: HealthCheck | None = None
        self.limits: ClusterLimits | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, sink: EngineSink) -> None:
        self._sink = sink
        self._closing = False
        client = self._client = self.target.client()
        self._publish = client.register_script(scripts.PUBLISH)
        self._announce = client.register_script(scripts.ANNOUNCE)
        self._history = client.register_script(scripts.HISTORY)
        self._revoke = client.register_script(scripts.REVOKE)
        self._revocations = client.register_script(scripts.REVOCATIONS_SINCE)
        # Per-session commands (history, presence, shared counts) issued in one loop
        # iteration share one pipeline: a burst of sessions costs round trips per iteration.
        cluster = self.target.cluster
        limit = self.target.pool_size if cluster else None  # else the pool itself blocks
        self._batch = Batcher(
            client,
            limit,
            self.target.pool_timeout,
            self.target.wait_replicas,
            self.target.wait_timeout,
        )
        self._reads = SharedReads(self._batch, self._history, self._history_keys, self._decoded)
        self._health = HealthCheck(client, cluster=bool(self.target.cluster))
        self._positions.batch = self._batch
        self.limits = ClusterLimits(
            client, self.keys, _ms(self.presence_ttl), self._batch, self.node_id
        )
        presence = RedisPresence(client, self.keys, _ms(self.presence_ttl), self._batch)
        self._presence = presence
        where = self.target.description
        try:
            async with asyncio.timeout(START_TIMEOUT):
                info = await client.info("server")
            version = tuple(int(p) for p in str(info["redis_version"]).split(".")[:2])
            if version < MIN_REDIS:
                raise ConfigError(
                    f"Redis at {where} is version {info['redis_version']}; clarion needs "
                    f"{MIN_REDIS[0]}.{MIN_REDIS[1]} or later"
                )
            for script in (
                self._publish,
                *([self._announce] if self._durable else []),
                self._history,
                *presence.scripts,
                self._revoke,
                self._revocations,
            ):
                await client.script_load(script.script)
        except (RedisError, OSError, TimeoutError) as exc:
            wrong = await no_such_database(exc, client, where)
            await self._close_client()
            if wrong is not None:
                raise wrong from None
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
        # Added to, not replacing: on a restart, the link coming up may have started a resync.
        self._tasks += [
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
        # The link may reconnect until it is closed below, and a reconnect starts a resync:
        # refused from now on, else it would run on after close() returned.
        self._closing = True
        tasks, self._tasks = self._tasks, []
        await stop(tasks)
        if self.limits is not None:
            await self.limits.close()
        if self._link is not None:
            await self._link.close()
            self._link = None
        if self._client is not None:
            await self._batch.close(PING_TIMEOUT)
        # Leave presence now rather than after the TTL; best effort. asyncio.timeout, not
        # wait_for: on Python 3.11 wait_for may lose a cancel of close() itself (see clarion.tasks).
        if self._presence is not None and self._client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(PING_TIMEOUT):
                    await self._presence.leave_all()
        if self._health is not None:
            await self._health.close()
        await self._close_client()

    async def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

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
        confirmed = None
        if self._durable:
            # Announced on pub/sub only once WAIT has counted the replicas that hold it: a
            # primary about to be replaced must not show subscribers what it will lose.
            confirmed = self._announcer(channel, pubsub_channel, body)
            pubsub_channel = ""
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
                    "1" if self._durable else "0",
                ],
                # With wait_replicas, answered once that many replicas have the write.
                durable=self._durable,
                confirmed=confirmed,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"publishing to {channel!r}") from None
        if duplicate:
            pub = publication_from_body(channel, offset, epoch.decode(), time, earlier)
            pub.repeated = True
            return pub
        return Publication(
            channel, offset, epoch.decode(), data, time, info, idempotency_key, attrs
        )

    def _announcer(self, channel: str, pubsub_channel: str, body: bytes) -> Callable[[Any], None]:
        """What announces a publication once WAIT has confirmed it."""

        def confirmed(result: Any) -> None:
            offset, epoch, time, duplicate, earlier = result
            # Each carries its body: a history shorter than a burst may have dropped it from
            # the stream already.
            self._announce_up_to(
                channel, pubsub_channel, [epoch, offset, time, earlier if duplicate else body]
            )

        return confirmed

    def _announce_up_to(self, channel: str, pubsub_channel: str, item: list[Any]) -> None:
        # The publications of one channel confirmed meanwhile are one script call
        # (Batcher.join), which announces up to the highest of them.
        announced = self._batch.join(
            ("announce", channel),
            self._announce,
            keys=[self.keys.stream(channel), self.keys.meta(channel)],
            args=[pubsub_channel, self._publish_command],
            item_keys=[],
            item_args=item,
        )

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                return
            exc = future.exception()
            if exc is not None:
                # Tried again at the next position check; the next announcement on the
                # channel covers it too.
                self._unannounced[channel] = (pubsub_channel, item)
                self._outage("announcing a publication", exc)

        announced.add_done_callback(done)

    def _announce_again(self) -> None:
        again, self._unannounced = self._unannounced, {}
        for channel, (pubsub_channel, item) in again.items():
            self._announce_up_to(channel, pubsub_channel, item)

    async def publish_ephemeral(self, pub: Publication) -> None:
        # Pub/sub only: no stream entry, no offset; batched with the iteration's other calls.
        try:
            await self._batch.command(
                self._publish_command, self.keys.pubsub(pub.channel), encode_signal(pub)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"publishing to {pub.channel!r}") from None

    async def history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        trusted: bool = False,
    ) -> History:
        """``trusted``: ``since`` is a position this node saw (its position checks), so that a
        stored top below it shows lost writes; a client's cursor never changes the channel."""
        args = [
            since.epoch if since is not None else "",
            since.offset if since is not None else 0,
            -1 if limit is None else limit,
            new_epoch(),
            # A meta this read creates is of a channel never published to: short-lived.
            _ms(UNWRITTEN_TTL),
            _ms(options.history_ttl),
            options.history_size,
            1 if reverse else 0,
            # With wait_replicas: no further than the announced top (scripts.HISTORY).
            1 if self._durable else 0,
            1 if trusted else 0,
        ]
        try:
            # A resume (everything after a cursor) or a position read shares its channel's
            # queued read (reads.py).
            resume = since is not None and limit is None
            if not reverse and not trusted and (resume or (since is None and limit == 0)):
                return await self._reads.read(channel, args, since)
            keys = self._history_keys(channel)
            epoch_b, top, earliest, entries = await self._batch.script(self._history, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"reading the history of {channel!r}") from None
        epoch = epoch_b.decode()
        pubs = [self._decoded(channel, epoch, entry) for entry in entries]
        return History(pubs, StreamPosition(epoch, int(top)), int(earliest))

    async def standing(self, positions: Mapping[str, StreamPosition]) -> set[str]:
        """One ``HMGET`` of each channel's meta, all in the same pipeline (reads.stands): a
        wide poll with nothing new costs a command per channel, not a history script."""
        fields = ("e", "s", "a") if self._durable else ("e", "s")
        calls = {
            channel: self._batch.queue(None, [], ["HMGET", self.keys.meta(channel), *fields])
            for channel in positions
        }
        rows = await asyncio.gather(*(c.future for c in calls.values()), return_exceptions=True)
        # A failed look leaves its channel to the full read, which raises as any read does.
        return {
            channel
            for (channel, since), row in zip(positions.items(), rows, strict=True)
            if not isinstance(row, BaseException) and stands(row, since, self._durable)
        }

    def _history_keys(self, channel: str) -> list[str]:
        return [self.keys.stream(channel), self.keys.meta(channel)]

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

    async def subscribe(self, channel: str) -> StreamPosition | None:
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
            self._positions.forget(channel)
            await asyncio.shield(link.unsubscribe(channel))
            raise
        self._positions.note(history.position, channel)
        return history.position

    async def unsubscribe(self, channel: str) -> None:
        self._positions.forget(channel)
        if self._link is not None:
            await self._link.unsubscribe(channel)

    def _require_link(self) -> PubSubLink | ShardedLink:
        if self._link is None:
            raise EngineUnavailable("the redis engine is not started")
        return self._link

    def _options(self, channel: str) -> NamespaceOptions:
        return self.settings.namespace(namespace_of(channel))

    def _deliver_recovered(self, pub: Publication) -> bool:
        if self._sink is None:
            return False
        self._sink.on_publication(pub)
        return True

    @property
    def recovered(self) -> int:
        """Publications read back from streams after pub/sub lost them."""
        return self._positions.recovered

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
                self._positions.note(pub.position, channel, baseline=False)
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
        if self._positions.seen:
            self._spawn(self._resync_after_reconnect(), "clarion-redis-resync")

    async def _resync_after_reconnect(self) -> None:
        try:
            await self._positions.resync(list(self._positions.seen))
        except (RedisError, OSError, TimeoutError, EngineUnavailable) as exc:
            # The periodic check retries within one interval.
            self._outage("resync after reconnect", exc)
        except Exception:
            log.exception("resync after reconnect failed")

    def _spawn(self, coro: Any, name: str) -> None:
        if self._closing:
            coro.close()  # never started: nothing is left for close() to stop
            return
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
                if self._unannounced:
                    self._announce_again()
                if self._link is not None and self._link.up:
                    await self._positions.resync(list(self._positions.seen))
                    self._recovered_from_outage()  # only a check that ran says so
                    if self.limits is not None:
                        # Connections closed while Redis was away stop counting now, not
                        # at the next refresh: until then they could refuse others (4503).
                        await self.limits.release_failed()
            except (RedisError, OSError, TimeoutError, EngineUnavailable) as exc:
                self._outage("position check", exc)
            except Exception:
                log.exception("position check failed")

    # ---- presence (presence.py) -------------------------------------------------------------

    def _require_presence(self) -> RedisPresence:
        if self._presence is None:
            raise EngineUnavailable("the redis engine is not started")
        return self._presence

    async def presence_add(self, channel: str, entry: PresenceEntry) -> None:
        await self._require_presence().add(channel, entry)

    async def presence_remove(self, channel: str, client: str) -> None:
        await self._require_presence().remove(channel, client)

    async def presence_announce(self, channel: str, user: str) -> bool:
        return await self._require_presence().announce(channel, user)

    async def presence_retire(self, channel: str, user: str) -> bool:
        return await self._require_presence().retire(channel, user)

    async def presence_stats(self, channel: str) -> PresenceStats:
        return await self._require_presence().stats(channel)

    async def presence(self, channel: str, limit: int | None = None) -> list[PresenceEntry]:
        return await self._require_presence().entries(channel, limit)

    async def presence_hold(
        self, channel: str, entry: PresenceEntry, lease: float, *, create: bool
    ) -> Hold:
        return await self._require_presence().hold(channel, entry, lease, create=create)

    async def presence_release(self, channel: str, entry: PresenceEntry) -> PresenceEntry | None:
        return await self._require_presence().release(channel, entry)

    async def presence_orphaned(self) -> list[tuple[str, list[PresenceEntry]]]:
        return await self._require_presence().orphaned()

    node_leases = True  # see presence.py

    @property
    def lapse_interval(self) -> float:
        """Seconds between looks for ended leases: as often as the refreshes that prevent them."""
        return self.presence_ttl / 3

    async def presence_lapsed(self, channel: str) -> list[PresenceEntry]:
        return await self._require_presence().lapsed(channel)

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
        if self._presence is not None:
            restored = await self._presence.refresh()
            sink = self._sink
            if restored and sink is not None:
                # Their leave may have been sent (their lease ended while this node could not
                # renew it, and another node took them out): their join again.
                for channel, client in restored:
                    sink.on_presence_restored(channel, client)
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
        # Batched with the iteration's other calls: a burst of joins shares pipelines.
        try:
            await self._batch.command(
                self._publish_command, self.keys.pubsub(channel), encode_event(kind, event)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"sending a {kind} event on {channel!r}") from None

    async def broadcast_control(self, command: str, payload: dict[str, Any]) -> None:
        # Applied here directly, so that this node acts even while its pub/sub is down.
        if self._sink is not None:
            self._sink.on_control(command, payload)
        message = orjson.dumps({"n": self.node_id, "c": command, "p": payload})
        try:
            await self._client.publish(self.keys.control, message)
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, f"sending {command!r} to other nodes") from None

    # ---- revocations: one sorted set, scored by when each lapses, and its change log ---------

    async def revoke(self, kind: str, key: str, until: float) -> None:
        try:
            args = [f"{kind}:{key}", repr(until), repr(time.time()), secrets.token_hex(6)]
            await self._revoke(keys=self.keys.revocations(), args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, "storing a revocation") from None

    async def revocations(
        self, since: RevocationMark | None = None
    ) -> tuple[RevocationMark, list[tuple[str, str, float]]]:
        name, _, number = (since or "").partition(":")
        try:
            args = [name, str(ascii_int(number, max_digits=20) or 0), repr(time.time())]
            rows = await self._revocations(keys=self.keys.revocations(), args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise unavailable(exc, "reading revocations") from None
        out = []
        for member, until in zip(rows[2::2], rows[3::2], strict=True):
            kind, _, key = member.decode().partition(":")
            out.append((kind, key, float(until)))
        return f"{rows[0].decode()}:{int(rows[1])}", out

    async def _ping(self) -> bool:
        return self._health is not None and await self._health.ping()

    def webhook_outbox(self, settings: Settings) -> Outbox:
        """One outbox in Redis shared by every node; each endpoint delivered by one node."""
        from clarion.webhooks.redis_outbox import RedisOutbox

        delivery = settings.webhook_delivery
        return RedisOutbox(
            self,
            max_dead_letters=delivery.max_dead_letters,
            max_dead_letter_bytes=delivery.max_dead_letter_bytes,
        )

    def node_directory(self) -> RedisNodes:
        """Every node of this prefix, each announced with its figures."""
        from clarion.engines.redis.nodes import RedisNodes

        return RedisNodes(self.target, self.keys, self.node_id)

    async def healthy(self) -> bool:
        """Redis answers, and this node's pub/sub connection is up."""
        return self._link is not None and self._link.up and await self._ping()
