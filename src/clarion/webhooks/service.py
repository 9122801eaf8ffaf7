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

The parts: :mod:`~clarion.webhooks.registry` (endpoints and their workers),
:mod:`~clarion.webhooks.intake` (listeners → outbox), :mod:`~clarion.webhooks.worker`
(delivery), :mod:`~clarion.webhooks.replay` and :mod:`~clarion.webhooks.describe`; the outbox
is the engine's (:meth:`clarion.engines.base.WebhookStorage.webhook_outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clarion.engines.base import WebhookStorage
from clarion.errors import Forbidden, NotFound, ServerError
from clarion.protocol.errors import ErrorCode
from clarion.tasks import stop
from clarion.webhooks.counts import QueueCounts
from clarion.webhooks.describe import describe
from clarion.webhooks.endpoint import Delivery, Endpoint
from clarion.webhooks.intake import Intake
from clarion.webhooks.metrics import AttemptStats, WebhookCollector
from clarion.webhooks.outbox import Outbox
from clarion.webhooks.registry import Registry, new_endpoint
from clarion.webhooks.replay import replay, revive
from clarion.webhooks.schedule import RetrySchedule
from clarion.webhooks.slots import Slots
from clarion.webhooks.sqlite_outbox import SQLiteOutbox
from clarion.webhooks.targets import AllowList, shown
from clarion.webhooks.worker import WorkerContext

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from clarion.core.hub import Hub
    from clarion.webhooks.sender import Sender

log = logging.getLogger("clarion.webhooks")

SYNC_INTERVAL = 1.0  # seconds between looks at a shared outbox's endpoint registry


class WebhookService:
    """Webhooks of one hub, one of its extensions (:mod:`clarion.core.extension`). Opened by
    :meth:`start` when there is anything to deliver."""

    def __init__(self, hub: Hub, outbox: Outbox | None = None) -> None:
        self.hub = hub
        settings = hub.settings
        self.config = settings.webhook_delivery
        self.allow = AllowList(settings.webhook_allow_hosts)
        self.schedule = RetrySchedule(
            self.config.retry_base, self.config.retry_cap, self.config.retry_window
        )
        self.counts = QueueCounts()
        self.attempt_stats = AttemptStats()
        self.slots = Slots(self.config.concurrency)
        self._outbox = outbox  # made by the engine at start unless given
        self._opened = False
        self._registry: Registry | None = None
        self._intake: Intake | None = None
        self._sender: Sender | None = None
        self._events_listener: Callable[[str, dict[str, Any]], None] | None = None
        self._leaves_wanted: Callable[[str], bool] | None = None
        self._started = False
        self._opening: asyncio.Lock | None = None
        self._sync: asyncio.Task[None] | None = None
        self._registry_changed = asyncio.Event()
        hub.metrics_registry.register(WebhookCollector(lambda: self))

    def routes(self) -> list[BaseRoute]:
        """``/api/webhooks…``: the ASGI app mounts them (see :mod:`clarion.webhooks.api`)."""
        from clarion.webhooks.api import webhook_routes

        return webhook_routes(self.hub, self)

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise ServerError("the webhook outbox is not open")
        return self._outbox

    @property
    def is_open(self) -> bool:
        return self._registry is not None

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return self._registry.endpoints if self._registry is not None else {}

    @property
    def backlog(self) -> dict[str, int]:
        return self.counts.backlog

    @property
    def dead(self) -> dict[str, int]:
        return self.counts.dead

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
                registry = await self._open()
                await registry.apply_config(static)
            except BaseException:
                await self.close()
                raise
            # After the config's endpoints are in: what this node starts with.
            endpoints, pending = len(self.endpoints), sum(self.counts.backlog.values())
            log.info(
                "webhooks: %d endpoint%s, %d deliver%s pending",
                *(endpoints, "" if endpoints == 1 else "s"),
                *(pending, "y" if pending == 1 else "ies"),
            )

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
            max_dead_letter_bytes=self.config.max_dead_letter_bytes,
        )

    async def _open(self) -> Registry:
        if self._registry is not None:
            return self._registry
        outbox = self.outbox
        await outbox.open()
        self._opened = True
        outbox.on_written = self._written
        outbox.on_registry_changed = self._registry_changed.set
        outbox.on_dead_counted = self.counts.dead_counted
        await self.counts.reload(outbox)
        # Imported on opening, with the HTTP client it sends with: a hub that never uses
        # webhooks does not load httpx.
        from clarion.webhooks.sender import Sender

        self._sender = Sender(
            self.allow,
            timeout=self.config.timeout,
            max_response_bytes=self.config.max_response_bytes,
            max_connections=self.config.concurrency,
            stats=self.attempt_stats,
        )
        context = WorkerContext(
            outbox, self._sender, self.slots, self.schedule, self.counts, self._disabled
        )
        registry = Registry(context, self.allow, self._endpoints_changed)
        intake = Intake(outbox, registry, self.counts, self.config, await outbox.event_version())
        self._registry, self._intake = registry, intake
        await registry.load()
        self.hub.publish_listeners.append(intake.on_publication)
        if outbox.shared:
            self._sync = asyncio.create_task(self._sync_forever(), name="clarion-webhook-sync")
        return registry

    async def _ensure_open(self) -> Registry:
        if not self._started:
            raise ServerError("the hub is not started")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            return await self._open()

    async def close(self) -> None:
        """Stop the workers; whatever is pending stays in the outbox for the next start."""
        self._started = False
        self._listen_events(False)
        if self._intake is not None:
            with contextlib.suppress(ValueError):
                self.hub.publish_listeners.remove(self._intake.on_publication)
        if self._sync is not None:
            # Bounded, re-cancelling: a refresh reads the shared outbox through redis-py, which
            # may lose a cancel (see clarion.tasks).
            await stop([self._sync])
            self._sync = None
        registry, self._registry, self._intake = self._registry, None, None
        if registry is not None:
            await registry.stop()
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None
        if self._outbox is not None and self._opened:
            await self._outbox.aclose()
        self._outbox = None
        self._opened = False

    async def _sync_forever(self) -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: see EndpointWorker._rest
                async with asyncio.timeout(SYNC_INTERVAL):
                    await self._registry_changed.wait()
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
        """Catch up with a shared outbox (endpoints other nodes changed, queue sizes)."""
        if self._registry is not None and self.outbox.shared:
            await self._registry.refresh(force)

    def _written(self, endpoint_ids: set[str]) -> None:
        """The outbox stored new deliveries for these endpoints: wake their workers."""
        if self._registry is not None:
            for endpoint_id in endpoint_ids:
                self._registry.wake(endpoint_id)

    def _disabled(self, endpoint: Endpoint) -> None:
        if self._registry is not None:
            self._registry.changed()

    def _endpoints_changed(self) -> None:
        registry = self._registry
        self._listen_events(registry is not None and registry.wants_events())

    def _listen_events(self, on: bool) -> None:
        # Registered only while someone wants events: the hub skips building them otherwise.
        listeners = self.hub.lifecycle_listeners
        current = self._events_listener
        if on and current is None and self._intake is not None:
            self._events_listener = self._intake.on_lifecycle
            listeners.append(self._events_listener)
            self._leaves_wanted = self._intake.registry.wants_leaves
            self.hub.leaves_wanted.append(self._leaves_wanted)
        elif not on and current is not None:
            with contextlib.suppress(ValueError):
                listeners.remove(current)
            wanted, self._leaves_wanted = self._leaves_wanted, None
            if wanted is not None:
                with contextlib.suppress(ValueError):
                    self.hub.leaves_wanted.remove(wanted)
            self._events_listener = None

    # ---- the server API -----------------------------------------------------------------------

    def _require(self) -> Registry:
        if self._registry is None:
            raise NotFound("no webhooks are registered")
        return self._registry

    def get(self, endpoint_id: str) -> Endpoint:
        if self._registry is None:
            raise NotFound(f"no webhook {endpoint_id!r}")
        return self._registry.get(endpoint_id)

    async def create(
        self, url: object, channels: object, secret: object = None, events: object = None
    ) -> Endpoint:
        endpoint = await new_endpoint(url, channels, secret, events, self.allow)
        registry = await self._ensure_open()
        await registry.create(endpoint)
        log.info("webhook %s registered for %s", endpoint.id, shown(endpoint.url))
        return endpoint

    async def remove(self, endpoint_id: str) -> None:
        endpoint = self.get(endpoint_id)
        if endpoint.source == "config":
            raise Forbidden(
                f"webhook {endpoint_id} is configured in the config file; remove it there",
                code=ErrorCode.CONFIGURED_WEBHOOK,
            )
        await self._require().forget(endpoint)
        self.attempt_stats.forget(endpoint_id)
        log.info("webhook %s removed", endpoint_id)

    async def enable(self, endpoint_id: str) -> Endpoint:
        endpoint = self.get(endpoint_id)
        await self._require().enable(endpoint)
        return endpoint

    async def replay(
        self, endpoint_id: str, since: object, channels: object = None
    ) -> dict[str, Any]:
        endpoint = self.get(endpoint_id)
        assert self._intake is not None  # open, since the endpoint exists
        return await replay(self.hub, self._intake, endpoint, since, channels)

    async def dead_letters(self, endpoint_id: str, after: int, limit: int) -> list[Delivery]:
        self.get(endpoint_id)
        return await self.outbox.dead_letters(endpoint_id, after, limit)

    async def revive(self, endpoint_id: str, ids: object = None) -> int:
        """Move dead letters back to the end of the endpoint's queue."""
        endpoint = self.get(endpoint_id)
        revived = await revive(self.outbox, self.counts, endpoint, ids)
        self._require().wake(endpoint.id)
        return revived

    async def describe(self, endpoint: Endpoint, detail: bool = False) -> dict[str, Any]:
        worker = self._registry.workers.get(endpoint.id) if self._registry else None
        return await describe(endpoint, worker, self.counts, self.outbox, detail)

    async def describe_all(self) -> list[dict[str, Any]]:
        if not self.is_open:
            return []
        await self.refresh()
        return [await self.describe(e) for e in self.endpoints.values()]
