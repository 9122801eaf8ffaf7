"""One hub per port for an engine that keeps channels inside one process (the memory engine,
whose ``process_local`` says so).

Two processes serving one port — ``uvicorn --workers 2``, ``gunicorn -w 2``, any server's
worker processes — are then two hubs that share nothing: a publication taken by one never
reaches the other's subscribers, and a client that reconnects to the other is told its
cursor's epoch is unknown. ``clarion serve`` refuses to start so; a hub mounted in another
server cannot see its workers, so it claims the port its requests arrive on, with a lock on a
file that the kernel releases when the process ends, however it ends. A hub that finds the port
claimed answers ``503 engine_not_shared`` and tries again at most once a second, so that it
takes over when the other process is gone.

Hubs of one process share their claims (an application may mount two), and a hub lets go of
its claim when it closes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from clarion.protocol.proxies import parse_address

try:
    import fcntl
except ImportError:  # not on Windows: nothing claims, every hub serves
    fcntl = None  # type: ignore[assignment]

RETRY = 1.0  # seconds between two tries of a claimed port

# This process's claims: port -> (descriptor holding the lock, claims on it).
_held: dict[int, tuple[int, int]] = {}


def _path(port: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"clarion-{os.getuid()}-port-{port}.lock")


def _lock(port: int) -> bool:
    held = _held.get(port)
    if held is not None:
        _held[port] = (held[0], held[1] + 1)
        return True
    try:
        fd = os.open(_path(port), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return True  # nowhere to keep a lock: no claim, and no refusal on a guess
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held[port] = (fd, 1)
    return True


def _unlock(port: int) -> None:
    fd, count = _held[port]
    if count > 1:
        _held[port] = (fd, count - 1)
        return
    del _held[port]
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the descriptor releases the lock


class PortClaim:
    """The claim of one hub; a hub extension, so that it is let go when the hub closes."""

    __slots__ = ("_tried", "port")

    def __init__(self) -> None:
        self.port: int | None = None  # the port claimed
        self._tried = -RETRY

    def serves(self, scope: Mapping[str, Any]) -> bool:
        """May this hub answer a request that came in on ``scope["server"]``'s port?"""
        if self.port is not None or fcntl is None:
            return True
        host, port = scope.get("server") or (None, None)
        # A socket's own address is an IP address; a Unix socket has no port, and a test
        # client (Starlette's TestClient, httpx's ASGITransport) names a host: no port is
        # shared then, and test processes side by side must not refuse each other.
        if not isinstance(port, int) or parse_address(str(host)) is None:
            return True
        now = time.monotonic()
        if now - self._tried < RETRY:
            return False
        self._tried = now
        if not _lock(port):
            return False
        self.port = port
        return True

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            _unlock(port)
        self._tried = -RETRY
