"""What a hub loads when it is built: its engine, and what the layers above the core attach.

The core knows no HTTP, so the hub's webhooks, its HTTP hooks and its ASGI application are
written above it. They are named here — imported when a hub is built, never when the core is
imported, as :func:`make_engine` does for the configured engine — and each is an
:class:`Extension`: the hub starts it after itself and closes it after itself. An adapter
finds one by its type (:meth:`Hub.extension <clarion.core.hub.Hub.extension>`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from clarion.engines.base import Engine
from clarion.errors import ConfigError
from clarion.settings import REDIS_URL_SCHEMES, Settings

if TYPE_CHECKING:
    from clarion.core.hub import Hub


class Extension(Protocol):
    """A part of the hub written above the core; made with the hub, as ``Factory(hub)``."""

    async def start(self) -> None:
        """Once the hub has started (engine open), before the node announces itself."""

    async def close(self) -> None:
        """Once the hub has closed its sessions and its engine; also after a failed start."""


ExtensionFactory = Callable[["Hub"], Extension]

# Every hub's extensions, in start order (closed in reverse): the HTTP hooks first, so that the
# webhook intake never sees a session the hooks were not asked about.
STANDARD = ("clarion.hooks:HookService", "clarion.webhooks:WebhookService")
# What builds the hub's ASGI application (``Hub.asgi_app``).
APP_BUILDER = "clarion.asgi.app:build_app"


def load(ref: str) -> Any:
    """The object ``module:name`` names."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def standard() -> list[ExtensionFactory]:
    return [load(ref) for ref in STANDARD]


def make_engine(settings: Settings) -> Engine:
    url = settings.engine
    if url == "memory":
        from clarion.engines.memory import MemoryEngine

        return MemoryEngine(
            data_dir=settings.data_dir, history_bytes=settings.limits.max_history_bytes
        )
    if url.startswith(REDIS_URL_SCHEMES):
        try:
            from clarion.engines.redis import RedisEngine
        except ImportError as exc:
            raise ConfigError(
                f"the redis engine needs the redis extra ({exc}): "
                "pip install -e '.[redis]' in the checkout"
            ) from None
        return RedisEngine(url, settings)
    raise ConfigError(f"unknown engine {url!r}: use 'memory' or 'redis://host:port/db'")
