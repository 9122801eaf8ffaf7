"""``clarion serve --workers N``: N hub processes on one port, each a full node.

The parent holds the port (a bound, non-listening ``SO_REUSEPORT`` socket: the address is
checked and reserved once, and port 0 becomes one real port for every worker), starts the
workers, and does nothing else: no connection passes through it. Each worker is a plain
``clarion serve`` that listens on the same port with ``SO_REUSEPORT``, so the kernel spreads
incoming connections over the workers; they share channels, history and presence through the
configured engine (Redis), exactly as nodes on several machines do.

Each worker holds one end of a socket pair whose other end stays in the parent: the worker
writes one byte once it listens, and reads end-of-file when the parent is gone (even killed
with SIGKILL), which makes it shut down rather than outlive its supervisor.

SIGTERM or SIGINT to the parent is passed to every worker, which shuts down as a single node
does (clients are told to reconnect elsewhere); workers still running after
``shutdown_timeout`` (plus a grace) are killed. A worker that exits unexpectedly is started
again, with a back-off if it keeps dying at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from clarion.errors import ClarionError, LocalCode
from clarion.protocol.numbers import ascii_int
from clarion.settings import Settings, url_host

log = logging.getLogger("clarion.workers")

STOP_GRACE = 5.0  # seconds past shutdown_timeout before a worker is killed
RESTART_MIN = 0.1  # back-off of a worker that keeps dying at start: 0.1 s … 5 s
RESTART_MAX = 5.0
STEADY = 10.0  # a worker that ran this long resets its back-off


def worker_count(text: str) -> int:
    """``N`` or ``auto`` (the cores this process may run on)."""
    if text == "auto":
        return max(len(os.sched_getaffinity(0)), 1)
    count = ascii_int(text, max_digits=6)
    if count is None or count < 1:
        raise ValueError(f"--workers takes a whole number >= 1 or auto, not {text!r}")
    return count


def check_engine(settings: Settings, workers: int) -> None:
    """Several workers must share one engine: the memory engine is one process's own."""
    if workers > 1 and settings.engine == "memory":
        raise ClarionError(
            f"--workers {workers} needs an engine the workers share: with the memory engine "
            "each worker would hold its own channels, and a publication would reach only the "
            'subscribers of one worker. Use the Redis engine (engine = "redis://host:port/db", '
            "or --engine redis://…; see docs/redis.md), or run one worker.",
            code=LocalCode.CONFIG,
        )


def reserve(host: str, port: int) -> socket.socket:
    """A bound, non-listening ``SO_REUSEPORT`` socket: holds the port, receives nothing."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Worker:
    number: int
    process: asyncio.subprocess.Process | None = None
    link: socket.socket | None = None  # the parent's end of the socket pair
    started: float = 0.0
    ready: asyncio.Future[bool] | None = None
    failures: int = 0  # deaths in a row soon after start
    waiter: asyncio.Task[int] | None = field(default=None, repr=False)


class Supervisor:
    """Starts ``count`` workers running ``argv`` on ``port``, restarts them, stops them."""

    def __init__(self, argv: list[str], count: int, port: int, settings: Settings) -> None:
        self.argv = argv
        self.port = port
        self.settings = settings
        self.workers = [Worker(i) for i in range(1, count + 1)]
        self.stopping = False
        self._stop = asyncio.Event()

    def command(self, worker: Worker, fd: int) -> list[str]:
        # Later flags win in argparse: the worker runs the same configuration, as one worker.
        return [
            sys.executable,
            "-m",
            "clarion.cli",
            *self.argv,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--worker-id",
            str(worker.number),
            "--worker-link",
            str(fd),
        ]

    async def spawn(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self.command(worker, theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        worker.link = ours
        worker.started = time.monotonic()
        ready = worker.ready = loop.create_future()
        ours.setblocking(False)

        def readable() -> None:
            loop.remove_reader(ours.fileno())
            with contextlib.suppress(OSError):
                data = ours.recv(1)
                if not ready.done():
                    ready.set_result(bool(data))

        loop.add_reader(ours.fileno(), readable)
        worker.waiter = asyncio.ensure_future(worker.process.wait())
        log.info("worker %d started (pid %d)", worker.number, worker.process.pid)

    def _forget(self, worker: Worker) -> None:
        if worker.link is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(worker.link.fileno())
            worker.link.close()
            worker.link = None
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_result(False)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        for worker in self.workers:
            await self.spawn(worker)
        code = await self._wait_ready()
        if code or self._stop.is_set():
            await self.stop()
            return code
        log.info(
            "%d workers listening on http://%s:%d",
            len(self.workers),
            url_host(self.settings.host),
            self.port,
        )
        stop = asyncio.ensure_future(self._stop.wait())
        while not self._stop.is_set():
            waiters = {w.waiter for w in self.workers if w.waiter is not None}
            done, _ = await asyncio.wait({stop, *waiters}, return_when=asyncio.FIRST_COMPLETED)
            for worker in self.workers:
                if worker.waiter in done and not self._stop.is_set():
                    await self._restart(worker)
        await self.stop()
        return 0

    async def _wait_ready(self) -> int:
        """0 once every worker listens (or a stop was asked); the exit code of one that ended."""
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            for worker in self.workers:
                assert worker.ready is not None and worker.waiter is not None
                first: set[asyncio.Future[Any]] = {worker.ready, worker.waiter, stop}
                await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                if self._stop.is_set():
                    return 0
                if worker.ready.done() and worker.ready.result():
                    continue
                returncode = await worker.waiter
                log.error("worker %d exited at start (code %d)", worker.number, returncode)
                return returncode or 1
            return 0
        finally:
            stop.cancel()

    async def _restart(self, worker: Worker) -> None:
        assert worker.waiter is not None
        returncode = worker.waiter.result()
        self._forget(worker)
        how = f"signal {-returncode}" if returncode < 0 else f"code {returncode}"
        ran = time.monotonic() - worker.started
        worker.failures = 0 if ran > STEADY else worker.failures + 1
        delay = 0.0 if worker.failures <= 1 else min(RESTART_MIN * 2**worker.failures, RESTART_MAX)
        log.warning(
            "worker %d (pid %d) exited (%s) after %.1f s: starting it again%s",
            worker.number,
            worker.process.pid if worker.process else 0,
            how,
            ran,
            f" in {delay:.1f} s" if delay else "",
        )
        worker.waiter = None
        if delay:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            if self._stop.is_set():
                return
        await self.spawn(worker)

    async def stop(self) -> None:
        """SIGTERM every worker; kill those still running after the shutdown timeout."""
        self.stopping = True
        running = [w for w in self.workers if w.process is not None and w.waiter is not None]
        log.info("stopping %d workers", len(running))
        for worker in running:
            assert worker.process is not None
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        waiters = [w.waiter for w in running if w.waiter is not None]
        if waiters:
            timeout = self.settings.shutdown_timeout + STOP_GRACE
            _, late = await asyncio.wait(waiters, timeout=timeout)
            for worker in running:
                if worker.waiter in late and worker.process is not None:
                    log.warning("worker %d did not stop in time: killing it", worker.number)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            if late:
                await asyncio.wait(late, timeout=STOP_GRACE)
        for worker in self.workers:
            self._forget(worker)
        log.info("stopped")


def supervise(argv: list[str], count: int, settings: Settings) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; the exit code of ``clarion serve``."""
    check_engine(settings, count)
    try:
        held = reserve(settings.host, settings.port)
    except OSError as exc:
        advice = ""
        if exc.errno == errno.EADDRINUSE:
            advice = "; choose another with --port N (or port in clarion.toml / CLARION_PORT)"
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ClarionError(
            f"cannot listen on {settings.host}:{settings.port}: "
            f"{reason[:1].lower() + reason[1:]}{advice}",
            code=LocalCode.LISTEN,
        ) from None
    with held:
        port = int(held.getsockname()[1])
        return asyncio.run(Supervisor(argv, count, port, settings).run())


async def watch_parent(fd: int, stop: asyncio.Event) -> socket.socket:
    """The worker's end of its link: report readiness later, stop when the parent is gone."""
    link = socket.socket(fileno=fd)
    link.setblocking(False)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = link.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            log.warning("the supervising process is gone: shutting down")
            stop.set()

    loop.add_reader(fd, readable)
    return link
