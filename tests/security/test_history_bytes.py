"""Reads of stored publications stop at the send budget: one small request, many megabytes.

A channel holds far more than one connection's budget (``limits.send_queue_bytes``). Every path
that returns or replays stored publications — the history API, the client API, the WebSocket
``history`` op, a resume from a forged cursor at offset 0 on ``/ws``, ``/sse`` and STOMP — must
hand a peer at most about one budget per reply or connection, and say where to go on (``more``
and ``cursor``, or the slow-consumer close and the last cursor delivered), so that paging on
gets every publication, in order, once. Over real sockets, on clarion's server and under the
portable ASGI path; the history API on the Redis engine too; and the RSS of a real process
and CPU time of a real process under the attacks themselves (non-reading sockets asking for the
whole history); and the Python client, which takes a deep backlog in pieces by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from clarion.protocol.cursor import encode_single

from ..conftest import RunningHub, clarion_server, timeout
from ..redis_fixture import RedisServer, redis_server  # noqa: F401  (a fixture)
from ..stomp.client import stomp
from ..transports.streams import sse
from .rawws import TEXT, UPGRADE, masked

BUDGET = 64 * 1024
PAD = 4000  # bytes of padding per publication: about 4 KB each
COUNT = 200  # some 800 KB: a dozen budgets
CHANNEL = "quiet:big"
CLARION_V1 = [Subprotocol("clarion.v1")]
# A history reply fits the budget, its own fields included. A resumed connection gets half of
# it in publications, and their framing (ids, headers) on top: within the budget too.
BOUND = BUDGET


async def filled(factory: Callable[..., Any], **settings: Any) -> RunningHub:
    running: RunningHub = await factory(
        limits={"send_queue_bytes": BUDGET},
        namespaces={"quiet": {"history_size": 1000, "history_ttl": 3600}},
        **settings,
    )
    for n in range(COUNT):
        await running.hub.publish(CHANNEL, {"n": n, "pad": "x" * PAD})
    return running


async def epoch_of(running: RunningHub) -> str:
    """The channel's epoch: with offset 0, a cursor anyone can build (``test_cursors.py``)."""
    history, _ = await running.hub.history(CHANNEL, limit=1)
    return history.position.epoch


async def page_through(
    http: httpx.AsyncClient, path: str, *, reverse: bool
) -> tuple[list[int], list[int]]:
    """Every page of the channel's history as a client pages it; the publications' ``n`` in
    the order read, and each reply's size in bytes."""
    seen: list[int] = []
    sizes: list[int] = []
    since: str | None = None
    while True:
        params = {"channel": CHANNEL, "limit": "1000"}
        if reverse:
            params["reverse"] = "1"
        if since is not None:
            params["since"] = since
        r = await http.get(path, params=params)
        assert r.status_code == 200, r.text
        sizes.append(len(r.content))
        body = r.json()
        seen += [p["data"]["n"] for p in body["publications"]]
        assert len(sizes) <= COUNT, "paging does not end"
        if not body["more"]:
            return seen, sizes
        since = body["cursor"]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("path", ["/api/history", "/client/history"])
async def test_history_replies_stop_at_the_budget_and_page_on(
    hub_factory: Callable[..., Any], path: str, reverse: bool
) -> None:
    running = await filled(hub_factory)
    async with running.http() as http:
        seen, sizes = await page_through(http, path, reverse=reverse)
    expected = list(range(COUNT))
    assert seen == (expected[::-1] if reverse else expected)  # all of them, once, in order
    assert max(sizes) <= BOUND, sizes
    assert len(sizes) >= COUNT * PAD // BOUND  # the budget cut them, not the count


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
async def test_history_api_on_the_redis_engine(
    hub_factory: Callable[..., Any],
    redis_server: RedisServer,  # noqa: F811
    reverse: bool,
) -> None:
    """Read from Redis in growing pieces until the page is full: the same pages."""
    running = await filled(hub_factory, engine=redis_server.url)
    async with running.http() as http:
        seen, sizes = await page_through(http, "/api/history", reverse=reverse)
    assert seen == (list(range(COUNT))[::-1] if reverse else list(range(COUNT)))
    assert max(sizes) <= BOUND, sizes
    assert len(sizes) >= COUNT * PAD // BOUND


async def test_history_op_replies_stop_at_the_budget(hub_factory: Callable[..., Any]) -> None:
    running = await filled(hub_factory)
    seen: list[int] = []
    sizes: list[int] = []
    async with websockets.connect(
        running.ws_url,
        subprotocols=CLARION_V1,
        max_size=None,
        open_timeout=timeout(5),
    ) as conn:
        since = None
        for rid in range(1, COUNT + 1):
            op: dict[str, Any] = {"id": rid, "op": "history", "channel": CHANNEL, "limit": 1000}
            if since is not None:
                op["since"] = since
            await conn.send(json.dumps(op))
            raw = await asyncio.wait_for(conn.recv(), timeout(5))
            sizes.append(len(raw))
            reply = json.loads(raw)["ok"]
            seen += [p["data"]["n"] for p in reply["publications"]]
            if not reply["more"]:
                break
            since = reply["cursor"]
    assert seen == list(range(COUNT))
    assert max(sizes) <= BOUND, sizes


async def resumed_over_sse(running: RunningHub, *also: str) -> tuple[list[int], list[int]]:
    """Resume from offset 0 as a browser would, reconnecting with its last id after each
    4001 (on one stream with the channels ``also``); the ``n`` of every publication got, and
    the bytes of each connection."""
    cursor = encode_single(CHANNEL, await epoch_of(running), 0)
    seen: list[int] = []
    sizes: list[int] = []
    headers: dict[str, str] = {}
    params: dict[str, Any] = {"cursor": cursor}
    while len(seen) < COUNT:
        assert len(sizes) <= COUNT, "resuming makes no progress"
        size = 0
        async with sse(running, CHANNEL, *also, headers=headers, **params) as stream:
            pass  # the opening has no id when the replay is cut: the events do
            while len(seen) < COUNT:
                event = await stream.next()
                size += len(event.data) + len(event.id)
                if event.event == "disconnect":
                    assert event.json()["code"] == 4001, event.data
                    break
                assert event.event == "message", event
                seen.append(event.json()["data"]["n"])
            last = stream.last_id
        sizes.append(size)
        headers, params = {"last-event-id": last}, {}
    return seen, sizes


async def test_sse_resume_from_offset_zero_comes_in_budgets(
    hub_factory: Callable[..., Any],
) -> None:
    running = await filled(hub_factory)
    seen, sizes = await resumed_over_sse(running)
    assert seen == list(range(COUNT))  # nothing lost, nothing twice
    assert max(sizes) <= BOUND, sizes
    assert len(sizes) > 2


async def test_sse_stream_of_several_channels_resumes_in_budgets(
    hub_factory: Callable[..., Any],
) -> None:
    running = await filled(hub_factory)
    seen, sizes = await resumed_over_sse(running, "quiet:other")
    assert seen == list(range(COUNT))
    assert max(sizes) <= BOUND, sizes


async def test_a_resume_of_many_channels_counts_its_id_lines_too(
    hub_factory: Callable[..., Any],
) -> None:
    # Each event of a stream of many channels carries an ``id:`` naming all their positions:
    # 128 channels make it some 4 KB, however small the publication it goes with.
    running: RunningHub = await hub_factory(
        limits={"send_queue_bytes": BUDGET}, namespaces={"quiet": {"history_size": 100}}
    )
    channels = [f"quiet:{n}" for n in range(128)]
    cursors = []
    for channel in channels:
        for n in range(20):
            pub = await running.hub.publish(channel, {"n": n})
        cursors.append(encode_single(channel, pub.epoch, 0))
    params = [("channel", c) for c in channels] + [("cursor", c) for c in cursors]
    streamed = events = 0
    async with running.http() as http, http.stream("GET", "/sse", params=params) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():  # until the hub ends it: the replay was cut
            streamed += len(chunk)
            events += chunk.count(b"event: message\n")
            assert streamed <= 2 * BOUND, streamed
    assert events > 0  # it did replay: the client gets further each time


async def test_ws_resume_from_offset_zero_comes_in_budgets(
    hub_factory: Callable[..., Any],
) -> None:
    running = await filled(hub_factory)
    since = encode_single(CHANNEL, await epoch_of(running), 0)
    seen: list[int] = []
    sizes: list[int] = []
    while len(seen) < COUNT:
        assert len(sizes) <= COUNT, "resuming makes no progress"
        size = 0
        async with websockets.connect(
            running.ws_url, subprotocols=CLARION_V1, open_timeout=timeout(5)
        ) as conn:
            await conn.send(json.dumps({"id": 1, "op": "subscribe", "channel": CHANNEL,
                                        "since": since}))  # fmt: skip
            try:
                while len(seen) < COUNT:
                    raw = await asyncio.wait_for(conn.recv(), timeout(5))
                    size += len(raw)
                    msg = json.loads(raw)
                    if "offset" in msg:
                        seen.append(msg["data"]["n"])
                        since = msg["cursor"]
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 4001, exc
        sizes.append(size)
    assert seen == list(range(COUNT))
    assert max(sizes) <= BOUND, sizes


@pytest.mark.parametrize("shared", [False, True], ids=["first", "further"])
async def test_stomp_resume_from_offset_zero_comes_in_budgets(
    hub_factory: Callable[..., Any], shared: bool
) -> None:
    """``x-since`` on a connection's first subscription to the destination, and on a further
    one (which reads history alone, beside the live one)."""
    running = await filled(hub_factory)
    since = encode_single(CHANNEL, await epoch_of(running), 0)
    destination = "/topic/" + CHANNEL.replace(":", "\\c")
    seen: list[int] = []
    sizes: list[int] = []
    while len(seen) < COUNT:
        assert len(sizes) <= COUNT, "resuming makes no progress"
        size = 0
        async with stomp(running, max_size=None) as client:
            await client.connect()
            if shared:
                await client.send("SUBSCRIBE", id="live", destination=destination, receipt="r0")
                await client.expect("RECEIPT")
            await client.send(
                "SUBSCRIBE", id="s", destination=destination, x_since=since, receipt="r1"
            )
            try:
                while len(seen) < COUNT:
                    got = await client.recv()
                    size += len(got.body)
                    if got.command == "ERROR":
                        assert "slow" in got.headers.get("message", "") + got.body.decode()
                        break
                    if got.command == "MESSAGE" and got.headers["subscription"] == "s":
                        seen.append(got.json()["n"])
                        since = got.headers["message-id"]
            except ConnectionClosed:
                pass
        sizes.append(size)
    assert seen == list(range(COUNT))
    assert max(sizes) <= BOUND, sizes


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def big_channel(proc: Any, count: int = 200) -> None:
    """``count`` publications of 60 KB (200: 12 MB): the attack's channel, scaled down."""
    async with httpx.AsyncClient(base_url=proc.http_url, timeout=timeout(10)) as http:
        for n in range(count):
            r = await http.post(
                "/api/publish", json={"channel": CHANNEL, "data": {"n": n, "pad": "x" * 60000}}
            )
            assert r.status_code == 200, r.text


BIG_ENV = {
    "CLARION_NAMESPACES__QUIET__HISTORY_SIZE": "1000",
    "CLARION_NAMESPACES__QUIET__HISTORY_TTL": "3600",
}


def small_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


@clarion_server("the RSS of a real clarion serve process")
async def test_non_reading_history_readers_do_not_grow_the_hub(
    hub_process: Callable[..., Any],
) -> None:
    """20 sockets with a 4 KB receive buffer ask ``/client/history`` for everything and never
    read. Each used to get one 12 MB body; now each gets one budget (1 MiB by default)."""
    proc = await hub_process(env=BIG_ENV)
    await big_channel(proc)
    before = proc.rss_bytes()
    sockets = [small_socket(proc.port) for _ in range(20)]
    for sock in sockets:
        sock.sendall(
            f"GET /client/history?channel={CHANNEL}&limit=1000 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
    await asyncio.sleep(1.5)
    grown = proc.rss_bytes() - before
    async with httpx.AsyncClient(base_url=proc.http_url, timeout=timeout(10)) as http:
        started = time.monotonic()
        assert (await http.get("/healthz")).status_code == 200
        waited = time.monotonic() - started
    for sock in sockets:
        sock.close()
    # The history's JSON is kept once (12 MB); twenty whole-history replies would add 240 MB.
    assert grown < 80 * 1024 * 1024, f"RSS grew {grown >> 20} MB"
    assert waited < timeout(0.5)


@clarion_server("the CPU time of a real clarion serve process")
async def test_history_ops_of_peers_that_do_not_read_cost_a_budget_each(
    hub_process: Callable[..., Any],
) -> None:
    """20 WebSocket peers send five ``history`` ops of 70 bytes each and never read: each op
    used to build a 30 MB reply (the hub busy for seconds); now one budget at most."""
    proc = await hub_process(env=BIG_ENV)
    await big_channel(proc, 500)
    op = json.dumps({"op": "history", "channel": CHANNEL, "limit": 1000}).encode()
    upgrade = UPGRADE.format(path="/ws", subprotocol="clarion.v1").encode()
    sockets = []
    before = cpu_seconds(proc.proc.pid)
    for _ in range(20):
        sock = small_socket(proc.port)
        sock.sendall(upgrade + b"".join(masked(TEXT, op) for _ in range(5)))
        sockets.append(sock)
    await asyncio.sleep(2)
    spent = cpu_seconds(proc.proc.pid) - before
    for sock in sockets:
        sock.close()
    # Replies of 30 MB: seconds of CPU (a peer's first op is enough); of one MiB, a fraction.
    assert spent < 0.6, f"{spent:.2f} s of CPU"


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_the_python_client_resumes_a_deep_backlog_by_itself(
    hub_factory: Callable[..., Any], transport: Literal["ws", "sse", "poll"]
) -> None:
    """Given a cursor at offset 0, the client gets every publication once, in order, whatever
    closes (4001) come between the pieces; a history page loop gets them all too."""
    from clarion.client import Backoff, Message, connect

    running = await filled(hub_factory)
    since = encode_single(CHANNEL, await epoch_of(running), 0)
    seen: list[int] = []
    async with (
        connect(
            running.http_url, transport=transport, backoff=Backoff(base=0.01, cap=0.05)
        ) as client,
        client.subscribe(CHANNEL, since=since) as sub,
    ):
        async with asyncio.timeout(timeout(30)):
            async for item in sub:
                assert isinstance(item, Message), item
                seen.append(item.data["n"])
                if len(seen) == COUNT:
                    break
        pages, page_since = [], None
        while True:
            page = await client.history(CHANNEL, since=page_since, limit=1000)
            pages.append([m.data["n"] for m in page.publications])
            if not page.more:
                break
            page_since = page.cursor
    assert seen == list(range(COUNT))
    assert [n for page in pages for n in page] == list(range(COUNT))
    assert len(pages) > 2
