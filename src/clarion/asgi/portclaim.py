"""One hub per port for an engine that keeps channels inside one process (the memory engine,
whose ``process_local`` says so).

Two processes serving one port — ``uvicorn --workers 2``, ``gunicorn -w 2``, any server's
worker processes — are then two hubs that share nothing: a publication taken by one never
reaches the other's subscribers, and a client that reconnects to the other is told its
cursor's epoch is unknown. ``clarion serve`` refuses to start so; a hub mounted in another
server cannot see its workers, so it claims its port with a lock on a file that the kernel
releases when the process ends, however it ends: at start, each port and Unix socket the
process already listens on (worker processes inherit their server's listening socket before
the application starts), and otherwise the port its first request arrives on. A hub that finds
one claimed answers ``503 engine_not_shared``, and refuses its application's publishes
(``hub.publish``) from then on; it tries again once a second, so that it takes over when the
other process is gone. (A request on a Unix socket names no socket: those are claimed at start
only, which is when a server's workers have theirs.)

Hubs of one process share their claims (an application may mount two), and a hub lets go of
its claim when it closes: the last to let go removes the file, so that a hub that ends normally
leaves none behind (one killed leaves its file, which the next claimer takes as it is). Removing
a file that others may lock is safe only so: the holder removes it while it still holds the
lock, and a claimer that gets a lock checks that the path still names the file it locked, or
opens the path again. Without that check, a process that opened the file just before it was
removed would lock it once let go (a file no one can open any more) while a third made a new
one at the path and locked that: two holders of one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from clarion.core.limits import LogLimit
from clarion.errors import EngineNotShared
from clarion.protocol.proxies import parse_address

if TYPE_CHECKING:
    from clarion.core.hub import Hub

try:
    import fcntl
except ImportError:  # Windows has no flock: there nothing claims, every hub serves
    fcntl = None  # type: ignore[assignment]

RETRY = 1.0  # seconds between two tries of a claimed port

NOT_SHARED = (
    "another process on this machine serves %s with a hub of its own on the memory "
    "engine, which keeps channels inside one process: a publication taken by one would never "
    "reach the other's subscribers, so this one answers 503 and refuses hub.publish. Run one "
    "process (no --workers), use the Redis engine (docs/redis.md), or, if the other is another "
    "application, give this one another port"
)
# Said at ERROR: at start, then once a minute while requests are refused.
_not_shared = LogLimit(logging.getLogger("clarion.hub"))

# What a hub claims: a TCP port, or a Unix socket's path.
Listener = int | str

# This process's claims: listener -> (descriptor holding the lock, its file's path, the pid
# that claimed it, claims on it). A forked child inherits the table and the descriptors, but
# the lock stays its parent's for as long as the parent keeps its own descriptor.
_held: dict[Listener, tuple[int, str, int, int]] = {}

# How many times a claimer opens the path again after locking a file that was removed
# meanwhile; each time, another process claimed the port and let it go in between.
TRIES = 10


def _path(listener: Listener) -> str:
    if isinstance(listener, int):
        name = f"port-{listener}"
    else:  # a path can be long and hold anything: its digest names the lock
        name = (
            "unix-" + hashlib.sha256(listener.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        )
    return os.path.join(tempfile.gettempdir(), f"clarion-{os.getuid()}-{name}.lock")


def describe(listener: Listener) -> str:
    return f"port {listener}" if isinstance(listener, int) else f"the Unix socket {listener}"


def _lock(port: Listener) -> bool | None:
    """Claim ``port`` for this process: True, False when another process holds it, None when
    there is nowhere to keep the lock (then nothing is claimed, and nothing refused on a
    guess)."""
    held = _held.get(port)
    if held is not None:
        fd, path, pid, count = held
        _held[port] = (fd, path, pid, count + 1)
        return True
    path = _path(port)
    for _ in range(TRIES):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        if _named(fd, path):
            _held[port] = (fd, path, os.getpid(), 1)
            return True
        os.close(fd)  # its holder removed it as it let go: the path's file is the one to lock
    return False  # claimed and let go under every try: someone else is claiming it now


def _named(fd: int, path: str) -> bool:
    """Is the file open as ``fd`` the one at ``path``?"""
    try:
        opened, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False  # removed
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def listening_ports() -> list[Listener]:
    """The TCP ports and Unix sockets this process serves (or is about to: bound, with no
    peer), read from its descriptors where the system lists them, as Linux does in ``/proc``;
    elsewhere none, and the first request names the port."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    ports: set[int] = set()
    paths: set[str] = set()
    for name in names:
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))  # a copy: closing it leaves the original
        except (OSError, ValueError):
            continue  # gone meanwhile (the descriptor that listed them), or not a socket
        with sock:
            if sock.type != socket.SOCK_STREAM:
                continue
            unix = sock.family == getattr(socket, "AF_UNIX", None)
            if not unix and sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                name = sock.getsockname()
            except OSError:
                continue
            try:
                sock.getpeername()
                continue  # a peer: a connection (a Unix one too, even with an unnamed peer)
            except OSError:
                pass
            # No peer: a server's socket. It may not listen yet: a server that hands one bound
            # socket to its workers may leave listen() to each worker's loop.
            if unix:
                if isinstance(name, str) and name:  # an abstract name is bytes: not a file
                    paths.add(os.path.abspath(name))
            elif isinstance(name, tuple) and name[1]:
                ports.add(name[1])
    return [*sorted(ports), *sorted(paths)]


def _unlock(port: Listener) -> None:
    held = _held.get(port)
    if held is None:
        return
    fd, path, pid, count = held
    if count > 1:
        _held[port] = (fd, path, pid, count - 1)
        return
    del _held[port]
    # Removed while still locked (see the module's docstring), unless the path names another
    # file now: something else removed this one (a cleaner of old temporary files, say), and
    # another process made and claimed the new one, which is not this one's to remove.
    # A forked child's release leaves the file to the parent that still holds the lock.
    if pid == os.getpid() and _named(fd, path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the descriptor releases the lock


class PortClaim:
    """The claim of one hub; a hub extension, so that it is let go when the hub closes."""

    __slots__ = ("_hub", "_ports", "_retry", "_tried", "_unclaimable", "_wanted")

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._ports: set[Listener] = set()  # the ports and sockets claimed
        self._wanted: Listener | None = None  # the one another process holds
        self._tried = -RETRY  # when that port was last tried
        self._unclaimable = False  # no lock can be kept here: every request is served
        self._retry: asyncio.Task[None] | None = None  # tries again while stood down

    def serves(self, scope: Mapping[str, Any]) -> bool:
        """May this hub answer a request that came in on ``scope["server"]``'s port?"""
        host, port = scope.get("server") or (None, None)
        if port in self._ports or self._unclaimable or fcntl is None:
            return True
        # A socket's own address is an IP address; a Unix socket has no port, and a test
        # client (Starlette's TestClient, httpx's ASGITransport) names a host: no port is
        # shared then, and test processes side by side must not refuse each other.
        if not isinstance(port, int) or parse_address(str(host)) is None:
            return True
        now = time.monotonic()
        if port == self._wanted and now - self._tried < RETRY:
            return False
        return self._claim(port, now)

    def _claim(self, port: Listener, now: float) -> bool:
        claimed = _lock(port)
        if claimed is None:
            self._unclaimable = True
            return True
        if not claimed:
            self._wanted, self._tried = port, now
            return False
        self._ports.add(port)
        return True

    def refuse(self, port: Listener) -> EngineNotShared:
        """Another process holds ``port``: refuse this hub's work (its application's publishes
        too) until a later try claims it, since the other process may end."""
        refusal = EngineNotShared(NOT_SHARED % describe(port))
        _not_shared.log(logging.ERROR, "", "%s", refusal.message)
        self._hub.refusal = refusal
        if self._retry is None:
            self._retry = asyncio.create_task(self._claim_later(), name="clarion-port-claim")
        return refusal

    async def _claim_later(self) -> None:
        while (port := self._wanted) is not None:
            await asyncio.sleep(RETRY)
            if self._claim(port, time.monotonic()):
                self._wanted = None
                self._hub.refusal = None
        self._retry = None

    async def start(self) -> None:
        """Claim the ports this process already listens on: a server's worker processes inherit
        its listening socket before their application starts, so a worker that must stand down
        does so before its application publishes, not at its hub's first request."""
        if fcntl is None:
            return
        now = time.monotonic()
        for port in listening_ports():
            if not self._claim(port, now):
                self.refuse(port)
                return
            if self._unclaimable:
                return

    async def close(self) -> None:
        retry, self._retry = self._retry, None
        if retry is not None:
            retry.cancel()
            await asyncio.gather(retry, return_exceptions=True)
        self._hub.refusal = None  # started again, the hub claims anew
        for port in self._ports:
            _unlock(port)
        self._ports.clear()
        self._tried = -RETRY
        self._unclaimable = False
        self._wanted = None
