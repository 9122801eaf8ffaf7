"""The server API for backends: broadcast, history, presence, disconnect, health.

``POST /api/publish``, the hot path, is a raw ASGI endpoint of its own (``publish.py``);
``/api/info`` and ``/api/channels`` are in ``info.py``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clarion.asgi import access
from clarion.asgi.publish import parse_object, read_body
from clarion.asgi.responses import JSONResponse
from clarion.asgi.websocket import history_body
from clarion.core.auth import check_not_reserved
from clarion.core.hub import Hub
from clarion.engines.base import presence_body
from clarion.errors import BadRequest
from clarion.protocol.channels import validate_channel
from clarion.protocol.errors import ErrorCode
from clarion.protocol.numbers import ascii_int

MAX_BROADCAST_CHANNELS = 1000
MAX_UNIX_TIME = 253402300799  # 9999-12-31T23:59:59Z


async def read_json(hub: Hub, request: Request) -> dict[str, Any]:
    return parse_object(await read_body(hub, request.scope, request.receive))


def _flag(request: Request, name: str) -> bool:
    """A yes/no query parameter: ``1``/``true`` or ``0``/``false`` (absent: no)."""
    raw = _param(request, name, required=False)
    if raw is None or raw in ("0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise BadRequest(f"{name} must be 1, true, 0 or false")


def _param(request: Request, name: str, required: bool = True) -> str | None:
    value = access.single_param(access.query_params(request.scope), name)
    if value is None and required:
        raise BadRequest(f"query parameter {name!r} is required")
    return value


class ServerAPI:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def _authorize(self, request: Request) -> None:
        access.check_api_key(self.hub, request.scope)

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
        for channel in channels:
            check_not_reserved(validate_channel(channel))
        pubs = await self.hub.broadcast(channels, body["data"])
        return JSONResponse(
            {
                "results": [
                    {"channel": p.channel, "ephemeral": True}
                    if p.ephemeral
                    else {"channel": p.channel, "offset": p.offset, "epoch": p.epoch}
                    for p in pubs
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
            most = self.hub.settings.limits.max_history_batch
            limit = ascii_int(raw_limit, max_digits=len(str(most)))
            if limit is None or limit > most:
                raise BadRequest(f"limit must be an integer from 0 to {most}")
        reverse = _flag(request, "reverse")
        history, reason = await self.hub.history(
            channel, since=since or None, limit=limit, reverse=reverse
        )
        return JSONResponse(history_body(self.hub, channel, history, reason, reverse=reverse))

    async def presence(self, request: Request) -> Response:
        self._authorize(request)
        channel = validate_channel(_param(request, "channel"))
        entries = await self.hub.presence(channel)
        return JSONResponse(presence_body(entries, info=True, address=True))

    async def presence_stats(self, request: Request) -> Response:
        self._authorize(request)
        channel = validate_channel(_param(request, "channel"))
        return JSONResponse((await self.hub.presence_stats(channel)).to_dict())

    async def disconnect(self, request: Request) -> Response:
        """Close a user's (or a token's) sessions everywhere; optionally refuse them a while."""
        self._authorize(request)
        body = await read_json(self.hub, request)
        user, jti = body.get("user"), body.get("jti")
        until, exp = body.get("until"), body.get("exp")
        if user is not None and (not isinstance(user, str) or not user):
            raise BadRequest("'user' must be a non-empty string")
        if jti is not None and (not isinstance(jti, str) or not jti):
            raise BadRequest("'jti' must be a non-empty string")
        if user is None and jti is None:
            raise BadRequest("give 'user' (a token's sub) or 'jti' (a token's id)")
        for name, value in (("until", until), ("exp", exp)):
            if value is not None and (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not 0 <= value <= MAX_UNIX_TIME  # also refuses NaN
            ):
                raise BadRequest(f"'{name}' must be a Unix time in seconds (before 10000 AD)")
        if exp is not None and jti is None:
            raise BadRequest("'exp' is the revoked token's own: give it with 'jti'")
        await self.hub.disconnect_user(user, token_id=jti, until=until, exp=exp)
        return JSONResponse({})

    async def _addressed(
        self, request: Request
    ) -> tuple[dict[str, Any], str, str | None, str | None]:
        """A server-side subscription request: its body, channel, and ``user`` or ``client``."""
        self._authorize(request)
        body = await read_json(self.hub, request)
        user, client = body.get("user"), body.get("client")
        for name, value in (("user", user), ("client", client)):
            if value is not None and (not isinstance(value, str) or not value):
                raise BadRequest(f"'{name}' must be a non-empty string")
        if (user is None) == (client is None):
            raise BadRequest("give one of 'user' (a token's sub) or 'client' (a connection id)")
        return body, validate_channel(body.get("channel")), user, client

    async def subscribe(self, request: Request) -> Response:
        """Subscribe every live session of a user (or one connection) to a channel."""
        body, channel, user, client = await self._addressed(request)
        since = body.get("since")
        if since is not None and not isinstance(since, str):
            raise BadRequest("'since' must be a cursor", code=ErrorCode.BAD_CURSOR)
        await self.hub.server_subscribe(channel, user=user, client=client, since=since or None)
        return JSONResponse({})

    async def unsubscribe(self, request: Request) -> Response:
        """End a channel's subscription on every live session of a user (or one connection)."""
        _, channel, user, client = await self._addressed(request)
        await self.hub.server_unsubscribe(channel, user=user, client=client)
        return JSONResponse({})

    async def healthz(self, request: Request) -> Response:
        healthy = await self.hub.engine.healthy()
        body = {"status": "ok" if healthy else "unavailable", "engine": self.hub.engine.name}
        # Readable from any page: the browser client tells the hub's own answer from a proxy's
        # error page for a hub that is down. It holds nothing a page should not see.
        headers = {"access-control-allow-origin": "*"}
        return JSONResponse(body, status_code=200 if healthy else 503, headers=headers)

    async def metrics(self, request: Request) -> Response:
        self._authorize(request)
        return Response(self.hub.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")
