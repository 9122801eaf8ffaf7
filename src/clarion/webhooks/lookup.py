"""Host names of webhook targets, resolved on threads of their own.

``getaddrinfo`` holds its thread for as long as the DNS server takes to answer or give up:
seconds each time, when one hangs. On the event loop's default executor (``loop.getaddrinfo``),
lookups of names whose DNS someone else runs would take the threads the rest of the process
uses — the Redis client resolving its own host as it reconnects, files written off the loop —
for as long as deliveries to those names are retried. Here at most ``THREADS`` lookups run at
once, on daemon threads (a hung lookup does not hold up the process's exit), and a caller asking
for a name already being looked up waits for that lookup instead of starting another. A caller
that stops waiting (its delivery timed out) leaves the lookup to finish on its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

THREADS = 4

AddressInfo = list[tuple[Any, ...]]
Lookup = Callable[[str, int], AddressInfo]


def getaddrinfo(host: str, port: int) -> AddressInfo:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class Lookups:
    def __init__(self, lookup: Lookup = getaddrinfo, threads: int = THREADS) -> None:
        self._lookup = lookup
        self._threads = threads
        self._started = 0
        self._start_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[str, int, asyncio.Future[AddressInfo]]] = (
            queue.SimpleQueue()
        )
        # (loop, host, port) -> the lookup under way; touched on its loop's thread only.
        self._pending: dict[tuple[int, str, int], asyncio.Future[AddressInfo]] = {}

    async def resolve(self, host: str, port: int) -> AddressInfo:
        loop = asyncio.get_running_loop()
        key = (id(loop), host, port)
        future = self._pending.get(key)
        # Another loop's (one that closed with a lookup under way, whose id this one reuses)
        # is never settled: look up again.
        if future is None or future.get_loop() is not loop:
            future = loop.create_future()
            self._pending[key] = future
            future.add_done_callback(lambda done: self._forget(key, done))
            self._jobs.put((host, port, future))
            self._start_thread()
        # Shielded: one caller giving up must not fail the lookup the others wait for.
        return await asyncio.shield(future)

    def _forget(self, key: tuple[int, str, int], future: asyncio.Future[AddressInfo]) -> None:
        if self._pending.get(key) is future:
            del self._pending[key]

    def after_fork(self) -> None:
        """In a forked child: it has none of the threads, nor the loops lookups were for."""
        self._started = 0
        self._start_lock = threading.Lock()
        self._jobs = queue.SimpleQueue()
        self._pending.clear()

    def _start_thread(self) -> None:
        # Started as lookups come, then kept: a few idle threads cost next to nothing.
        with self._start_lock:
            if self._started >= self._threads:
                return
            self._started += 1
        threading.Thread(target=self._work, name="clarion-webhook-dns", daemon=True).start()

    def _work(self) -> None:
        while True:
            host, port, future = self._jobs.get()
            try:
                result: AddressInfo | Exception = self._lookup(host, port)
            except Exception as exc:  # handed to the waiting callers, which raise it
                result = exc
            # A loop that has closed raises: nobody waits any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_settle, future, result)


def _settle(future: asyncio.Future[AddressInfo], result: AddressInfo | Exception) -> None:
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


LOOKUPS = Lookups()
if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=LOOKUPS.after_fork)
