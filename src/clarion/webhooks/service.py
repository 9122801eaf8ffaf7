"""The webhook service: endpoints, the outbox, and one delivery worker per endpoint.

How a publication becomes a delivery:

1. The hub calls :meth:`WebhookService.on_publication` with every publication this node makes.
   For each endpoint whose patterns match the channel, a delivery is committed to the outbox
   before the listener returns — so before the publish call returns to its caller.
2. Each endpoint has one worker task that takes the endpoint's oldest pending delivery, sends it
   (holding one of ``concurrency`` slots shared by all endpoints), and only then looks at the
   next: deliveries reach a receiver in the order they were stored, and a failing receiver holds
   back its own queue and nobody else's.
3. A 2xx answer removes the delivery. Anything else is retried on the schedule of
   :mod:`clarion.webhooks.schedule`; when that is spent the delivery moves to the dead letters
   and the worker goes on with the next. ``410 Gone`` disables the endpoint until it is enabled
   again; its queue is kept.

With the Redis engine the outbox is shared (:mod:`clarion.webhooks.redis_outbox`): every node
queues what it publishes into the same per-endpoint queues, every node runs a worker per
endpoint, and only the one holding the endpoint's lease delivers. Endpoints registered on any
node reach the others through :meth:`WebhookService.refresh`: when a change is announced over
pub/sub, every ``SYNC_INTERVAL``, and before each API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from clarion.engines.base import WebhookStorage
from clarion.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    LimitExceeded,
    NotFound,
    ServerError,
)
from clarion.protocol.channels import validate_channel
from clarion.protocol.cursor import Cursor, encode_single
from clarion.protocol.publication import Publication
from clarion.settings import WebhookEndpointConfig
from clarion.webhooks.endpoint import (
    PUBLICATION,
    Delivery,
    Endpoint,
    check_channels,
    check_events,
    new_endpoint_id,
)
from clarion.webhooks.outbox import Outbox, SQLiteOutbox
from clarion.webhooks.schedule import RetrySchedule
from clarion.webhooks.sender import Sender
from clarion.webhooks.signing import (
    event_msg_id,
    generate_secret,
    publication_msg_id,
    secret_key,
)
from clarion.webhooks.targets import (
    AllowList,
    UnsafeTarget,
    check_address,
    check_target,
    parse_target,
)
from clarion.webhooks.worker import EndpointWorker, millis

if TYPE_CHECKING:
    from clarion.core.hub import Hub

log = logging.getLogger("clarion.webhooks")

ROUTE_CACHE = 4096  # channels whose matching endpoints are remembered
MAX_ENDPOINTS = 1000
MAX_POSITIONS = 1000  # channel positions shown per endpoint, latest first
SYNC_INTERVAL = 1.0  # seconds between looks at a shared outbox's endpoint registry


class WebhookService:
    """Webhooks of one hub. Opened by :meth:`start` when there is anything to deliver."""

    def __init__(self, hub: Hub, outbox: Outbox | None = None) -> None:
        self.hub = hub
        settings = hub.settings
        self.config = settings.webhook_delivery
        self.allow = AllowList(settings.webhook_allow_hosts)
        self.schedule = RetrySchedule(
            self.config.retry_base, self.config.retry_cap, self.config.retry_window
        )
        self.endpoints: dict[str, Endpoint] = {}
        self.backlog: dict[str, int] = {}
        self.dead: dict[str, int] = {}
        self._outbox = outbox  # made by the engine at start unless given
        self._opened = False
        self._sender: Sender | None = None
        self._workers: dict[str, EndpointWorker] = {}
        self._routes: dict[str, tuple[Endpoint, ...]] = {}
        self._version = 0
        self._listening_events = False
        self._started = False
        self._opening: asyncio.Lock | None = None
        self._registry: asyncio.Lock | None = None  # endpoint changes vs. shared refreshes
        self._registry_seen = -1
        self._sync: asyncio.Task[None] | None = None
        self._registry_changed = asyncio.Event()
        self.slots = asyncio.Semaphore(self.config.concurrency)

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise ServerError("the webhook outbox is not open")
        return self._outbox

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise ServerError("webhooks are not started")
        return self._sender

    @property
    def is_open(self) -> bool:
        return self._sender is not None

    async def start(self) -> None:
        """Open the outbox now if the config names endpoints or the outbox is in use already.

        Otherwise nothing is opened until the first endpoint is registered: a hub that never
        uses webhooks leaves no file behind.
        """
        self._started = True
        static = self.hub.settings.webhooks
        if self._outbox is None:
            self._outbox = self._make_outbox()
        if static or self._outbox.in_use():
            try:
                await self._open()
                await self._apply_config(static)
            except BaseException:
                await self.close()
                raise

    def _make_outbox(self) -> Outbox:
        engine = self.hub.engine
        if isinstance(engine, WebhookStorage):
            return engine.webhook_outbox(self.hub.settings)
        # An engine that keeps no outbox: each node delivers what it published.
        log.warning(
            "webhooks: the outbox is local to this node (engine %s): each node needs its own "
            "data_dir and delivers what it publishes; configure endpoints in the config file so "
            "that every node has them",
            engine.name,
        )
        return SQLiteOutbox(
            self.hub.settings.data_dir,
            fsync=self.config.fsync,
            max_dead_letters=self.config.max_dead_letters,
        )

    async def _open(self) -> None:
        if self._sender is not None:
            return
        outbox = self.outbox
        await outbox.open()
        self._opened = True
        outbox.on_written = self._written
        outbox.on_registry_changed = self._registry_changed.set
        self.endpoints = {e.id: e for e in await outbox.load_endpoints()}
        self.backlog = await outbox.backlog()
        self.dead = await outbox.dead_count()
        self._version = await outbox.event_version()
        self._registry_seen = await outbox.registry_version()
        self._sender = Sender(
            self.allow,
            timeout=self.config.timeout,
            max_response_bytes=self.config.max_response_bytes,
            max_connections=self.config.concurrency,
        )
        self.hub.publish_listeners.append(self.on_publication)
        for endpoint in self.endpoints.values():
            self._workers[endpoint.id] = EndpointWorker(self, endpoint)
        self.endpoints_changed()
        if outbox.shared:
            self._sync = asyncio.create_task(self._sync_forever(), name="clarion-webhook-sync")
        pending = sum(self.backlog.values())
        log.info("webhooks: %d endpoints, %d deliveries pending", len(self.endpoints), pending)

    async def _ensure_open(self) -> None:
        if not self._started:
            raise ServerError("the hub is not started")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            await self._open()

    async def close(self) -> None:
        """Stop the workers; whatever is pending stays in the outbox for the next start."""
        self._started = False
        with contextlib.suppress(ValueError):
            self.hub.publish_listeners.remove(self.on_publication)
        self._listen_events(False)
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
            self._sync = None
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await worker.stop()
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None
        if self._outbox is not None and self._opened:
            await self._outbox.aclose()
        self._outbox = None
        self._opened = False

    @property
    def registry_lock(self) -> asyncio.Lock:
        if self._registry is None:
            self._registry = asyncio.Lock()
        return self._registry

    async def _sync_forever(self) -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._registry_changed.wait(), SYNC_INTERVAL)
            self._registry_changed.clear()
            try:
                await self.refresh(force=False)
            except Exception as exc:
                if not failing:  # once per outage, not every second
                    log.warning("webhooks: reading the shared endpoint registry failed: %s", exc)
                failing = True
            else:
                failing = False

    async def refresh(self, force: bool = True) -> None:
        """Catch up with a shared outbox: endpoints other nodes added, changed or removed, and
        the queue sizes. Without ``force``, endpoints are read only when the registry changed."""
        if not self.is_open or not self.outbox.shared:
            return
        outbox = self.outbox
        async with self.registry_lock:
            version = await outbox.registry_version()
            if self.endpoints or version != self._registry_seen:
                self.backlog = await outbox.backlog()
                self.dead = await outbox.dead_count()
            if not force and version == self._registry_seen:
                return
            self._registry_seen = version
            loaded = {e.id: e for e in await outbox.load_endpoints()}
            changed = False
            for endpoint_id in [i for i in self.endpoints if i not in loaded]:
                self.endpoints.pop(endpoint_id)
                worker = self._workers.pop(endpoint_id, None)
                if worker is not None:
                    await worker.stop()
                changed = True
            for endpoint in loaded.values():
                current = self.endpoints.get(endpoint.id)
                if current is not None and _same_config(current, endpoint):
                    # Delivery state written by whichever node delivers the endpoint.
                    for name in _STATE_FIELDS:
                        setattr(current, name, getattr(endpoint, name))
                    continue
                old = self._workers.pop(endpoint.id, None)
                if old is not None:
                    await old.stop()
                self.endpoints[endpoint.id] = endpoint
                self._workers[endpoint.id] = EndpointWorker(self, endpoint)
                changed = True
            if changed:
                self.endpoints_changed()

    def _written(self, endpoint_ids: set[str]) -> None:
        """A shared outbox stored new deliveries for these endpoints: wake their workers."""
        for endpoint_id in endpoint_ids:
            worker = self._workers.get(endpoint_id)
            if worker is not None:
                worker.wake.set()

    async def _apply_config(self, entries: list[WebhookEndpointConfig]) -> None:
        """Make the config's ``[[webhooks]]`` the set of configured endpoints."""
        wanted: dict[str, Endpoint] = {}
        for entry in entries:
            endpoint = await self._configured(entry)
            if endpoint.id in wanted:
                raise ConfigError(
                    f"two [[webhooks]] entries have the id {endpoint.id}; give them distinct ids"
                )
            wanted[endpoint.id] = endpoint
        for endpoint in list(self.endpoints.values()):
            if endpoint.source == "config" and endpoint.id not in wanted:
                log.warning(
                    "webhook %s (%s) is no longer configured: dropping it and %d pending "
                    "deliveries",
                    endpoint.id,
                    endpoint.url,
                    self.backlog.get(endpoint.id, 0),
                )
                await self._forget(endpoint)
        for endpoint in wanted.values():
            await self._add(endpoint)

    async def _configured(self, entry: WebhookEndpointConfig) -> Endpoint:
        where = f"[[webhooks]] {entry.url!r}"
        try:
            target = parse_target(entry.url)
            channels = check_channels(entry.channels)
            events = check_events(entry.events)
            if entry.secret is not None:
                secret_key(entry.secret)
        except BadRequest as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        if target.address is not None:
            try:
                check_address(target.host, target.address, self.allow)
            except UnsafeTarget as exc:
                raise ConfigError(f"{where}: {exc.message}") from None
        else:
            try:
                await check_target(target, self.allow)
            except UnsafeTarget as exc:
                # A name that does not resolve now may later; every connection is checked.
                log.warning("%s: %s", where, exc.message)
        endpoint_id = entry.id or "wh_" + hashlib.sha256(target.url.encode()).hexdigest()[:16]
        existing = self.endpoints.get(endpoint_id)
        if existing is not None and existing.source != "config":
            raise ConfigError(f"{where}: id {endpoint_id} belongs to an endpoint made via the API")
        secret = entry.secret or (existing.secret if existing else None) or generate_secret()
        endpoint = Endpoint(
            id=endpoint_id,
            url=target.url,
            channels=channels,
            secret=secret,
            events=events,
            source="config",
            created_at=existing.created_at if existing else int(time.time() * 1000),
        )
        if existing is not None:
            for name in ("disabled_reason", "last_error", "last_error_at"):
                setattr(endpoint, name, getattr(existing, name))
            endpoint.last_msg_id = existing.last_msg_id
            endpoint.last_delivered_at = existing.last_delivered_at
        return endpoint

    # ---- endpoints ----------------------------------------------------------------------------

    async def create(
        self, url: object, channels: object, secret: object = None, events: object = None
    ) -> Endpoint:
        target = parse_target(url)
        patterns = check_channels(channels)
        kinds = check_events(events)
        if not patterns and not kinds:
            raise BadRequest("give 'channels' (patterns) or 'events', or both")
        if secret is None:
            secret = generate_secret()
        elif not isinstance(secret, str):
            raise BadRequest("'secret' must be a string")
        secret_key(secret)
        await check_target(target, self.allow)
        await self._ensure_open()
        if len(self.endpoints) >= MAX_ENDPOINTS:
            raise LimitExceeded(f"at most {MAX_ENDPOINTS} webhook endpoints")
        endpoint = Endpoint(
            id=new_endpoint_id(),
            url=target.url,
            channels=patterns,
            secret=secret,
            events=kinds,
            created_at=int(time.time() * 1000),
        )
        await self._add(endpoint)
        log.info("webhook %s registered for %s", endpoint.id, endpoint.url)
        return endpoint

    async def _add(self, endpoint: Endpoint) -> None:
        async with self.registry_lock:
            current = self.endpoints.get(endpoint.id)
            if current is not None and _same_config(current, endpoint) and self.outbox.shared:
                # Another node applied the same [[webhooks]] entry: leave its worker alone.
                return
            await self.outbox.save_endpoint(endpoint)
            old = self._workers.pop(endpoint.id, None)
            if old is not None:
                await old.stop()
            self.endpoints[endpoint.id] = endpoint
            self._workers[endpoint.id] = EndpointWorker(self, endpoint)
            self.endpoints_changed()

    def get(self, endpoint_id: str) -> Endpoint:
        endpoint = self.endpoints.get(endpoint_id) if self.is_open else None
        if endpoint is None:
            raise NotFound(f"no webhook {endpoint_id!r}")
        return endpoint

    async def remove(self, endpoint_id: str) -> None:
        endpoint = self.get(endpoint_id)
        if endpoint.source == "config":
            raise Forbidden(
                f"webhook {endpoint_id} is configured in the config file; remove it there",
                code="configured_webhook",
            )
        await self._forget(endpoint)
        log.info("webhook %s removed", endpoint_id)

    async def _forget(self, endpoint: Endpoint) -> None:
        async with self.registry_lock:
            self.endpoints.pop(endpoint.id, None)
            self.endpoints_changed()
            worker = self._workers.pop(endpoint.id, None)
            if worker is not None:
                await worker.stop()
            await self.outbox.delete_endpoint(endpoint.id)
            self.backlog.pop(endpoint.id, None)
            self.dead.pop(endpoint.id, None)

    async def enable(self, endpoint_id: str) -> Endpoint:
        endpoint = self.get(endpoint_id)
        if endpoint.disabled:
            endpoint.disabled_reason = None
            await self.outbox.save_endpoint(endpoint)
            self.endpoints_changed()
            self._workers[endpoint.id].wake.set()
        return endpoint

    def endpoints_changed(self) -> None:
        self._routes.clear()
        self._listen_events(
            self.is_open and any(e.events and not e.disabled for e in self.endpoints.values())
        )

    def _listen_events(self, on: bool) -> None:
        # Registered only while someone wants events: the hub skips building them otherwise.
        listeners = self.hub.lifecycle_listeners
        if on and not self._listening_events:
            listeners.append(self.on_lifecycle)
        elif not on and self._listening_events:
            with contextlib.suppress(ValueError):
                listeners.remove(self.on_lifecycle)
        self._listening_events = on

    # ---- enqueueing -------------------------------------------------------------------------

    def _targets(self, channel: str) -> tuple[Endpoint, ...]:
        found = self._routes.get(channel)
        if found is None:
            found = tuple(
                e for e in self.endpoints.values() if not e.disabled and e.wants_channel(channel)
            )
            if len(self._routes) >= ROUTE_CACHE:
                self._routes.clear()
            self._routes[channel] = found
        return found

    def on_publication(self, pub: Publication) -> None:
        """The hub's publish listener: store a delivery for every matching endpoint."""
        targets = self._targets(pub.channel)
        if targets:
            self.store(self.publication_deliveries(pub, targets))

    def publication_deliveries(
        self, pub: Publication, targets: tuple[Endpoint, ...] | list[Endpoint]
    ) -> list[Delivery]:
        body = pub.json()
        now = time.time()
        return [
            Delivery(
                endpoint=e.id,
                msg_id=publication_msg_id(e.id, pub.channel, pub.epoch, pub.offset),
                kind=PUBLICATION,
                body=body,
                channel=pub.channel,
                epoch=pub.epoch,
                offset=pub.offset,
                created_at=now,
            )
            for e in targets
        ]

    def on_lifecycle(self, kind: str, payload: dict[str, Any]) -> None:
        """The hub's lifecycle listener: events go out like publications, with a version."""
        targets = [
            e for e in self.endpoints.values() if not e.disabled and e.wants_event(kind, payload)
        ]
        if not targets:
            return
        self._version += 1
        version = self._version
        now = time.time()
        body = orjson.dumps(
            {"type": kind, "version": version, "time": int(now * 1000), "data": payload}
        )
        channel = payload.get("channel")
        deliveries = [
            Delivery(
                endpoint=e.id,
                msg_id=event_msg_id(e.id, version),
                kind=kind,
                body=body,
                channel=channel if isinstance(channel, str) else None,
                created_at=now,
            )
            for e in targets
        ]
        self.store(deliveries, event_version=version)

    def store(self, deliveries: list[Delivery], event_version: int | None = None) -> int:
        """Commit deliveries to the outbox and wake their workers; returns how many are new."""
        config = self.config
        for d in deliveries:
            reason = None
            if len(d.body) > config.max_body_bytes:
                reason = f"payload over max_body_bytes ({config.max_body_bytes})"
            elif self.backlog.get(d.endpoint, 0) >= config.max_backlog:
                reason = f"backlog full (max_backlog {config.max_backlog})"
            if reason is not None:
                d.dead_at, d.last_error = d.created_at, reason
                log.warning("webhook %s: %s dead-lettered: %s", d.endpoint, d.msg_id, reason)
        try:
            stored = self.outbox.enqueue(deliveries, event_version)
        except Exception:
            # Nothing can be raised to the publisher from a listener; say loudly what is lost.
            log.exception("webhook outbox write failed: %d deliveries lost", len(deliveries))
            return 0
        for d in stored:
            if d.dead_at is not None:
                self.count_dead(d.endpoint)
                continue
            self.count_backlog(d.endpoint, 1)
            worker = self._workers.get(d.endpoint)
            if worker is not None:
                worker.wake.set()
        return len(stored)

    def count_backlog(self, endpoint_id: str, delta: int) -> None:
        self.backlog[endpoint_id] = max(0, self.backlog.get(endpoint_id, 0) + delta)

    def count_dead(self, endpoint_id: str) -> None:
        # The outbox keeps at most max_dead_letters, dropping the oldest: count the same way.
        held = self.dead.get(endpoint_id, 0) + 1
        self.dead[endpoint_id] = min(held, self.config.max_dead_letters)

    # ---- replay and dead letters ------------------------------------------------------------

    async def replay(
        self, endpoint_id: str, since: object, channels: object = None
    ) -> dict[str, Any]:
        """Enqueue again what history holds after the cursor ``since``, channel by channel.

        The channels are those named, or else the endpoint's exact patterns and the channels it
        has had deliveries on — whichever the cursor holds a position for.
        """
        endpoint = self.get(endpoint_id)
        cursor = Cursor.decode(since)
        if channels is not None:
            if not isinstance(channels, list) or not channels:
                raise BadRequest("'channels' must be a non-empty list of channel names")
            names = [validate_channel(c) for c in channels]
            for name in names:
                if not endpoint.wants_channel(name):
                    raise BadRequest(f"webhook {endpoint_id} does not deliver channel {name!r}")
                if cursor.get(name) is None:
                    raise BadRequest(f"the cursor holds no position for channel {name!r}")
        else:
            known = [p for p in endpoint.channels if "*" not in p]
            known += [
                channel for channel, _, _ in await self.outbox.positions(endpoint_id, MAX_POSITIONS)
            ]
            names = [c for c in dict.fromkeys(known) if cursor.get(c) is not None]
            if not names:
                raise BadRequest(
                    "the cursor holds no position for a channel this webhook delivers; "
                    "name the channels in 'channels'"
                )
        try:
            return await self._replay(names, cursor, endpoint)
        finally:
            # Answer once the deliveries are stored, as for a publish on the SQLite outbox.
            await self.outbox.flush()

    async def _replay(self, names: list[str], cursor: Cursor, endpoint: Endpoint) -> dict[str, Any]:
        enqueued = 0
        resets: list[dict[str, str]] = []
        for name in names:
            position = cursor.get(name)
            while True:
                history, reason = await self.hub.history(name, since=position)
                if reason is not None and not any(r["channel"] == name for r in resets):
                    resets.append({"channel": name, "reason": reason})
                if not history.publications:
                    break
                enqueued += self.store(
                    [
                        d
                        for pub in history.publications
                        for d in self.publication_deliveries(pub, [endpoint])
                    ]
                )
                position = history.publications[-1].position
                if position.offset >= history.position.offset:
                    break
        return {"enqueued": enqueued, "channels": names, "resets": resets}

    async def dead_letters(self, endpoint_id: str, after: int, limit: int) -> list[Delivery]:
        self.get(endpoint_id)
        return await self.outbox.dead_letters(endpoint_id, after, limit)

    async def revive(self, endpoint_id: str, ids: object = None) -> int:
        """Move dead letters back to the end of the endpoint's queue."""
        endpoint = self.get(endpoint_id)
        if ids is not None and (
            not isinstance(ids, list)
            or not all(isinstance(i, str) for i in ids)
            or not 0 < len(ids) <= 1000
        ):
            raise BadRequest("'ids' must be a list of 1 to 1000 message ids")
        revived = await self.outbox.revive(endpoint_id, ids)
        self.dead = await self.outbox.dead_count()
        self.count_backlog(endpoint_id, revived)
        self._workers[endpoint.id].wake.set()
        return revived

    # ---- state --------------------------------------------------------------------------------

    async def describe(self, endpoint: Endpoint, detail: bool = False) -> dict[str, Any]:
        out = endpoint.describe()
        worker = self._workers.get(endpoint.id)
        head = worker.head if worker is not None else None
        out["backlog"] = self.backlog.get(endpoint.id, 0)
        out["dead_letters"] = self.dead.get(endpoint.id, 0)
        out["in_flight"] = bool(worker and worker.in_flight)
        out["attempts"] = head.attempts if head is not None else 0
        out["next_attempt_at"] = (
            None
            if head is None or endpoint.disabled or out["backlog"] == 0
            else max(millis(head.next_attempt) or 0, millis(time.time()) or 0)
        )
        if detail:
            out["secret"] = endpoint.secret
            out["positions"] = {
                channel: {
                    "epoch": epoch,
                    "offset": offset,
                    "cursor": encode_single(channel, epoch, offset),
                }
                for channel, epoch, offset in await self.outbox.positions(
                    endpoint.id, MAX_POSITIONS
                )
            }
        return out

    async def describe_all(self) -> list[dict[str, Any]]:
        if not self.is_open:
            return []
        await self.refresh()
        return [await self.describe(e) for e in self.endpoints.values()]


# What an endpoint is, as opposed to how its deliveries are going.
_CONFIG_FIELDS = ("url", "channels", "events", "secret", "source", "disabled_reason")
_STATE_FIELDS = ("last_error", "last_error_at", "last_msg_id", "last_delivered_at")


def _same_config(a: Endpoint, b: Endpoint) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in _CONFIG_FIELDS)
