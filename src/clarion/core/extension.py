"""Extension points: what the layers above the core attach to every hub.

The core knows no HTTP, so the hub's webhooks, its HTTP hooks and its ASGI application are
written above it. They are named here — imported when a hub is built, never when the core is
imported, as :func:`~clarion.core.hub.make_engine` does for engines — and each is an
:class:`Extension`: the hub starts it after itself and closes it after itself. An adapter
finds one by its type (:meth:`Hub.extension <clarion.core.hub.Hub.extension>`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

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
