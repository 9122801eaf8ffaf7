"""``GET /api/info``, ``GET /api/channels`` and the operator's metrics, over real sockets."""

from __future__ import annotations

from typing import Any

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families

from clarion.protocol.cursor import encode_single

from ..conftest import RunningHub, until


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_info_counts_this_nodes_connections_by_transport(hub: RunningHub) -> None:
    async with hub.ws() as ws1, hub.ws() as ws2, hub.http() as http:
        await ws1.subscribe("room:a")
        await ws2.subscribe("room:a")
        async with (
            httpx.AsyncClient(base_url=hub.http_url) as sse_client,
            sse_client.stream("GET", "/sse", params={"channel": "room:b"}) as stream,
        ):
            assert stream.status_code == 200
            async with websockets.connect(
                f"ws://127.0.0.1:{hub.port}/stomp",
                subprotocols=[websockets.Subprotocol("v12.stomp")],
            ) as stomp:
                await stomp.send("CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
                assert str(await stomp.recv()).startswith("CONNECTED")

                async def counted() -> dict[str, Any] | None:
                    body: dict[str, Any] = (await http.get("/api/info")).json()
                    node = body["nodes"][0]
                    wanted = {"ws": 2, "sse": 1, "poll": 0, "stomp": 1}
                    return body if node["connections"] == wanted else None

                info = await until(counted, 10, 0.05)
        node = info["nodes"][0]
        assert info["node"] == node["id"] and info["engine"] == "memory"
        assert node["state"] == "up" and node["version"] and node["pid"] > 0
        assert node["address"] == f"127.0.0.1:{hub.port}"
        assert 0 <= node["uptime"] < 600 and node["channels_total"] >= 1
        assert len(info["nodes"]) == 1
        spec = (await http.get("/api/openapi.json")).json()["paths"]
        assert (
            "nodes"
            in spec["/api/info"]["get"]["responses"]["200"]["content"]["application/json"][
                "schema"
            ]["properties"]
        )
        params = {p["name"] for p in spec["/api/channels"]["get"]["parameters"]}
        assert params == {"node", "q", "sort", "limit"}


async def test_info_counts_follow_sessions_that_close(hub: RunningHub) -> None:
    """The counts are kept as sessions come and go: each close takes its session out."""

    async def counts(http: httpx.AsyncClient, wanted: dict[str, int]) -> bool:
        node = (await http.get("/api/info")).json()["nodes"][0]
        return bool(node["connections"] == wanted and node["operators"] == 0)

    async with hub.http() as http:
        async with hub.ws() as first:
            await first.subscribe("room:a")
            async with hub.ws() as second:
                await second.subscribe("room:a")
                assert await until(lambda: counts(http, {**NONE, "ws": 2}), 10, 0.05)
            assert await until(lambda: counts(http, {**NONE, "ws": 1}), 10, 0.05)
        assert await until(lambda: counts(http, NONE), 10, 0.05)


NONE = {"ws": 0, "sse": 0, "poll": 0, "stomp": 0}


async def test_channels_search_sort_and_node_filter(hub: RunningHub) -> None:
    async with hub.ws() as a, hub.ws() as b, hub.http() as http:
        await a.subscribe("chat:big")
        await b.subscribe("chat:big")
        await a.subscribe("news:small")
        node = (await http.get("/api/info")).json()["node"]
        by_subs = (await http.get("/api/channels", params={"sort": "subscribers"})).json()
        assert [(c["channel"], c["subscribers"]) for c in by_subs["channels"]] == [
            ("chat:big", 2),
            ("news:small", 1),
        ]
        found = (await http.get("/api/channels", params={"q": "news"})).json()
        assert [c["channel"] for c in found["channels"]] == ["news:small"]
        assert found["total"] == 1
        mine = (await http.get("/api/channels", params={"node": node, "limit": "1"})).json()
        assert mine["total"] == 2 and len(mine["channels"]) == 1
        other = (await http.get("/api/channels", params={"node": "elsewhere"})).json()
        assert other["channels"] == []
        bad = await http.get("/api/channels", params={"sort": "size"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


async def test_info_needs_the_api_key(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(api_key="the-key", token_secret="s" * 32)
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        for path in ("/api/info", "/api/channels"):
            refused = await http.get(path, headers={"authorization": "apikey wrong"})
            assert refused.status_code == 401
            assert "nodes" not in refused.text and "channels" not in refused.json()
        ok = await http.get("/api/info", headers={"authorization": "apikey the-key"})
        assert ok.status_code == 200 and ok.json()["nodes"]


async def test_operator_metrics(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory(namespaces={"chat": {}, "quiet": {}})
    async with hub.ws() as ws, hub.http() as http:
        await ws.subscribe("chat:m")
        for n in range(5):
            await hub.publish("chat:m", n)
            assert (await ws.recv())["data"] == n
        # Channels of no configured namespace count under the default one: as many labels as
        # the configuration has namespaces, whatever prefixes publishers choose.
        for n in range(3):
            await ws.subscribe(f"user{n}:inbox")
            await hub.publish(f"user{n}:inbox", n)
            assert (await ws.recv())["data"] == n
        # A cursor from another epoch: the subscription starts with a reset "epoch".
        await ws.subscribe("chat:r", since=encode_single("chat:r", "gone", 3))
        assert (await ws.recv())["reset"]["reason"] == "epoch"
        # And a poll from such a cursor: its reply carries the reset.
        cursor = encode_single("chat:p", "gone", 3)
        polled = await http.get("/poll", params={"channel": "chat:p", "cursor": cursor})
        assert polled.json()["reset"]["reason"] == "epoch"

        async def scraped() -> dict[Any, float] | None:
            page = metrics((await http.get("/metrics")).text)
            rolled = page.get(("clarion_namespace_publications_total", (("namespace", "chat"),)))
            other = page.get(("clarion_namespace_publications_total", (("namespace", "default"),)))
            return page if (rolled, other) == (5, 3) else None

        page = await until(scraped, 10, 0.05)
        assert page["clarion_namespace_deliveries_total", (("namespace", "chat"),)] == 5
        labels = {k[1] for k in page if k[0] == "clarion_namespace_publications_total"}
        # Every configured namespace, at zero until it has traffic.
        assert labels == {(("namespace", n),) for n in ("chat", "default", "quiet")}
        assert page["clarion_namespace_publications_total", (("namespace", "quiet"),)] == 0
        assert page["clarion_namespace_deliveries_total", (("namespace", "quiet"),)] == 0
        assert page["clarion_namespace_publications_total", (("namespace", "default"),)] == 3
        assert page["clarion_resets_total", (("reason", "epoch"),)] == 2
        # The first publication after a tick is always sampled.
        assert page["clarion_publish_to_write_seconds_count", ()] >= 1
        assert page["clarion_slow_disconnects_total", ()] == 0
        assert page["clarion_conflations_total", ()] == 0
        node = (await http.get("/api/info")).json()["node"]
        info = [k for k in page if k[0] == "clarion_node_info"]
        assert len(info) == 1 and ("node", node) in info[0][1]

        async def announced() -> dict[Any, float] | None:
            page = metrics((await http.get("/metrics")).text)
            return page if page["clarion_engine_round_trip_seconds_count", ()] >= 1 else None

        page = await until(announced, 10, 0.05)
        assert page["clarion_engine_errors_total", ()] == 0
