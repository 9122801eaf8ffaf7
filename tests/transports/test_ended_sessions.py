"""A session that ends, on every transport and however it ends, leaves none of the hub's
objects in a reference cycle: reference counting frees them when it ends.

Whatever a cycle holds (the session, its transport, pipe, buffers, the HTTP connection) waits
for the collector's oldest generation, which runs rarely and walks every object the hub holds:
after 9,000 event streams dropped at once, 47 objects each, a pause of 0.4 s, and their memory
held until then (``benchmarks/drop_garbage.py``). Each case ends a few sessions, then asks the
collector (``DEBUG_SAVEALL``) what it would have had to free of clarion's own objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import pytest
import websockets

from clarion.core.auth import mint_token

from ..conftest import RunningHub, both_servers, timeout, until
from ..redis_fixture import RedisServer

SECRET = "ended-sessions-secret-0123456789abcdef"
SESSIONS = 3  # of each case: a cycle per session shows as a multiple


def token(user: str) -> str:
    return mint_token(SECRET, user, ["chat:*"], publish=["chat:*"])


@contextlib.asynccontextmanager
async def collector_held() -> AsyncIterator[Callable[[], Counter[str]]]:
    """No automatic collection in between (it would free a cycle before it is counted);
    the function yielded collects and names clarion's objects that only the collector freed."""
    gc.collect()
    gc.disable()

    def left() -> Counter[str]:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            return Counter(
                f"{type(o).__module__}.{type(o).__qualname__}"
                for o in gc.garbage
                if type(o).__module__.startswith("clarion.")
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    try:
        yield left
    finally:
        gc.enable()


async def settled(running: RunningHub) -> None:
    """Every session gone, and on clarion's server every connection and request task (the
    test's own publishing connection closed first: the hub would keep it until it idles)."""
    await running.close_client()
    await until(lambda: not running.hub.registry.sessions, timeout(10))
    registry = getattr(running.server, "registry", None)
    if registry is not None:
        await until(lambda: not registry.connections and not registry.tasks, timeout(10))
    await asyncio.sleep(0.05)  # the callbacks that follow a close (done callbacks, pipes)


async def ws_session(running: RunningHub, path: str, end: str, shared: bool = False) -> None:
    """A session subscribed to ``chat:a`` (on STOMP twice when ``shared``: one hub subscription
    fanned out to both) that gets a publication, then ends as ``end`` says."""
    stomp = path == "/stomp"
    url = f"ws://127.0.0.1:{running.port}{path}?token={token('alice')}"
    conn = await websockets.connect(
        url, subprotocols=["v12.stomp" if stomp else "clarion.v1"], open_timeout=timeout(5)
    )
    try:
        if stomp:
            await conn.send("CONNECT\naccept-version:1.2\nhost:hub\n\n\x00")
            assert (await asyncio.wait_for(conn.recv(), timeout(5))).startswith("CONNECTED")
            for sub in ("1", "2") if shared else ("1",):
                frame = f"SUBSCRIBE\nid:{sub}\ndestination:/topic/chat:a\nreceipt:r\n\n\x00"
                await conn.send(frame)
                assert "RECEIPT" in await asyncio.wait_for(conn.recv(), timeout(5))
        else:
            await conn.send(json.dumps({"id": 1, "op": "subscribe", "channel": "chat:a"}))
            assert json.loads(await asyncio.wait_for(conn.recv(), timeout(5)))["id"] == 1
        await running.publish("chat:a", {"n": 1})
        await asyncio.wait_for(conn.recv(), timeout(5))  # the publication
        if end == "client":
            if stomp:
                await conn.send("DISCONNECT\nreceipt:bye\n\n\x00")
            await conn.close()
        elif end == "abort":
            assert conn.transport is not None
            conn.transport.abort()
        else:  # the hub ends it
            await running.hub.disconnect_user("alice")
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(conn.recv(), timeout(5))
    finally:
        await conn.close()


async def sse_session(
    running: RunningHub, channels: list[str], end: str, added: str | None = None
) -> None:
    """A stream of ``channels`` (and of ``added`` too, subscribed by the backend once it is
    open, which moves a one-channel stream to the several channels' events) that gets a
    publication, then ends as ``end`` says."""
    async with httpx.AsyncClient(base_url=running.http_url, timeout=timeout(10)) as http:
        params = [("channel", c) for c in channels] + [("token", token("alice"))]
        async with http.stream("GET", "/sse", params=params) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            await anext(lines)  # the stream's opening
            if added is not None:
                subscribed = await http.post(
                    "/api/subscribe",
                    json={"user": "alice", "channel": added},
                    headers={"authorization": "apikey backend-key"},
                )
                assert subscribed.status_code == 200, subscribed.text
            await running.publish(added or channels[0], {"n": 1})
            async for line in lines:
                if line.startswith("data:") and '"n"' in line:
                    break
            if end == "hub":
                await running.hub.disconnect_user("alice")
                async for _ in lines:
                    pass  # to the end the hub gives it


async def poll_session(running: RunningHub, end: str) -> None:
    async with httpx.AsyncClient(base_url=running.http_url, timeout=timeout(10)) as http:
        params = {"channel": "chat:a", "token": token("alice")}
        if end == "now":
            r = await http.get("/poll", params={**params, "timeout": "0"})
            assert r.status_code == 200, r.text
            return
        waiting = asyncio.create_task(http.get("/poll", params={**params, "timeout": "20"}))
        await until(lambda: running.hub.registry.sessions, timeout(5))
        if end == "answered":
            await running.publish("chat:a", {"n": 1})
            assert (await waiting).status_code == 200
        elif end == "hub":
            await running.hub.disconnect_user("alice")
            with contextlib.suppress(httpx.HTTPError):
                await waiting
        else:  # the client leaves while it waits
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting


async def client_api(running: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=running.http_url, timeout=timeout(10)) as http:
        auth = {"authorization": f"Bearer {token('alice')}"}
        r = await http.post("/client/publish", json={"channel": "chat:a", "data": 1}, headers=auth)
        assert r.status_code == 200, r.text
        r = await http.get("/client/history", params={"channel": "chat:a"}, headers=auth)
        assert r.status_code == 200, r.text


CASES: dict[str, Callable[[RunningHub], Awaitable[None]]] = {
    **{f"ws-{end}": partial(ws_session, path="/ws", end=end) for end in ("client", "abort", "hub")},
    **{
        f"stomp-{end}": partial(ws_session, path="/stomp", end=end)
        for end in ("client", "abort", "hub")
    },
    "stomp-shared-client": partial(ws_session, path="/stomp", end="client", shared=True),
    **{
        f"sse-{name}-{end}": partial(sse_session, channels=channels, end=end)
        for name, channels in (("one-channel", ["chat:a"]), ("two-channels", ["chat:a", "chat:b"]))
        for end in ("client", "hub")
    },
    **{
        f"sse-added-channel-{end}": partial(
            sse_session, channels=["chat:a"], end=end, added="chat:b"
        )
        for end in ("client", "hub")
    },
    **{
        f"poll-{end}": partial(poll_session, end=end)
        for end in ("now", "answered", "client", "hub")
    },
    "client-api": client_api,
}


@both_servers
@pytest.mark.parametrize("case", list(CASES))
async def test_an_ended_session_leaves_nothing_to_the_collector(
    hub_factory: Callable[..., Any], case: str
) -> None:
    running: RunningHub = await hub_factory(token_secret=SECRET, api_key="backend-key")
    await ended_cleanly(running, CASES[case])


@pytest.mark.parametrize(
    "case", ["ws-client", "stomp-abort", "sse-two-channels-client", "poll-hub"]
)
async def test_an_ended_session_on_redis_leaves_nothing_to_the_collector(
    hub_factory: Callable[..., Any], redis_server: RedisServer, case: str
) -> None:
    """The engine's side of a session (its subscriptions, presence) ends as cleanly."""
    running: RunningHub = await hub_factory(
        token_secret=SECRET, api_key="backend-key", engine=redis_server.url
    )
    await ended_cleanly(running, CASES[case])


async def ended_cleanly(running: RunningHub, run: Callable[[RunningHub], Awaitable[None]]) -> None:
    await run(running)  # once first: what a hub makes once (caches, tables) is not counted
    await settled(running)
    async with collector_held() as left:
        for _ in range(SESSIONS):
            await run(running)
        await settled(running)
        found = left()
    assert not found, f"left in reference cycles by {SESSIONS} sessions: {dict(found)}"
