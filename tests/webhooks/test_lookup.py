"""Webhook host names are resolved on threads of their own, a few at once, each name once.

A DNS server that never answers is stood in for by ``socket.getaddrinfo`` blocking for the
names of one made-up domain (the resolver is the C library's, not clarion's); every other name
resolves as usual.
"""

from __future__ import annotations

import asyncio
import ipaddress
import multiprocessing
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from clarion.webhooks.lookup import THREADS
from clarion.webhooks.targets import AllowList, UnsafeTarget, checked_addresses, resolve

from ..conftest import timeout as scaled

STUCK = ".stuck.invalid"


class HangingDns:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked: Counter[str] = Counter()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def wrap(self, real: Any) -> Any:
        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not str(host).endswith(STUCK):
                return real(host, *args, **kwargs)
            with self._lock:
                self.asked[host] += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                # Bounded, so that nothing of the test outlives it by much.
                self.release.wait(scaled(30))
                if host.startswith("gone."):
                    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
                return real("127.0.0.1", *args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        return getaddrinfo


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingDns]:
    hanging = HangingDns()
    monkeypatch.setattr(socket, "getaddrinfo", hanging.wrap(socket.getaddrinfo))
    try:
        yield hanging
    finally:
        hanging.release.set()


async def test_hanging_lookups_leave_the_default_executor_free(dns: HangingDns) -> None:
    loop = asyncio.get_running_loop()

    async def deliver(host: str) -> None:
        # A delivery gives up after its timeout; its lookup goes on without it.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await resolve(host, 443)

    names = [f"n{i}{STUCK}" for i in range(12)]
    await asyncio.gather(*(deliver(name) for name in names for _ in range(3)))
    # The default executor's threads (six on two cores) are all free: a host name the rest of
    # the process resolves (as Redis' client does when it reconnects) and work handed to a
    # thread are answered at once.
    began = time.monotonic()
    async with asyncio.timeout(scaled(2)):
        await loop.getaddrinfo("localhost", 6379, type=socket.SOCK_STREAM)
        await asyncio.to_thread(lambda: None)
    assert time.monotonic() - began < scaled(1)
    # At most THREADS lookups at once; a name asked for by several callers is looked up once.
    assert dns.most == THREADS
    assert set(dns.asked) <= set(names) and max(dns.asked.values()) == 1

    # Once the DNS answers, the queued names are looked up, each once, and a caller asking
    # again is answered.
    dns.release.set()
    async with asyncio.timeout(scaled(10)):
        while len(dns.asked) < len(names) or dns.running:
            await asyncio.sleep(0.02)
    assert set(dns.asked.values()) == {1}
    assert await resolve(names[0], 443) == [ipaddress.ip_address("127.0.0.1")]


async def test_callers_of_one_lookup_share_its_answer_and_its_failure(dns: HangingDns) -> None:
    allow = AllowList(["127.0.0.0/8"])
    waiting = [
        asyncio.ensure_future(checked_addresses(f"ok{STUCK}", 80, allow)) for _ in range(5)
    ] + [asyncio.ensure_future(resolve(f"gone{STUCK}", 80)) for _ in range(5)]
    async with asyncio.timeout(scaled(5)):
        while len(dns.asked) < 2:
            await asyncio.sleep(0.01)
    # One caller giving up takes nothing from the others.
    waiting[0].cancel()
    waiting[5].cancel()
    dns.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:5] == [[ipaddress.ip_address("127.0.0.1")]] * 4
    assert all(isinstance(r, UnsafeTarget) and "cannot resolve" in str(r) for r in results[6:])
    assert dns.asked == Counter({f"ok{STUCK}": 1, f"gone{STUCK}": 1})


async def test_names_resolve_as_the_socket_layer_sees_them() -> None:
    addresses = {str(a) for a in await resolve("localhost", 80)}
    assert addresses and addresses <= {"127.0.0.1", "::1"}


def _resolve_in_child() -> None:
    async def main() -> None:
        async with asyncio.timeout(5):
            await resolve("localhost", 80)

    asyncio.run(main())


async def test_a_forked_child_resolves_with_threads_of_its_own() -> None:
    """A server that forks its workers after the app is loaded (gunicorn's preload) gives each
    a copy of the lookups' state, but none of their threads."""
    for _ in range(THREADS):  # every thread of the parent's is started
        await resolve("localhost", 80)
    child = multiprocessing.get_context("fork").Process(target=_resolve_in_child)
    child.start()
    await asyncio.to_thread(child.join, scaled(20))
    assert child.exitcode == 0
