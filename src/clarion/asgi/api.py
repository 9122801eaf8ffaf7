"""The server API for backends: publish, broadcast, history, presence, channels, disconnect."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from clarion.asgi import access
from clarion.asgi.responses import JSONResponse
from clarion.asgi.websocket import history_body
from clarion.core.hub import Hub
from clarion.errors import BadRequest, TooLarge
from clarion.protocol.channels import validate_channel

# The body carries the envelope around ``data``: allow some room beyond max_message_bytes.
ENVELOPE_BYTES = 64 * 1024
MAX_BROADCAST_CHANNELS = 1000


async def read_json(hub: Hub, request: Request) -> dict[str, Any]:
    cap = hub.settings.limits.max_message_bytes + ENVELOPE_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise TooLarge(f"request body over {cap} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise TooLarge(f"request body over {cap} bytes")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


def _param(request: Request, name: str, required: bool = True) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name} given more than once")
    if not values:
        if required:
            raise BadRequest(f"query parameter {name!r} is required")
        return None
    return values[0]


class ServerAPI:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def _authorize(self, request: Request) -> None:
        access.check_api_key(self.hub, request.scope)

    async def publish(self, request: Request) -> Response:
        self._authorize(request)
        body = await read_json(self.hub, request)
        channel = validate_channel(body.get("channel"))
        if "data" not in body:
            raise BadRequest("'data' is required")
        key = body.get("id")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
            raise BadRequest("'id' must be a string of 1 to 128 characters")
        pub = await self.hub.publish(channel, body["data"], idempotency_key=key)
        return JSONResponse(
            {"offset": pub.offset, "epoch": pub.epoch, "cursor": self.hub.cursor_of(pub)}
        )

    async def broadcast(self, request: Request) -> Response:
        self._authorize(request)
        body = await read_json(self.hub, request)
        channels = body.get("channels")
        if not isinstance(channels, list) or not channels:
            raise BadRequest("'channels' must be a non-empty list")
        if len(channels) > MAX_BROADCAST_CHANNELS:
            raise BadRequest(f"at most {MAX_BROADCAST_CHANNELS} channels per broadcast")
        if "data" not in body:
            raise BadRequest("'data' is required")
        pubs = await self.hub.broadcast([validate_channel(c) for c in channels], body["data"])
        return JSONResponse(
            {
                "results": [
                    {"channel": p.channel, "offset": p.offset, "epoch": p.epoch} for p in pubs
                ]
            }
        )

    async def history(self, request: Request) -> Response:
        self._authorize(request)
        channel = validate_channel(_param(request, "channel"))
        since = _param(request, "since", required=False)
        raw_limit = _param(request, "limit", required=False)
        limit = None
        if raw_limit is not None:
            if (
                not raw_limit.isdigit()
                or int(raw_limit) > self.hub.settings.limits.max_history_batch
            ):
                raise BadRequest(
                    "limit must be an integer from 0 to "
                    f"{self.hub.settings.limits.max_history_batch}"
                )
            limit = int(raw_limit)
        history, reason = await self.hub.history(channel, since=since or None, limit=limit)
        return JSONResponse(history_body(self.hub, channel, history, reason))

    async def presence(self, request: Request) -> Response:
        self._authorize(request)
        channel = validate_channel(_param(request, "channel"))
        entries = await self.hub.presence(channel)
        return JSONResponse({"clients": [e.to_dict() for e in entries]})

    async def channels(self, request: Request) -> Response:
        self._authorize(request)
        counts = self.hub.channels()
        return JSONResponse(
            {"channels": [{"channel": c, "subscribers": n} for c, n in sorted(counts.items())]}
        )

    async def disconnect(self, request: Request) -> Response:
        """Close a user's (or a token's) sessions everywhere; optionally refuse them a while."""
        self._authorize(request)
        body = await read_json(self.hub, request)
        user, jti, until = body.get("user"), body.get("jti"), body.get("until")
        if user is not None and (not isinstance(user, str) or not user):
            raise BadRequest("'user' must be a non-empty string")
        if jti is not None and (not isinstance(jti, str) or not jti):
            raise BadRequest("'jti' must be a non-empty string")
        if user is None and jti is None:
            raise BadRequest("give 'user' (a token's sub) or 'jti' (a token's id)")
        if until is not None and (
            not isinstance(until, int | float) or isinstance(until, bool) or until < 0
        ):
            raise BadRequest("'until' must be a Unix time in seconds")
        await self.hub.disconnect_user(user, token_id=jti, until=until)
        return JSONResponse({})

    async def healthz(self, request: Request) -> Response:
        healthy = await self.hub.engine.healthy()
        body = {"status": "ok" if healthy else "unavailable", "engine": self.hub.engine.name}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def metrics(self, request: Request) -> Response:
        self._authorize(request)
        return Response(self.hub.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")
