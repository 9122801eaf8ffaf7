"""What every connection of one server shares: its limits, its app, and its live connections.

One :class:`Config` is built per :class:`~clarion.server.Server` and read (never written) by every
protocol object; one :class:`Registry` tracks the live connections and request tasks so that
shutdown can reach them.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import select
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from clarion.asgitypes import ASGIApp, DirectRoute
from clarion.core.limits import AddressCount, LogLimit, Refusals

try:
    import fcntl
    import termios
except ImportError:  # Windows: a timer's connection is taken for what it seems
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("clarion.server")


ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """``send()`` on a connection the client has closed (ASGI spec 2.4: an ``OSError``)."""


@dataclass(frozen=True, slots=True)
class Config:
    """Limits and timeouts of one server; see :class:`~clarion.server.Server` for each."""

    app: ASGIApp
    max_body_bytes: int = 65536
    max_message_bytes: int = 65536
    handshake_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_headers: int = 100
    max_header_bytes: int = 16384
    send_limit: int = 4 * 1024 * 1024
    close_timeout: float = 3.0
    flush_interval: float = 0.0
    compiled: bool = True
    io_uring: bool = True
    body_timeout: float = 30.0
    send_timeout: float = 60.0
    max_pending: int = 10_000
    max_pending_per_ip: int = 1000
    # Answer permessage-deflate offers (RFC 7692; see clarion.protocol.deflate).
    permessage_deflate: bool = True
    # The key per-IP caps count a peer address as (None: not per address, e.g. a trusted
    # proxy whose clients are counted once their own address is known).
    client_key: Callable[[str], str | None] | None = None
    # The app's direct routes by path (``clarion.asgitypes.direct_routes``).
    direct: dict[bytes, DirectRoute] = field(default_factory=dict)
    # The direct routes serve loopback peers only (``clarion.asgitypes.direct_local_only``).
    direct_local_only: bool = False
    # The app's JSON bodies for the errors the server answers itself, by status
    # (``clarion.asgitypes.server_errors``); plain text for the others.
    errors: dict[int, bytes] = field(default_factory=dict)


class Connection(Protocol):
    """What shutdown needs from a live connection, HTTP or WebSocket."""

    def is_idle(self) -> bool: ...

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


def _lines(logger: str) -> LogLimit:
    return LogLimit(logging.getLogger(logger))


@dataclass(slots=True)
class Registry:
    """The live connections and app tasks of one server, and the lifespan state.

    ``pending`` counts the HTTP connections that wait on their client (a request head or body
    on its way, an idle keep-alive) per address and in total; ``descriptors`` is how many
    connections the process's file descriptor limit leaves room for (None: no limit).
    """

    connections: set[Connection] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    state: dict[str, Any] = field(default_factory=dict)
    shutting_down: bool = False
    pending: AddressCount = field(default_factory=lambda: AddressCount(1000, 10_000))
    refusals: Refusals = field(default_factory=lambda: Refusals(log, "HTTP connection(s)"))
    descriptors: int | None = None
    # What peers cause per request or connection (a malformed request, a stalled one, a
    # refused handshake, a send buffer it does not read): a line per address a minute at most.
    errors: LogLimit = field(default_factory=lambda: _lines("clarion.server.http"))
    stalls: LogLimit = field(default_factory=lambda: _lines("clarion.server.http"))
    handshakes: LogLimit = field(default_factory=lambda: _lines("clarion.server.websocket"))
    overflows: LogLimit = field(default_factory=lambda: _lines("clarion.server.websocket"))
    streams: LogLimit = field(default_factory=lambda: _lines("clarion.server.faststream"))

    def start(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run an app coroutine as a task that shutdown can wait for."""
        # One per HTTP request: the loop's own create_task, not ensure_future's checks.
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class _DateHeader:
    """A date response header (or its value alone), formatted at most once a second."""

    __slots__ = ("_after", "_before", "_second", "_value")

    def __init__(self, before: bytes = b"date: ", after: bytes = b"\r\n") -> None:
        self._before = before
        self._after = after
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            date = email.utils.formatdate(now, usegmt=True).encode()
            self._value = self._before + date + self._after
        return self._value


date_header = _DateHeader()
http_date = _DateHeader(b"", b"")  # the value alone (the WebSocket handshake's Date)


def descriptor_budget() -> int | None:
    """Connections the file descriptor limit leaves room for, the rest kept in reserve.

    Accepting until ``accept()`` fails with EMFILE leaves nothing for what the process needs
    besides client sockets (its engine, webhooks, files) and, under uvloop, makes the event
    loop drop connections without a word. Refusing a little earlier, and saying so, does not.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # The soft limit is a default for programs that do not expect many files (1024 on
        # most systems); a server holding connections raises it to what it is allowed, as
        # Go's runtime does for every program.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft - min(max(100, soft // 10), 1000), 1)


_LINGER_RESET = struct.pack("ii", 1, 0)
_NO_BYTES = struct.pack("i", 0)


def reset(transport: asyncio.Transport) -> None:
    """Drop a connection now, with a TCP reset.

    ``transport.abort()`` alone leaves what the kernel already holds in the socket's send buffer
    (megabytes for a reader that stopped reading) to trickle out before the FIN; a zero linger
    time discards it, so a slow reader's connection really ends and its memory is freed.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def writable(transport: asyncio.Transport) -> bool:
    """Whether the socket's send buffer has room now: its peer read since the event loop last
    looked (after a stall, as :func:`unread`)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLOUT)
    except (OSError, ValueError):
        return False
    return bool(poller.poll(0))


def unread(transport: asyncio.Transport) -> bool:
    """Whether bytes from the peer wait in the socket, not yet read by the event loop.

    uvloop runs the timers that are due before it reads: after a stall (the process stopped
    or starved of CPU), a timer may find its connection idle although a request came in time.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or fcntl is None:
        return False
    try:
        waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, _NO_BYTES)
    except OSError:
        return False
    return bool(struct.unpack("i", waiting)[0])
