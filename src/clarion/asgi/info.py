"""``GET /api/info`` (the nodes and their figures) and ``GET /api/channels`` (cluster-wide),
behind the API key."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clarion.asgi import access
from clarion.asgi.responses import JSONResponse
from clarion.core.hub import Hub
from clarion.core.nodes import ChannelRow, NodeReporter, channel_entry
from clarion.errors import BadRequest
from clarion.protocol.numbers import ascii_int

MAX_LIMIT = 10_000
SORTS: dict[str, Callable[[ChannelRow], Any]] = {
    "channel": itemgetter(0),
    "subscribers": lambda row: (-row[1], row[0]),
    "rate": lambda row: (-row[2], row[0]),
}


def reporter(hub: Hub, request: Request) -> NodeReporter:
    """The hub's node reporter; it learns the node's address from the first request."""
    access.check_api_key(hub, request.scope)
    nodes = hub.nodes
    if nodes.address is None:
        server = request.scope.get("server")
        if server and server[1] is not None:
            nodes.address = f"{server[0]}:{server[1]}"
    return nodes


def _one(request: Request, name: str) -> str | None:
    return access.single_param(access.query_params(request.scope), name)


class InfoAPI:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def info(self, request: Request) -> Response:
        nodes = reporter(self.hub, request)
        cluster, error = await nodes.cluster()
        body: dict[str, Any] = {
            "node": nodes.node,
            "engine": self.hub.engine.name,
            "nodes": cluster,
        }
        if error is not None:
            body["engine_error"] = error  # the other nodes are unknown while it lasts
        return JSONResponse(body)

    async def channels(self, request: Request) -> Response:
        nodes = reporter(self.hub, request)
        node, search = _one(request, "node"), _one(request, "q")
        sort = _one(request, "sort") or "channel"
        if sort not in SORTS:
            raise BadRequest(f"sort must be one of {', '.join(SORTS)}")
        raw_limit = _one(request, "limit")
        limit = MAX_LIMIT
        if raw_limit is not None:
            number = ascii_int(raw_limit, max_digits=len(str(MAX_LIMIT)))
            if number is None or not 0 < number <= MAX_LIMIT:
                raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
            limit = number
        rows, complete = await nodes.channels(node or None, search or None)
        # A page of the first ``limit``: no sort of them all (a node may hold 100,000).
        page = heapq.nsmallest(limit, rows, key=SORTS[sort])
        body: dict[str, Any] = {
            "channels": [channel_entry(row) for row in page],
            "total": len(rows),
            "complete": complete,
        }
        return JSONResponse(body)
