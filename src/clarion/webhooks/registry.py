"""The endpoints this node knows, one delivery worker each, and which endpoints want a channel.

Endpoints come from the API, from the config file's ``[[webhooks]]`` entries, and — when the
outbox is shared — from other nodes: :meth:`Registry.refresh` catches up with those.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from clarion.errors import BadRequest, ConfigError, LimitExceeded, NotFound
from clarion.settings import WebhookEndpointConfig
from clarion.webhooks.endpoint import Endpoint, check_channels, check_events, new_endpoint_id
from clarion.webhooks.outbox import Outbox
from clarion.webhooks.signing import generate_secret, secret_key
from clarion.webhooks.targets import (
    AllowList,
    UnsafeTarget,
    check_address,
    check_target,
    parse_target,
    shown,
)
from clarion.webhooks.worker import EndpointWorker, WorkerContext

log = logging.getLogger("clarion.webhooks")

ROUTE_CACHE = 4096  # channels whose matching endpoints are remembered
MAX_ENDPOINTS = 1000

# What an endpoint is, as opposed to how its deliveries are going.
_CONFIG_FIELDS = ("url", "channels", "events", "secret", "source", "disabled_reason")
_STATE_FIELDS = ("last_error", "last_error_at", "last_msg_id", "last_delivered_at")


def same_config(a: Endpoint, b: Endpoint) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in _CONFIG_FIELDS)


async def new_endpoint(
    url: object, channels: object, secret: object, events: object, allow: AllowList
) -> Endpoint:
    """An endpoint made through the API, its input checked (raises :class:`BadRequest`)."""
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
    await check_target(target, allow)
    return Endpoint(
        id=new_endpoint_id(),
        url=target.url,
        channels=patterns,
        secret=secret,
        events=kinds,
        created_at=int(time.time() * 1000),
    )


class Registry:
    """Endpoints by id with their workers; ``on_change`` is called when the set changes."""

    def __init__(
        self, context: WorkerContext, allow: AllowList, on_change: Callable[[], None]
    ) -> None:
        self.context = context
        self.allow = allow
        self.endpoints: dict[str, Endpoint] = {}
        self.workers: dict[str, EndpointWorker] = {}
        self._routes: dict[str, tuple[Endpoint, ...]] = {}
        self._on_change = on_change
        self.lock = asyncio.Lock()  # endpoint changes vs. shared refreshes
        self._seen = -1  # the shared registry's version last read

    @property
    def outbox(self) -> Outbox:
        return self.context.outbox

    async def load(self) -> None:
        self._seen = await self.outbox.registry_version()
        for endpoint in await self.outbox.load_endpoints():
            self.endpoints[endpoint.id] = endpoint
            self.workers[endpoint.id] = EndpointWorker(self.context, endpoint)
        self.changed()

    def changed(self) -> None:
        self._routes.clear()
        self._on_change()

    def wants_events(self) -> bool:
        return any(e.events and not e.disabled for e in self.endpoints.values())

    def targets(self, channel: str) -> tuple[Endpoint, ...]:
        """Enabled endpoints whose patterns match ``channel`` (remembered per channel)."""
        found = self._routes.get(channel)
        if found is None:
            found = tuple(
                e for e in self.endpoints.values() if not e.disabled and e.wants_channel(channel)
            )
            if len(self._routes) >= ROUTE_CACHE:
                self._routes.clear()
            self._routes[channel] = found
        return found

    def wants_leaves(self, channel: str) -> bool:
        """Whether an enabled endpoint takes the ``leave`` events of ``channel``."""
        return any("leave" in e.events for e in self.targets(channel))

    def event_targets(self, kind: str, payload: dict[str, Any]) -> list[Endpoint]:
        return [
            e for e in self.endpoints.values() if not e.disabled and e.wants_event(kind, payload)
        ]

    def wake(self, endpoint_id: str) -> None:
        worker = self.workers.get(endpoint_id)
        if worker is not None:
            worker.wake.set()

    def get(self, endpoint_id: str) -> Endpoint:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            raise NotFound(f"no webhook {endpoint_id!r}")
        return endpoint

    async def stop(self) -> None:
        workers, self.workers = list(self.workers.values()), {}
        # Together: each may wait (bounded) for a task that lost its cancel.
        await asyncio.gather(*(worker.stop() for worker in workers))

    # ---- changes ------------------------------------------------------------------------------

    async def create(self, endpoint: Endpoint) -> None:
        if len(self.endpoints) >= MAX_ENDPOINTS:
            raise LimitExceeded(f"at most {MAX_ENDPOINTS} webhook endpoints")
        await self.add(endpoint)

    async def add(self, endpoint: Endpoint) -> None:
        async with self.lock:
            current = self.endpoints.get(endpoint.id)
            if current is not None and same_config(current, endpoint) and self.outbox.shared:
                # Another node applied the same [[webhooks]] entry: leave its worker alone.
                return
            await self.outbox.save_endpoint(endpoint)
            old = self.workers.pop(endpoint.id, None)
            if old is not None:
                await old.stop()
            self.endpoints[endpoint.id] = endpoint
            self.workers[endpoint.id] = EndpointWorker(self.context, endpoint)
            self.changed()

    async def forget(self, endpoint: Endpoint) -> None:
        async with self.lock:
            self.endpoints.pop(endpoint.id, None)
            self.changed()
            worker = self.workers.pop(endpoint.id, None)
            if worker is not None:
                await worker.stop()
            await self.outbox.delete_endpoint(endpoint.id)
            self.context.counts.forget(endpoint.id)

    async def enable(self, endpoint: Endpoint) -> None:
        if endpoint.disabled:
            endpoint.disabled_reason = None
            await self.outbox.save_endpoint(endpoint)
            self.changed()
            self.wake(endpoint.id)

    async def refresh(self, force: bool = True) -> None:
        """Catch up with a shared outbox: endpoints other nodes added, changed or removed, and
        the queue sizes. Without ``force``, endpoints are read only when the registry changed."""
        outbox = self.outbox
        async with self.lock:
            version = await outbox.registry_version()
            if self.endpoints or version != self._seen:
                await self.context.counts.reload(outbox)
            if not force and version == self._seen:
                return
            # A version that went back: the shared store lost what it held (a Redis restarted
            # without its data). This node's configured endpoints are its file's, not the
            # store's: saved again, secrets and all, rather than dropped without a word.
            lost = 0 <= version < self._seen
            self._seen = version
            loaded = {e.id: e for e in await outbox.load_endpoints()}
            if lost:
                mine = self.endpoints.values()
                restored = [e for e in mine if e.source == "config" and e.id not in loaded]
                for endpoint in restored:
                    await outbox.save_endpoint(endpoint)
                    loaded[endpoint.id] = endpoint
                log.warning(
                    "the shared webhook registry lost its endpoints (Redis restarted without its "
                    "data?): %d configured here saved again; endpoints made through the API and "
                    "pending deliveries are gone",
                    len(restored),
                )
                self._seen = await outbox.registry_version()
            changed = False
            for endpoint_id in [i for i in self.endpoints if i not in loaded]:
                self.endpoints.pop(endpoint_id)
                worker = self.workers.pop(endpoint_id, None)
                if worker is not None:
                    await worker.stop()
                changed = True
            for endpoint in loaded.values():
                current = self.endpoints.get(endpoint.id)
                if current is not None and same_config(current, endpoint):
                    # Delivery state written by whichever node delivers the endpoint.
                    for name in _STATE_FIELDS:
                        setattr(current, name, getattr(endpoint, name))
                    continue
                old = self.workers.pop(endpoint.id, None)
                if old is not None:
                    await old.stop()
                self.endpoints[endpoint.id] = endpoint
                self.workers[endpoint.id] = EndpointWorker(self.context, endpoint)
                changed = True
            if changed:
                self.changed()

    # ---- the config file ------------------------------------------------------------------------

    async def apply_config(self, entries: list[WebhookEndpointConfig]) -> None:
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
                    shown(endpoint.url),
                    self.context.counts.backlog.get(endpoint.id, 0),
                )
                await self.forget(endpoint)
        for endpoint in wanted.values():
            await self.add(endpoint)

    async def _configured(self, entry: WebhookEndpointConfig) -> Endpoint:
        where = f"[[webhooks]] {shown(entry.url)!r}"  # never its user, password or query
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
