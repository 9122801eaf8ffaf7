"""One rule for a package whose exports load on first use (PEP 562).

``clarion``, ``clarion.webhooks`` and ``clarion.demo`` name what they export without importing
it: every ``clarion`` command builds its whole argument parser, which must not bring in the hub,
the webhook service and their libraries for a command that uses none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    package: str, modules: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``modules`` maps each export to the module
    holding it; a name loaded once is kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
