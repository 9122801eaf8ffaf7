"""What every connection of one server shares: its limits, its app, and its live connections.

One :class:`Config` is built per :class:`~clarion.server.Server` and read (never written) by every
protocol object; one :class:`Registry` tracks the live connections and request tasks so that
shutdown can reach them.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import struct
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

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


class Connection(Protocol):
    """What shutdown needs from a live connection, HTTP or WebSocket."""

    def is_idle(self) -> bool: ...

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(slots=True)
class Registry:
    """The live connections and app tasks of one server, and the lifespan state."""

    connections: set[Connection] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    state: dict[str, Any] = field(default_factory=dict)
    shutting_down: bool = False

    def start(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Run an app coroutine as a task that shutdown can wait for."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class _DateHeader:
    """The ``date`` response header, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._value


date_header = _DateHeader()


_LINGER_RESET = struct.pack("ii", 1, 0)


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
