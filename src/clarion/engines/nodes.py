"""The node directory of a single process: the node is alone, its record kept in memory."""

from __future__ import annotations

import os
import time
from typing import Any


class LocalNodes:
    """:class:`~clarion.engines.base.NodeDirectory` of the memory engine (and of any engine
    that offers none: each node then sees itself only)."""

    def __init__(self, node: str | None = None) -> None:
        self.node = node if node is not None else os.urandom(8).hex()
        self._record: dict[str, Any] | None = None
        self._seen = 0.0

    async def announce(self, record: dict[str, Any]) -> None:
        self._record, self._seen = record, time.time()

    async def withdraw(self) -> None:
        self._record = None

    async def nodes(self) -> list[tuple[dict[str, Any], float]]:
        return [] if self._record is None else [(self._record, self._seen)]

    async def close(self) -> None:
        self._record = None
