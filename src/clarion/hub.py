"""The public :class:`Hub`: the core hub plus the ASGI application that serves it."""

from __future__ import annotations

from typing import Any

from clarion.core.hub import Hub as CoreHub
from clarion.core.nodes import NodeCollector, NodeReporter
from clarion.core.operator import OperatorAuth
from clarion.engines.base import Engine
from clarion.protocol.codes import CloseCode
from clarion.settings import Settings
from clarion.webhooks import WebhookService
from clarion.webhooks.metrics import WebhookCollector


class Hub(CoreHub):
    """A clarion hub, ready to serve or to mount inside a host application::

    hub = Hub(Settings())
    app = Starlette(lifespan=hub.lifespan)
    app.mount("/rt", hub.asgi_app())
    ...
    await hub.publish("chat:lobby", {"text": "hi"})
    """

    _app: Any = None
    _webhooks: WebhookService | None = None

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None) -> None:
        super().__init__(settings, engine=engine)
        if self.settings.admin:
            self.auth = OperatorAuth(self.settings)
        # This node's figures, announced to the others (``GET /api/info``, the admin page).
        self.nodes = NodeReporter(self, metrics_channel=self.settings.admin)
        self.metrics_registry.register(NodeCollector(self.nodes))
        self.metrics_registry.register(WebhookCollector(lambda: self._webhooks))

    @property
    def webhooks(self) -> WebhookService:
        """Webhook endpoints and their durable outbox (opened by :meth:`start` when in use)."""
        if self._webhooks is None:
            self._webhooks = WebhookService(self)
        return self._webhooks

    async def start(self) -> None:
        started = self._started
        await super().start()
        if started:
            return
        try:
            if self.settings.hooks.enabled and self.hooks is None:
                from clarion.hooks import HttpHooks

                self.hooks = HttpHooks(self.settings.hooks)
            await self.webhooks.start()
        except BaseException:
            await super().close()
            raise
        self.nodes.start()

    async def close(self, code: int = CloseCode.SHUTDOWN) -> None:
        # This node leaves the directory first: the others see it go at once.
        await self.nodes.close()
        # Sessions close first, so their disconnect events still reach the outbox.
        await super().close(code)
        if self._webhooks is not None:
            await self._webhooks.close()
        if self.hooks is not None:
            await self.hooks.close()
            self.hooks = None

    def asgi_app(self) -> Any:
        """The ASGI application: HTTP API, ``/ws`` and the other transports (built once)."""
        if self._app is None:
            from clarion.asgi.app import build_app

            self._app = build_app(self)
        return self._app
