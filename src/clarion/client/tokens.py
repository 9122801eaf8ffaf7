"""Connection tokens: a fixed string, or a callable asked afresh before every (re)connect."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

TokenSource = str | Callable[[], str | Awaitable[str]] | None


async def resolve_token(source: TokenSource, timeout: float | None = None) -> str | None:
    """The source's token; an async callable that has not answered within ``timeout`` seconds
    fails (``TimeoutError``), as one that raised: a connection must not wait on it for ever."""
    if source is None or isinstance(source, str):
        return source
    value = source()
    if inspect.isawaitable(value):
        try:
            async with asyncio.timeout(timeout):
                value = await value
        except TimeoutError:
            raise TimeoutError(f"no token within {timeout:g} s") from None
    if not isinstance(value, str):
        raise TypeError("a token callable must return a string")
    return value


def refreshable(source: TokenSource) -> bool:
    """Whether asking again may give a different token (and so retrying an expired one helps)."""
    return callable(source)


class Tokens:
    """A client's token source and the token it last gave, shared by every transport.

    Connections (the WebSocket, each SSE or poll request) ask the source afresh; client API
    requests reuse the latest answer, so a token callable is not asked once per publish, and
    a token a reconnect obtained is the one the next request carries.
    """

    __slots__ = ("_asked", "current", "source", "timeout")

    def __init__(self, source: TokenSource, timeout: float | None = None) -> None:
        self.source = source
        self.timeout = timeout  # for an async callable's answer
        self.current: str | None = None
        self._asked = False

    async def fresh(self) -> str | None:
        """Ask the source; its answer becomes the current token."""
        token = await resolve_token(self.source, self.timeout)
        self.current, self._asked = token, True
        return token

    async def latest(self) -> str | None:
        """The token the latest connection or request used (the source is asked if none has)."""
        return self.current if self._asked else await self.fresh()

    async def renewed(self, expired: str | None) -> str | None:
        """A token to use instead of ``expired``: the current one if a connection obtained a new
        one meanwhile, else a fresh one."""
        return self.current if self.current != expired else await self.fresh()
