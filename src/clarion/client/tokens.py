"""Connection tokens: a fixed string, or a callable asked afresh before every (re)connect."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

TokenSource = str | Callable[[], str | Awaitable[str]] | None


async def resolve_token(source: TokenSource) -> str | None:
    if source is None or isinstance(source, str):
        return source
    value = source()
    if inspect.isawaitable(value):
        value = await value
    if not isinstance(value, str):
        raise TypeError("a token callable must return a string")
    return value


def refreshable(source: TokenSource) -> bool:
    """Whether asking again may give a different token (and so retrying an expired one helps)."""
    return callable(source)
