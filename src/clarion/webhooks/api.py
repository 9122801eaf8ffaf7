"""The webhook endpoints of the server API, all behind the API key.

``POST /api/webhooks``, ``GET /api/webhooks``, ``GET``/``DELETE /api/webhooks/{id}``,
``POST /api/webhooks/{id}/enable``, ``POST /api/webhooks/{id}/replay``,
``GET /api/webhooks/{id}/dead-letters``, ``POST /api/webhooks/{id}/dead-letters/replay``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from clarion.asgi import access
from clarion.asgi.api import read_json
from clarion.asgi.responses import JSONResponse
from clarion.core.hub import Hub
from clarion.errors import BadRequest
from clarion.protocol.numbers import ascii_int
from clarion.webhooks.service import WebhookService

MAX_LIST = 1000


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = access.single_param(access.query_params(request.scope), name)
    if raw is None:
        return default
    number = ascii_int(raw, max_digits=len(str(maximum)))
    if number is None or number > maximum:
        raise BadRequest(f"{name} must be an integer from 0 to {maximum}")
    return number


class WebhookAPI:
    def __init__(self, hub: Hub, service: WebhookService) -> None:
        self.hub = hub
        self.service = service

    def _service(self, request: Request) -> WebhookService:
        access.check_api_key(self.hub, request.scope)
        return self.service

    async def _current(self, request: Request) -> WebhookService:
        """The service, caught up with endpoints other nodes changed (on a shared outbox)."""
        service = self._service(request)
        await service.refresh()
        return service

    async def index(self, request: Request) -> Response:
        service = self._service(request)
        return JSONResponse({"webhooks": await service.describe_all()})

    async def create(self, request: Request) -> Response:
        service = self._service(request)
        body = await read_json(self.hub, request)
        endpoint = await service.create(
            body.get("url"), body.get("channels", []), body.get("secret"), body.get("events")
        )
        out = await service.describe(endpoint)
        return JSONResponse({"id": endpoint.id, "secret": endpoint.secret, **out})

    async def get(self, request: Request) -> Response:
        service = await self._current(request)
        endpoint = service.get(request.path_params["id"])
        return JSONResponse(await service.describe(endpoint, detail=True))

    async def delete(self, request: Request) -> Response:
        service = await self._current(request)
        await service.remove(request.path_params["id"])
        return JSONResponse({})

    async def enable(self, request: Request) -> Response:
        service = await self._current(request)
        endpoint = await service.enable(request.path_params["id"])
        return JSONResponse(await service.describe(endpoint))

    async def replay(self, request: Request) -> Response:
        service = await self._current(request)
        body = await read_json(self.hub, request)
        if "since" not in body:
            raise BadRequest("'since' (a cursor) is required")
        result = await service.replay(
            request.path_params["id"], body["since"], body.get("channels")
        )
        return JSONResponse(result)

    async def dead_letters(self, request: Request) -> Response:
        service = await self._current(request)
        after = _int_param(request, "after", 0, 2**63 - 1)
        limit = _int_param(request, "limit", 100, MAX_LIST)
        letters = await service.dead_letters(request.path_params["id"], after, limit)
        return JSONResponse(
            {
                "dead_letters": [d.describe(with_payload=True) for d in letters],
                # Pass as ``after`` to read the next page.
                "next": letters[-1].seq if len(letters) == limit and letters else None,
            }
        )

    async def revive(self, request: Request) -> Response:
        service = await self._current(request)
        has_body = request.headers.get("content-length", "0") != "0" or (
            "transfer-encoding" in request.headers
        )
        body = await read_json(self.hub, request) if has_body else {}
        revived = await service.revive(request.path_params["id"], body.get("ids"))
        return JSONResponse({"enqueued": revived})


def webhook_routes(hub: Hub, service: WebhookService) -> list[BaseRoute]:
    api = WebhookAPI(hub, service)
    return [
        Route("/api/webhooks", api.index, methods=["GET"]),
        Route("/api/webhooks", api.create, methods=["POST"]),
        Route("/api/webhooks/{id}", api.get, methods=["GET"]),
        Route("/api/webhooks/{id}", api.delete, methods=["DELETE"]),
        Route("/api/webhooks/{id}/enable", api.enable, methods=["POST"]),
        Route("/api/webhooks/{id}/replay", api.replay, methods=["POST"]),
        Route("/api/webhooks/{id}/dead-letters", api.dead_letters, methods=["GET"]),
        Route("/api/webhooks/{id}/dead-letters/replay", api.revive, methods=["POST"]),
    ]
