"""``clarion demo``: a local hub with the demo apps (chat, ticker, board, dashboard) at ``/demo/``.

Demo-only: its token endpoint gives a token to whoever asks, so it is never part of
``clarion serve`` or of :meth:`clarion.Hub.asgi_app`. See ``docs/demo.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clarion.demo.app import Demo, demo_settings

__all__ = ["Demo", "demo_settings"]


def __getattr__(name: str) -> Any:
    # On first use: every `clarion` command builds the `clarion demo` parser (clarion.demo.cli),
    # which must not bring in the demo's app and the hub.
    if name not in __all__:
        raise AttributeError(f"module 'clarion.demo' has no attribute {name!r}")
    from clarion.demo import app

    value = getattr(app, name)
    globals()[name] = value
    return value
