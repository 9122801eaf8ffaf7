"""Running the server: listening socket, lifespan, graceful shutdown, signals and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

from clarion.asgitypes import ASGIApp, direct_local_only, direct_routes, server_errors
from clarion.core.limits import AddressCount
from clarion.server import fastws
from clarion.server.config import Config, Registry, descriptor_budget
from clarion.server.fastws import use_compiled
from clarion.server.flusher import flusher_for
from clarion.server.http import HttpProtocol
from clarion.server.lifespan import Lifespan

log = logging.getLogger("clarion.server")

FORCE_CLOSE_GRACE = 0.5  # seconds a force-closed websocket gets for its close frame


class Server:
    """clarion's ASGI 3 server (HTTP/1.1 and WebSocket) with the fast websocket extension.

    ``max_body_bytes`` caps a request body (413 beyond), ``max_message_bytes`` an inbound
    WebSocket message (closed with 1009 beyond). ``reuse_port`` binds with ``SO_REUSEPORT``, so
    that several processes share the port (``clarion serve --workers``). A connection that has
    not sent a complete request head within ``handshake_timeout`` seconds is closed, and so is
    a keep-alive connection idle for ``keepalive_timeout``. Heads are bounded by ``max_headers`` and
    ``max_header_bytes`` (431). ``send_limit`` is a websocket's default send budget (see
    ``FastWebSocket.set_send_limit``), ``close_timeout`` how long a close handshake may take,
    ``flush_interval`` how long pushed frames may wait to share a write (0: until the end of the
    loop iteration; the setting is per event loop). ``compiled`` runs the fan-out's append and
    flush loops compiled when clarion was built with them (``False``: in Python; the setting
    is per process, see :mod:`clarion.server.fastws`); with them, ``io_uring`` sends a loop
    iteration's frames to the connections with one frame each in one system call where the
    kernel allows it (Linux's io_uring; ``False``: one ``send`` each). ``permessage_deflate``
    accepts clients' offers of compression (RFC 7692), each message compressed on its own.

    A request body must be complete within ``body_timeout`` seconds of its head; a response
    whose client reads none of it for ``send_timeout`` seconds is cut (reset). Connections
    that wait on their client (a head or body on its way, an idle keep-alive) are capped at
    ``max_pending_per_ip`` per client address (as ``client_key`` maps it; ``None`` from it
    counts towards the total only) and ``max_pending`` in all; every connection counts
    against the file descriptor limit, less a reserve (and one address never holds more than
    half of what it leaves waiting on their client). Over a cap, a connection is answered
    503 and closed, and the refusals are logged (at most once per 10 s).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_body_bytes: int = 65536,
        max_message_bytes: int = 65536,
        handshake_timeout: float = 10.0,
        keepalive_timeout: float = 5.0,
        sock: socket.socket | None = None,
        backlog: int = 2048,
        max_headers: int = 100,
        max_header_bytes: int = 16384,
        send_limit: int = 4 * 1024 * 1024,
        close_timeout: float = 3.0,
        flush_interval: float = 0.0,
        compiled: bool = True,
        io_uring: bool = True,
        body_timeout: float = 30.0,
        send_timeout: float = 60.0,
        max_pending: int = 10_000,
        max_pending_per_ip: int = 1000,
        client_key: Callable[[str], str | None] | None = None,
        reuse_port: bool = False,
        permessage_deflate: bool = True,
    ) -> None:
        self.host = host
        self.reuse_port = reuse_port
        self.requested_port = port
        self.sock = sock
        self.backlog = backlog
        self.config = Config(
            app=app,
            max_body_bytes=max_body_bytes,
            max_message_bytes=max_message_bytes,
            handshake_timeout=handshake_timeout,
            keepalive_timeout=keepalive_timeout,
            max_headers=max_headers,
            max_header_bytes=max_header_bytes,
            send_limit=send_limit,
            close_timeout=close_timeout,
            flush_interval=flush_interval,
            compiled=compiled,
            io_uring=io_uring,
            body_timeout=body_timeout,
            send_timeout=send_timeout,
            max_pending=max_pending,
            max_pending_per_ip=max_pending_per_ip,
            client_key=client_key,
            permessage_deflate=permessage_deflate,
            direct=dict(direct_routes(app)),
            direct_local_only=direct_local_only(app),
            errors=dict(server_errors(app)),
        )
        self.registry = Registry()
        self.registry.pending = AddressCount(
            max_pending_per_ip, max_pending, self.registry.refusals
        )
        self._lifespan = Lifespan(app, self.registry.state)
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        """The bound port (the one the OS picked when ``port=0``)."""
        for sock in self.sockets:
            return int(sock.getsockname()[1])
        return self.requested_port

    async def start(self) -> None:
        """Bind, run lifespan startup, then start accepting connections.

        Binding comes first so that a taken port fails before the app has started anything;
        connections that arrive during startup wait in the listen backlog.
        """
        if self._server is not None:
            return
        self._stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        config, registry = self.config, self.registry
        flusher_for(loop).interval = config.flush_interval
        compiled = use_compiled(config.compiled, ring=config.io_uring)
        budget = registry.descriptors = descriptor_budget()
        pending = registry.pending
        if budget is not None and pending.per_key > budget // 2:
            # One address must never take the descriptors everyone else needs.
            pending.per_key = max(budget // 2, 1)
            log.info(
                "file descriptor limit leaves room for %d connections: at most %d per address "
                "waiting on their client (raise the limit, `ulimit -n`, for more)",
                budget,
                pending.per_key,
            )

        def factory() -> HttpProtocol:
            return HttpProtocol(config, registry)

        try:
            if self.sock is not None:
                server = await loop.create_server(
                    factory, sock=self.sock, backlog=self.backlog, start_serving=False
                )
            else:
                server = await loop.create_server(
                    factory,
                    self.host,
                    self.requested_port,
                    backlog=self.backlog,
                    reuse_address=True,
                    reuse_port=self.reuse_port or None,
                    start_serving=False,
                )
        except BaseException:
            self._stopped.set()
            raise
        try:
            await self._lifespan.startup()
        except BaseException:
            server.close()
            self._stopped.set()
            raise
        self._server = server
        await server.start_serving()
        log.debug("server listening on %s:%d", self.host, self.port)
        # Said once serving, so a server that could not start says only why.
        if compiled and not fastws.NO_RING:
            log.info("fan-out loops: compiled, sends batched through io_uring")
        elif compiled:
            why = fastws.NO_RING
            log.info("fan-out loops: compiled, one send per connection (io_uring %s)", why)
        else:
            why = "switched off" if config.compiled is False else fastws.NOT_COMPILED
            log.info("fan-out loops: Python (compiled ones %s)", why)

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`shutdown` has finished."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, run lifespan shutdown, and close every connection within ``timeout``."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._stopping)

    async def _shutdown(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        registry = self.registry
        registry.shutting_down = True
        if self._server is not None:
            self._server.close()
        # Idle keep-alive connections go now; busy ones close after their response.
        for conn in list(registry.connections):
            if not _is_websocket(conn):
                conn.shutdown()
        # Lifespan shutdown lets the app close its own sessions (with its own close codes).
        await self._lifespan.shutdown(max(deadline - loop.time(), 0.0))
        await _wait_until(lambda: not registry.tasks and not registry.connections, deadline)
        if registry.connections:
            log.info("closing %d connections still open at shutdown", len(registry.connections))
            for conn in list(registry.connections):
                # A websocket gets a close frame (1012) and a moment for the handshake; an
                # HTTP response still running has no way to end gracefully: cut it.
                if _is_websocket(conn):
                    conn.shutdown()
                else:
                    conn.abort()
            await _wait_until(lambda: not registry.connections, loop.time() + FORCE_CLOSE_GRACE)
            for conn in list(registry.connections):
                conn.abort()
        if registry.tasks:
            # Apps see their disconnect first (SSE cleanup); cancelled only if they linger.
            await asyncio.wait(list(registry.tasks), timeout=FORCE_CLOSE_GRACE)
        tasks = list(registry.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=FORCE_CLOSE_GRACE)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FORCE_CLOSE_GRACE):
                    await self._server.wait_closed()
        if self._stopped is not None:
            self._stopped.set()
        log.info("clarion server stopped")


def _is_websocket(conn: object) -> bool:
    return not isinstance(conn, HttpProtocol)


async def _wait_until(done: Callable[[], bool], deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while not done() and loop.time() < deadline:
        await asyncio.sleep(min(0.02, max(deadline - loop.time(), 0.0)))


def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    shutdown_timeout: float = 10.0,
    **kw: Any,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (under uvloop when installed), then shut down."""

    async def main() -> None:
        server = Server(app, host=host, port=port, **kw)
        starting = asyncio.ensure_future(server.start())

        def on_signal() -> None:
            if starting.done():
                _stop(server, shutdown_timeout)
            else:
                starting.cancel()  # a signal while starting ends the start

        # Handled from before the socket listens: a server seen listening stops through its
        # shutdown, lifespan and all, never by the signal's default action.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(sig, on_signal)
        await asyncio.wait([starting])
        if starting.cancelled():
            return
        starting.result()  # a start that failed raises here
        await server.serve_forever()

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


_stopping: set[asyncio.Task[None]] = set()


def _stop(server: Server, timeout: float) -> None:
    task = asyncio.ensure_future(server.shutdown(timeout))
    _stopping.add(task)  # keep a reference until it is done
    task.add_done_callback(_stopping.discard)
