"""``clarion demo``: a local hub with the demo apps (chat, ticker, board, dashboard) at ``/demo/``.

Demo-only: its token endpoint gives a token to whoever asks, so it is never part of
``clarion serve`` or of :meth:`clarion.Hub.asgi_app`. See ``docs/demo.md``.
"""

from clarion.demo.app import Demo, demo_settings

__all__ = ["Demo", "demo_settings"]
