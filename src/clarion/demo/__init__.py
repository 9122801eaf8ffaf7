"""``clarion demo``: a local hub with the demo apps (chat, ticker, board, dashboard) at ``/demo/``.

Demo-only: its token endpoint gives a token to whoever asks, so it is never part of
``clarion serve`` or of :meth:`clarion.Hub.asgi_app`. See ``docs/demo.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clarion import lazy

if TYPE_CHECKING:
    from clarion.demo.app import Demo, demo_settings

__all__ = ["Demo", "demo_settings"]


# On first use: every `clarion` command builds the `clarion demo` parser (clarion.demo.cli),
# which must not bring in the demo's app and the hub.
__getattr__ = lazy.exports(__name__, dict.fromkeys(__all__, "clarion.demo.app"), globals())
