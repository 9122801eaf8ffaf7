"""State on subscribe (``latest``) on every transport, and history read backwards, over real
sockets on both engines (on Redis, publishing on one node and reading on another)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from clarion.client import connect
from clarion.settings import NamespaceOptions

from ..conftest import RunningHub, timeout
from ..stomp.client import stomp
from ..transports.streams import poll, sse

pytestmark = pytest.mark.timeout(90)

SETTINGS: dict[str, Any] = {"namespaces": {"feed": NamespaceOptions(history_size=1000)}}


async def publish_n(hub: RunningHub, channel: str, n: int) -> list[dict[str, Any]]:
    return [await hub.publish(channel, {"n": i}) for i in range(1, n + 1)]


# ---- history, newest first ------------------------------------------------------------------


async def test_reverse_history_pages_back_through_250_without_gap_or_duplicate(
    nodes: Callable[..., Any],
) -> None:
    writer: RunningHub = await nodes(**SETTINGS)
    reader: RunningHub = await nodes(**SETTINGS)
    await publish_n(writer, "feed:r", 250)

    async def by_ws() -> list[int]:
        seen: list[int] = []
        async with reader.ws() as ws:
            fields: dict[str, Any] = {"channel": "feed:r", "reverse": True, "limit": 40}
            while True:
                reply = (await ws.call("history", **fields))["ok"]
                seen += [p["data"]["n"] for p in reply["publications"]]
                if not reply["more"]:
                    return seen
                fields["since"] = reply["cursor"]

    async def by_api() -> list[int]:
        seen: list[int] = []
        params: dict[str, Any] = {"channel": "feed:r", "reverse": "1", "limit": 33}
        async with reader.http() as http:
            while True:
                r = await http.get("/api/history", params=params)
                assert r.status_code == 200, r.text
                body = r.json()
                seen += [p["data"]["n"] for p in body["publications"]]
                if not body["more"]:
                    return seen
                params["since"] = body["cursor"]

    async def by_client(transport: str) -> list[int]:
        seen: list[int] = []
        async with connect(reader.http_url, transport=transport) as client:
            since = None
            while True:
                page = await client.history("feed:r", since, 64, reverse=True)
                seen += [m.data["n"] for m in page.publications]
                if not page.more:
                    return seen
                since = page.cursor

    expected = list(range(250, 0, -1))
    assert await by_ws() == expected
    assert await by_api() == expected
    assert await by_client("ws") == expected
    assert await by_client("sse") == expected  # through the server API


async def test_reverse_history_edges(nodes: Callable[..., Any]) -> None:
    hub: RunningHub = await nodes(**SETTINGS)
    async with hub.ws() as ws:
        empty = (await ws.call("history", channel="feed:none", reverse=True))["ok"]
        assert empty["publications"] == [] and empty["more"] is False
        await publish_n(hub, "feed:e", 3)
        newest = (await ws.call("history", channel="feed:e", reverse=True, limit=1))["ok"]
        assert [p["offset"] for p in newest["publications"]] == [3] and newest["more"]
        rest = (await ws.call("history", channel="feed:e", reverse=True, since=newest["cursor"]))[
            "ok"
        ]
        assert [p["offset"] for p in rest["publications"]] == [2, 1] and not rest["more"]
        forward = (await ws.call("history", channel="feed:e"))["ok"]
        assert [p["offset"] for p in forward["publications"]] == [1, 2, 3]  # unchanged
        bad = await ws.call("history", channel="feed:e", reverse="yes")
        assert "error" in bad
    async with hub.http() as http:
        r = await http.get("/api/history", params={"channel": "feed:e", "reverse": "maybe"})
        assert r.status_code == 400


# ---- latest on subscribe --------------------------------------------------------------------


async def test_latest_on_ws(nodes: Callable[..., Any]) -> None:
    writer: RunningHub = await nodes(**SETTINGS)
    reader: RunningHub = await nodes(**SETTINGS)
    pubs = await publish_n(writer, "feed:ws", 3)
    async with reader.ws() as ws:
        reply = await ws.subscribe("feed:ws", latest=True)
        assert reply["ok"]["offset"] == 3
        # It stands just before the newest until that comes: where the second one left it.
        assert reply["ok"]["since"] == pubs[1]["cursor"]
        first = await ws.recv()
        assert first["data"] == {"n": 3} and first["cursor"] == pubs[2]["cursor"]
        await writer.publish("feed:ws", {"n": 4})
        assert (await ws.recv())["data"] == {"n": 4}  # then live, nothing twice
        # Without latest: nothing before the live ones.
        assert "since" not in (await ws.subscribe("feed:ws2"))["ok"]
        await writer.publish("feed:ws2", "live")
        assert (await ws.recv())["data"] == "live"
        # A channel with nothing stored: nothing before the live ones either.
        assert "since" not in (await ws.subscribe("feed:ws3", latest=True))["ok"]
        await writer.publish("feed:ws3", "first")
        assert (await ws.recv())["data"] == "first"


async def test_latest_with_since_resumes_instead(nodes: Callable[..., Any]) -> None:
    writer: RunningHub = await nodes(**SETTINGS)
    reader: RunningHub = await nodes(**SETTINGS)
    pubs = await publish_n(writer, "feed:s", 4)
    async with reader.ws() as ws:
        reply = await ws.subscribe("feed:s", latest=True, since=pubs[1]["cursor"])
        assert reply["ok"]["since"] == pubs[1]["cursor"]
        got = [(await ws.recv())["data"]["n"] for _ in range(2)]
        assert got == [3, 4]
    async with sse(reader, "feed:s", latest="1", cursor=pubs[2]["cursor"]) as stream:
        await stream.opening()
        assert [p["data"]["n"] for _, p in await stream.messages(1)] == [4]
    async with reader.http() as http:
        body = await poll(http, "feed:s", latest="1", cursor=pubs[0]["cursor"], timeout="0")
        assert [p["data"]["n"] for p in body["publications"]] == [2, 3, 4]
    async with stomp(reader) as client:
        await client.connect()
        headers = {"x-latest": "true", "x-since": pubs[2]["cursor"]}
        await client.send("SUBSCRIBE", id="s", destination="/topic/feed:s", **headers)
        message = await client.expect("MESSAGE")
        assert message.json()["n"] == 4


async def test_latest_on_sse_poll_and_stomp(nodes: Callable[..., Any]) -> None:
    writer: RunningHub = await nodes(**SETTINGS)
    reader: RunningHub = await nodes(**SETTINGS)
    pubs = await publish_n(writer, "feed:t", 5)
    async with sse(reader, "feed:t", latest="1") as stream:
        await stream.opening()
        [(event_id, pub)] = await stream.messages(1)
        assert pub["data"] == {"n": 5} and event_id == pubs[4]["cursor"]
    async with sse(reader, "feed:t", "feed:u", latest="true") as stream:
        await stream.opening()
        [(_, pub)] = await stream.messages(1)
        assert pub["data"] == {"n": 5}  # feed:u holds nothing: nothing for it
    async with reader.http() as http:
        body = await poll(http, "feed:t", latest="1")
        assert [p["data"]["n"] for p in body["publications"]] == [5]
        assert body["cursor"] == pubs[4]["cursor"]
        plain = await poll(http, "feed:t", timeout="0")
        assert plain["publications"] == []
        bad = await poll(http, "feed:t", latest="2", expect=400)
        assert bad["error"]["code"] == "bad_request"
    async with stomp(reader) as client:
        await client.connect()
        await client.send(
            "SUBSCRIBE", id="s", destination="/topic/feed:t", receipt="r", **{"x-latest": "true"}
        )
        # It starts just before the newest, which comes next.
        assert (await client.expect("RECEIPT")).headers["x-cursor"] == pubs[3]["cursor"]
        message = await client.expect("MESSAGE")
        assert message.json() == {"n": 5}
        await writer.publish("feed:t", {"n": 6})
        assert (await client.expect("MESSAGE")).json() == {"n": 6}


async def test_latest_in_the_python_client(nodes: Callable[..., Any]) -> None:
    writer: RunningHub = await nodes(**SETTINGS)
    reader: RunningHub = await nodes(**SETTINGS)
    pubs = await publish_n(writer, "feed:c", 2)
    for transport in ("ws", "sse", "poll"):
        async with connect(reader.http_url, transport=transport) as client:
            sub = client.subscribe("feed:c", latest=True)
            if transport == "ws":
                # Confirmed, nothing read yet: it stands just before the newest, so a
                # reconnect now asks for it again.
                await asyncio.wait_for(sub.ready(), timeout(10))
                assert sub.cursor == pubs[0]["cursor"]
            first = await asyncio.wait_for(anext(aiter(sub)), timeout(10))
            assert first.data == {"n": 2}, transport
