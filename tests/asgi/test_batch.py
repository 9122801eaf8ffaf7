"""``POST /api/publish_batch`` over real HTTP, on the memory engine and on a real Redis: each
publication answered as ``POST /api/publish`` would answer it, in order, each on its own."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from clarion.asgi.publish import MAX_BATCH, NOT_ATTEMPTED

from ..conftest import RunningHub, until
from ..redis_fixture import RedisServer, redis_server

__all__ = ["redis_server"]


@pytest.fixture(params=["memory", "redis"])
async def engine_hub(
    request: pytest.FixtureRequest, hub_factory: Callable[..., Any]
) -> AsyncIterator[RunningHub]:
    if request.param == "memory":
        yield await hub_factory()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        yield await hub_factory(engine=server.url)


async def test_each_publication_is_answered_in_order_and_on_its_own(
    engine_hub: RunningHub,
) -> None:
    hub = engine_hub
    async with hub.ws() as a, hub.ws() as b, hub.http() as http:
        await a.subscribe("a")
        await b.subscribe("b")
        publications: list[Any] = [
            {"channel": "a", "data": 1},
            {"channel": "b", "data": "x", "id": "k"},
            {"channel": "a b", "data": 2},  # refused: the channel's name
            {"channel": "a", "data": 3},
            7,  # refused: not an object
            {"channel": "b", "data": "again", "id": "k"},  # a repeat: the first's answer
            {"channel": "a"},  # refused: no data
            {"channel": "a", "data": 4},
        ]
        r = await http.post("/api/publish_batch", json={"publications": publications})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        results = r.json()["results"]
        assert len(results) == len(publications)
        assert [x.get("offset") for x in results] == [1, 1, None, 2, None, 1, None, 3]
        assert [x["error"]["code"] for x in results if "error" in x] == [
            "bad_channel",
            "bad_request",
            "bad_request",
        ]
        assert results[5] == results[1]
        # Each answer is a publish's: the same cursor that channel's history gives.
        history = (await http.get("/api/history", params={"channel": "a"})).json()
        assert [p["data"] for p in history["publications"]] == [1, 3, 4]
        assert [p["cursor"] for p in history["publications"]] == [
            results[i]["cursor"] for i in (0, 3, 7)
        ]
        assert [(await a.recv())["data"] for _ in range(3)] == [1, 3, 4]
        assert (await b.recv())["data"] == "x"
        # The repeat was not delivered again: the next publication is what comes.
        await http.post("/api/publish", json={"channel": "b", "data": "next"})
        assert (await b.recv())["data"] == "next"


async def test_one_channel_keeps_the_order_of_the_list(engine_hub: RunningHub) -> None:
    """Many publications to a few channels in one batch: each channel's offsets follow the
    list, and its subscriber receives them in that order."""
    hub = engine_hub
    items = [{"channel": f"c{k % 3}", "data": k} for k in range(300)]
    async with hub.ws() as ws, hub.http() as http:
        await ws.subscribe("c1")
        results = (await http.post("/api/publish_batch", json={"publications": items})).json()
        offsets = [r["offset"] for r in results["results"]]
        for channel in range(3):
            assert offsets[channel::3] == list(range(1, 101))
        got = [(await ws.recv())["data"] for _ in range(100)]
        assert got == list(range(1, 300, 3))


async def test_ephemeral_items(hub_factory: Callable[..., Any]) -> None:
    hub = await hub_factory(namespaces={"live": {"ephemeral": True}})
    async with hub.ws() as ws, hub.http() as http:
        await ws.subscribe("live:x")
        await ws.subscribe("y")
        body = {
            "publications": [
                {"channel": "live:x", "data": 1},
                {"channel": "y", "data": 2, "ephemeral": True, "key": "k"},
                {"channel": "y", "data": 3, "key": "k"},  # a key without ephemeral: refused
                {"channel": "y", "data": 4},
            ]
        }
        results = (await http.post("/api/publish_batch", json=body)).json()["results"]
        assert results[0] == {"ephemeral": True} and results[1] == {"ephemeral": True}
        assert results[2]["error"]["code"] == "bad_request"
        assert results[3]["offset"] == 1
        assert (await ws.recv())["data"] == 1
        assert [(await ws.recv())["data"] for _ in range(2)] == [2, 4]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{nope", 400, "bad_request"),
        (b"[1]", 400, "bad_request"),
        (b"{}", 400, "bad_request"),
        (b'{"publications": []}', 400, "bad_request"),
        (b'{"publications": {"channel": "a", "data": 1}}', 400, "bad_request"),
        (b'{"publications": "a"}', 400, "bad_request"),
        # Over the body's cap (one publication's, 64 KiB by default, plus its envelope).
        (
            b'{"publications": [{"channel": "a", "data": "%s"}]}' % (b"x" * 140_000),
            413,
            "too_large",
        ),
    ],
)
async def test_a_batch_refused_whole(hub: RunningHub, body: bytes, status: int, code: str) -> None:
    async with hub.http() as http:
        r = await http.post("/api/publish_batch", content=body)
        # Over the cap, clarion's server answers before the app (docs/server.md), and through
        # ASGI the endpoint does: the same error either way.
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
        # Nothing of a refused batch was published.
        history = (await http.get("/api/history", params={"channel": "a"})).json()
        assert history["publications"] == []


async def test_at_most_max_batch_publications(hub: RunningHub) -> None:
    one = {"channel": "a", "data": 1}
    async with hub.http() as http:
        r = await http.post("/api/publish_batch", json={"publications": [one] * (MAX_BATCH + 1)})
        assert r.status_code == 400 and r.json()["error"]["limit"] == MAX_BATCH
        r = await http.post("/api/publish_batch", json={"publications": [one] * MAX_BATCH})
        assert r.json()["results"][-1]["offset"] == MAX_BATCH


async def test_needs_the_api_key_and_post(hub_factory: Callable[..., Any]) -> None:
    hub = await hub_factory(api_key="s3cret")
    body = {"publications": [{"channel": "a", "data": 1}]}
    keyed = {"authorization": "apikey s3cret"}
    async with hub.http() as http:
        r = await http.post("/api/publish_batch", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        wrong = {"authorization": "apikey wrong"}
        assert (await http.post("/api/publish_batch", json=body, headers=wrong)).status_code == 401
        r = await http.get("/api/publish_batch", headers=keyed)
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
        history = await http.get("/api/history", params={"channel": "a"}, headers=keyed)
        assert history.json()["publications"] == []
        r = await http.post("/api/publish_batch", json=body, headers=keyed)
        assert r.json()["results"][0]["offset"] == 1


async def test_answers_alike_whatever_the_body_framing(hub: RunningHub) -> None:
    """Sent whole, clarion's server answers the batch without ASGI; chunked, through the app."""

    async def chunked(body: bytes) -> AsyncIterator[bytes]:
        yield body[:7]
        yield body[7:]

    async with hub.http() as http:
        for n, framing in enumerate((lambda b: b, chunked)):
            body = b'{"publications": [{"channel": "f", "data": %d}, {"channel": "f"}]}' % n
            r = await http.post("/api/publish_batch", content=framing(body))
            results = r.json()["results"]
            assert r.status_code == 200 and results[0]["offset"] == n + 1
            assert results[1]["error"]["code"] == "bad_request"


async def test_a_channel_redis_fails_stops_there(
    hub_factory: Callable[..., Any], redis_server: RedisServer
) -> None:
    """Redis stops answering: each channel's first publication times out, and its later ones
    in the batch are not attempted, so the batch costs one timeout per channel and no later
    publication can overtake one whose fate is unknown. Redis back, the same batch publishes."""
    hub = await hub_factory(engine=f"{redis_server.url}?socket_timeout=0.5")
    items = [{"channel": "a", "data": n, "id": f"a{n}"} for n in range(4)]
    items.insert(2, {"channel": "b", "data": 0, "id": "b0"})
    items.insert(3, {"channel": "c d", "data": 0})  # refused whatever Redis does
    assert redis_server.process is not None
    async with hub.http() as http:
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            r = await http.post("/api/publish_batch", json={"publications": items})
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        errors = [x["error"] for x in r.json()["results"]]
        assert [e["code"] for e in errors] == ["engine_unavailable"] * 3 + ["bad_channel"] + [
            "engine_unavailable"
        ] * 2
        assert [e["message"] == NOT_ATTEMPTED for e in errors] == [
            False,
            True,
            False,
            False,
            True,
            True,
        ]

        # Sent again (with ids, those Redis ran after all are repeats): all in order.
        async def published() -> list[Any] | None:
            again = await http.post("/api/publish_batch", json={"publications": items})
            offsets = [x.get("offset") for x in again.json()["results"]]
            return offsets if offsets[0] is not None else None

        assert await until(published, wait=10, interval=0.1) == [1, 2, 1, None, 3, 4]
