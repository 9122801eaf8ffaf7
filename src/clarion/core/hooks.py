"""The seam for hooks: an outside authority (the application's backend) asked before a session
opens, reads a channel, or publishes. The core knows only this interface; ``clarion.hooks``
implements it over HTTP."""

from __future__ import annotations

from typing import Any, Protocol

from clarion.core.auth import Credentials


class Hooks(Protocol):
    async def connect(self, credentials: Credentials, transport: str) -> Credentials:
        """Allow (possibly amended credentials), or raise (``Forbidden``, ``HookUnavailable``)."""

    async def subscribe(
        self, credentials: Credentials, channel: str, client: str | None, transport: str
    ) -> None:
        """Allow reading ``channel``, or raise."""

    async def publish(
        self, credentials: Credentials, channel: str, data: Any, client: str, transport: str
    ) -> Any:
        """Allow publishing; returns the data to publish (possibly replaced), or raises."""

    async def close(self) -> None: ...
