"""The public :class:`Hub`: the core hub plus the ASGI application that serves it."""

from __future__ import annotations

from typing import Any

from clarion.core.hub import Hub as CoreHub


class Hub(CoreHub):
    """A clarion hub, ready to serve or to mount inside a host application::

    hub = Hub(Settings())
    app = Starlette(lifespan=hub.lifespan)
    app.mount("/rt", hub.asgi_app())
    ...
    await hub.publish("chat:lobby", {"text": "hi"})
    """

    _app: Any = None

    def asgi_app(self) -> Any:
        """The ASGI application: HTTP API, ``/ws`` and the other transports (built once)."""
        if self._app is None:
            from clarion.asgi.app import build_app

            self._app = build_app(self)
        return self._app
