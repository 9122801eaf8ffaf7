"""One hub per port for an engine that keeps channels inside one process (the memory engine,
whose ``process_local`` says so).

Two processes serving one port — ``uvicorn --workers 2``, ``gunicorn -w 2``, any server's
worker processes — are then two hubs that share nothing: a publication taken by one never
reaches the other's subscribers, and a client that reconnects to the other is told its
cursor's epoch is unknown. ``clarion serve`` refuses to start so; a hub mounted in another
server cannot see its workers, so it claims the port its requests arrive on, with a lock on a
file that the kernel releases when the process ends, however it ends. A hub that finds the port
claimed answers ``503 engine_not_shared``, and refuses its application's publishes
(``hub.publish``) from then on; it tries again once a second, so that it takes over when the
other process is gone.

Hubs of one process share their claims (an application may mount two), and a hub lets go of
its claim when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from clarion.protocol.proxies import parse_address

if TYPE_CHECKING:
    from clarion.core.hub import Hub
    from clarion.errors import ClarionError

try:
    import fcntl
except ImportError:  # Windows has no flock: there nothing claims, every hub serves
    fcntl = None  # type: ignore[assignment]

RETRY = 1.0  # seconds between two tries of a claimed port

# This process's claims: port -> (descriptor holding the lock, claims on it).
_held: dict[int, tuple[int, int]] = {}


def _path(port: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"clarion-{os.getuid()}-port-{port}.lock")


def _lock(port: int) -> bool | None:
    """Claim ``port`` for this process: True, False when another process holds it, None when
    there is nowhere to keep the lock (then nothing is claimed, and nothing refused on a
    guess)."""
    held = _held.get(port)
    if held is not None:
        _held[port] = (held[0], held[1] + 1)
        return True
    try:
        fd = os.open(_path(port), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held[port] = (fd, 1)
    return True


def _unlock(port: int) -> None:
    held = _held.get(port)
    if held is None:
        return
    fd, count = held
    if count > 1:
        _held[port] = (fd, count - 1)
        return
    del _held[port]
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the descriptor releases the lock


class PortClaim:
    """The claim of one hub; a hub extension, so that it is let go when the hub closes."""

    __slots__ = ("_hub", "_retry", "_tried", "_unclaimable", "_wanted", "port")

    def __init__(self) -> None:
        self.port: int | None = None  # the port claimed
        self._wanted: int | None = None  # the port requests came in on
        self._tried = -RETRY
        self._unclaimable = False  # no lock can be kept here: every request is served
        self._retry: asyncio.Task[None] | None = None  # tries again while stood down
        self._hub: Hub | None = None  # the hub stood down

    def serves(self, scope: Mapping[str, Any]) -> bool:
        """May this hub answer a request that came in on ``scope["server"]``'s port?"""
        if self.port is not None or self._unclaimable or fcntl is None:
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
        self._wanted = port
        claimed = _lock(port)
        if claimed is None:
            self._unclaimable = True
            return True
        if not claimed:
            return False
        self.port = port
        return True

    def stand_down(self, hub: Hub, refusal: ClarionError) -> None:
        """Refuse all of ``hub``'s work (its application's publishes too) until a later try
        claims the port: the other process may end."""
        hub.refusal = refusal
        self._hub = hub
        if self._retry is None:
            self._retry = asyncio.create_task(self._claim_later(hub), name="clarion-port-claim")

    async def _claim_later(self, hub: Hub) -> None:
        port = self._wanted
        while port is not None:
            await asyncio.sleep(RETRY)
            claimed = _lock(port)
            if claimed is False:
                continue
            if claimed:
                self.port = port
            else:
                self._unclaimable = True
            hub.refusal = None
            break
        self._retry = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        retry, self._retry = self._retry, None
        if retry is not None:
            retry.cancel()
            await asyncio.gather(retry, return_exceptions=True)
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.refusal = None  # started again, the hub claims anew
        port, self.port = self.port, None
        if port is not None:
            _unlock(port)
        self._tried = -RETRY
        self._unclaimable = False
        self._wanted = None
