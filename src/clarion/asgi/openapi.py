"""The OpenAPI 3.1 document of the server API, served at ``/api/openapi.json``.

Long on purpose: it is one literal document, every route of the API and its schemas in one place.
"""

from __future__ import annotations

from typing import Any

from clarion import __version__
from clarion.asgi.publish import MAX_BATCH

_ERROR = {"$ref": "#/components/responses/Error"}
_CHANNEL = {"type": "string", "pattern": "^[A-Za-z0-9_.:@/=,+-]{1,255}$"}


_NODE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": ["up", "gone"]},
        "version": {"type": "string"},
        "address": {"type": ["string", "null"], "description": "host:port, once known"},
        "pid": {"type": "integer"},
        "engine": {"type": "string"},
        "started": {"type": "number", "description": "Unix time"},
        "uptime": {"type": ["number", "null"], "description": "seconds"},
        "last_seen": {"type": "number", "description": "Unix time of its last announce"},
        "connections": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "sessions by transport (ws, sse, poll, stomp), admin pages apart",
        },
        "operators": {"type": "integer", "description": "admin pages connected"},
        "channels_total": {"type": "integer"},
        "deliveries_per_second": {"type": "number"},
        "publications_per_second": {"type": "number"},
    },
}
_INFO = {
    "type": "object",
    "properties": {
        "node": {"type": "string", "description": "the id of the node that answered"},
        "engine": {"type": "string"},
        "nodes": {"type": "array", "items": _NODE},
        "engine_error": {
            "type": "string",
            "description": "present when the engine did not answer: only this node is listed",
        },
    },
}
_CHANNELS = {
    "type": "object",
    "properties": {
        "channels": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "channel": _CHANNEL,
                    "subscribers": {"type": "integer"},
                    "publication_rate": {"type": "number"},
                    "nodes": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "total": {"type": "integer", "description": "matching channels before `limit`"},
        "complete": {"type": "boolean"},
    },
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _server_subscription(*, with_since: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "user": {"type": "string", "description": "every session of this user (a token's sub)"},
        "client": {"type": "string", "description": "one connection (its `client` id)"},
        "channel": _CHANNEL,
    }
    if with_since:
        properties["since"] = {"type": "string", "description": "resume after this cursor"}
    return {
        "type": "object",
        "required": ["channel"],
        "oneOf": [{"required": ["user"]}, {"required": ["client"]}],
        "properties": properties,
    }


def _query(name: str, required: bool, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


_TOKEN = _query("token", False, {"type": "string"}, "connection token (or Authorization: Bearer)")

_ERRORS = {"400": _ERROR, "401": _ERROR, "413": _ERROR, "503": _ERROR}
_OBJECT = {"type": "object"}
_PUBLICATION = {
    "type": "object",
    "required": ["channel", "data"],
    "properties": {
        "channel": _CHANNEL,
        "data": {},
        "id": {"type": "string", "description": "idempotency key"},
        "ephemeral": {
            "type": "boolean",
            "description": "a live signal: delivered to live subscribers, never stored, no offset",
        },
        "key": {
            "type": "string",
            "description": "an ephemeral publication's key: a backlogged subscriber keeps the "
            "latest per key",
        },
    },
}
_PUBLISHED = {
    "type": "object",
    "properties": {
        "offset": {"type": "integer"},
        "epoch": {"type": "string"},
        "cursor": {"type": "string"},
        "ephemeral": {"type": "boolean"},
    },
}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _op(
    summary: str,
    *,
    description: str | None = None,
    security: list[Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    reply: dict[str, Any] = _OBJECT,
    responses: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation; unless ``responses`` says otherwise, a JSON ``reply`` or an API error."""
    op: dict[str, Any] = {"summary": summary}
    if description is not None:
        op["description"] = description
    if security is not None:
        op["security"] = security
    if parameters is not None:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = _json_body(body)
    op["responses"] = {"200": _ok(reply), **_ERRORS} if responses is None else responses
    return op


def _channel_only() -> list[dict[str, Any]]:
    return [_query("channel", True, _CHANNEL, "the channel")]


def _client_api() -> dict[str, Any]:
    """The client API: what the WebSocket ops do, for sessions on SSE or polling."""
    preflight = {
        "summary": "CORS preflight",
        "security": [],
        "responses": {"204": {"description": "allowed methods and headers"}, "403": _ERROR},
    }
    return {
        "/client/publish": {
            "post": _op(
                "Publish with a connection token (as the `publish` op)",
                description="The token's `publish` permissions, the hooks and the client "
                "publish rate apply, per user (or address without a user).",
                security=_BEARER,
                body={
                    "type": "object",
                    "required": ["channel", "data"],
                    "properties": {
                        "channel": _CHANNEL,
                        "data": {},
                        "pub_id": {"type": "string", "maxLength": 128},
                    },
                },
            ),
            "options": preflight,
        },
        "/client/history": {
            "get": _op(
                "History with a connection token (as the `history` op)",
                security=_BEARER,
                parameters=[
                    *_channel_only(),
                    _query("since", False, {"type": "string"}, "after this cursor"),
                    _query(
                        "limit",
                        False,
                        {"type": "integer"},
                        "at most this many, 0-1000; a page also ends at `send_queue_bytes` "
                        "(`more`: page on with `cursor`)",
                    ),
                    _query("reverse", False, {"type": "boolean"}, "newest first"),
                    _TOKEN,
                ],
            )
        },
        "/client/presence": {
            "get": _op(
                "Presence with a connection token (as the `presence` op)",
                security=_BEARER,
                parameters=[*_channel_only(), _TOKEN],
            )
        },
        "/client/presence_stats": {
            "get": _op(
                "Presence counts with a connection token (as the `presence_stats` op)",
                security=_BEARER,
                parameters=[*_channel_only(), _TOKEN],
            )
        },
    }


def _path_id() -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _webhook_post(summary: str) -> dict[str, Any]:
    responses = {"200": _ok(_OBJECT), "400": _ERROR, "401": _ERROR, "404": _ERROR}
    return {"parameters": [_path_id()], "post": _op(summary, responses=responses)}


def _webhook_get(summary: str) -> dict[str, Any]:
    return _op(summary, responses={"200": _ok(_OBJECT), "404": _ERROR, **_ERRORS})


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "clarion server API", "version": __version__},
        "components": {
            "securitySchemes": {
                "apikey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Authorization: apikey <key>`; not needed in development mode",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a connection token, as the client transports take it",
                },
            },
            "schemas": {
                "Publication": {
                    "type": "object",
                    "required": ["channel", "offset", "epoch", "data", "time"],
                    "properties": {
                        "channel": _CHANNEL,
                        "offset": {"type": "integer", "minimum": 1},
                        "epoch": {"type": "string"},
                        "data": {},
                        "time": {"type": "integer", "description": "unix time, milliseconds"},
                        "info": {"type": "object"},
                        "id": {"type": "string"},
                        "cursor": {"type": "string"},
                    },
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
            "responses": {
                "Error": _ok({"$ref": "#/components/schemas/Error"}, "An error"),
            },
        },
        "security": [{"apikey": []}],
        "paths": {
            "/api/publish": {
                "post": _op("Publish to one channel", body=_PUBLICATION, reply=_PUBLISHED)
            },
            "/api/publish_batch": {
                "post": _op(
                    "Publish several, each as /api/publish would, answered in order",
                    body={
                        "type": "object",
                        "required": ["publications"],
                        "properties": {
                            "publications": {
                                "type": "array",
                                "items": _PUBLICATION,
                                "minItems": 1,
                                "maxItems": MAX_BATCH,
                            }
                        },
                    },
                    reply={
                        "type": "object",
                        "properties": {
                            "results": {
                                "type": "array",
                                "items": {
                                    "anyOf": [
                                        _PUBLISHED,
                                        {
                                            "$ref": "#/components/schemas/Error",
                                            "required": ["error"],
                                        },
                                    ],
                                    "description": "what /api/publish answers each, or "
                                    "the error it was refused with",
                                },
                            }
                        },
                    },
                )
            },
            "/api/broadcast": {
                "post": _op(
                    "Publish the same data to several channels",
                    body={
                        "type": "object",
                        "required": ["channels", "data"],
                        "properties": {
                            "channels": {"type": "array", "items": _CHANNEL},
                            "data": {},
                        },
                    },
                )
            },
            "/api/history": {
                "get": _op(
                    "Read a channel's history",
                    parameters=[
                        *_channel_only(),
                        _query("since", False, {"type": "string"}, "a cursor"),
                        _query(
                            "limit",
                            False,
                            {"type": "integer"},
                            "at most this many; a page also ends at `send_queue_bytes` "
                            "(`more`: page on with `cursor`)",
                        ),
                        _query(
                            "reverse",
                            False,
                            {"type": "string", "enum": ["1", "true", "0", "false"]},
                            "newest first, older than `since`; the reply's `cursor` pages back",
                        ),
                    ],
                )
            },
            "/api/presence": {
                "get": _op("Who is subscribed to a channel", parameters=_channel_only())
            },
            "/api/presence_stats": {
                "get": _op(
                    "How many clients and distinct users are on a channel",
                    description="The counts alone, without listing anyone: "
                    '`{"clients": N, "users": M}`.',
                    parameters=_channel_only(),
                )
            },
            "/api/channels": {
                "get": _op(
                    "Channels with subscribers, across the cluster",
                    description="Each channel with its subscribers summed over the nodes "
                    "that are up, its publication rate (per second, last second) and the nodes "
                    "holding it. Other nodes are read from their last announce, which lists "
                    "their busiest channels only: `complete` says whether every channel is in.",
                    parameters=[
                        _query("node", False, {"type": "string"}, "one node's channels only"),
                        _query("q", False, {"type": "string"}, "names containing this"),
                        _query(
                            "sort",
                            False,
                            {"type": "string", "enum": ["channel", "subscribers", "rate"]},
                            "order (default `channel`)",
                        ),
                        _query(
                            "limit",
                            False,
                            {"type": "integer", "minimum": 1, "maximum": 10000},
                            "at most this many (default and cap 10,000)",
                        ),
                    ],
                    reply=_CHANNELS,
                )
            },
            "/api/info": {
                "get": _op(
                    "The nodes and their figures",
                    description="This node first, then every node announced through the "
                    "engine (every second; on the memory engine the node is alone). A node "
                    "whose last announce is older than a few seconds is `gone`.",
                    reply=_INFO,
                )
            },
            "/api/disconnect": {
                "post": _op(
                    "Disconnect a user's or a token's sessions on every node",
                    description="With `until`, or for a token (`jti`), new connections are "
                    "refused on every node, and after restarts, until the revocation lapses.",
                    body={
                        "type": "object",
                        "anyOf": [{"required": ["user"]}, {"required": ["jti"]}],
                        "properties": {
                            "user": {"type": "string", "description": "a token's `sub`"},
                            "jti": {"type": "string", "description": "a token's `jti`"},
                            "until": {
                                "type": "number",
                                "description": "refuse new connections until this Unix time",
                            },
                            "exp": {
                                "type": "number",
                                "description": "the revoked token's `exp` (with `jti`, "
                                "without `until`): how long its revocation is kept",
                            },
                        },
                    },
                )
            },
            "/api/subscribe": {
                "post": _op(
                    "Subscribe a user's live sessions (or one connection) to a channel",
                    description="On every node and transport; each session gets a `subscribe` "
                    "push. The backend's grant: the token's permissions are not checked.",
                    body=_server_subscription(with_since=True),
                )
            },
            "/api/unsubscribe": {
                "post": _op(
                    "End a channel on a user's live sessions (or one connection)",
                    description="On every node and transport; each session gets an "
                    "`unsubscribe` push with reason `server`.",
                    body=_server_subscription(with_since=False),
                )
            },
            "/sse": {
                "get": _op(
                    "Server-Sent Events stream of one or more channels",
                    security=[],
                    parameters=[
                        _query("channel", True, _CHANNEL, "a channel; repeat for several"),
                        _query(
                            "cursor", False, {"type": "string"}, "resume after; repeat to merge"
                        ),
                        _query("token", False, {"type": "string"}, "connection token"),
                    ],
                    responses={
                        "200": {
                            "description": "an endless text/event-stream",
                            "content": {"text/event-stream": {}},
                        },
                        **_ERRORS,
                    },
                )
            },
            "/poll": {
                "get": _op(
                    "Long polling (timeout > 0) or polling (timeout = 0)",
                    security=[],
                    parameters=[
                        _query("channel", True, _CHANNEL, "a channel; repeat for several"),
                        _query("cursor", False, {"type": "string"}, "after; repeat to merge"),
                        _query("timeout", False, {"type": "number"}, "seconds to wait, 0-60"),
                        _query("client", False, {"type": "string"}, "in presence: id, or empty"),
                        _query("token", False, {"type": "string"}, "connection token"),
                    ],
                    responses={
                        "200": _ok(_OBJECT),
                        "304": {"description": "nothing new (If-None-Match)"},
                        **_ERRORS,
                    },
                ),
                "delete": _op(
                    "A long-poll client leaves the presence of channels it stops polling",
                    security=[],
                    parameters=[
                        _query("channel", True, _CHANNEL, "a channel; repeat for several"),
                        _query("client", True, {"type": "string"}, "the id its polls were given"),
                        _query("token", False, {"type": "string"}, "connection token"),
                    ],
                    responses={"204": {"description": "left (or was not there)"}, **_ERRORS},
                ),
            },
            **_client_api(),
            "/api/webhooks": {
                "get": _op("Webhook endpoints and their delivery state"),
                "post": _op(
                    "Register a webhook endpoint",
                    body={
                        "type": "object",
                        "required": ["url", "channels"],
                        "properties": {
                            "url": {"type": "string"},
                            "channels": {"type": "array", "items": {"type": "string"}},
                            "secret": {"type": "string"},
                            "events": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                ),
            },
            "/api/webhooks/{id}": {
                "parameters": [_path_id()],
                "get": _webhook_get("One endpoint, with its secret and delivery state"),
                "delete": _webhook_get("Remove an endpoint and its queue"),
            },
            "/api/webhooks/{id}/enable": _webhook_post("Re-enable an endpoint disabled by 410"),
            "/api/webhooks/{id}/replay": _webhook_post("Deliver again from a cursor"),
            "/api/webhooks/{id}/dead-letters": {
                "parameters": [_path_id()],
                "get": _webhook_get("Deliveries that exhausted their retries"),
            },
            "/api/webhooks/{id}/dead-letters/replay": _webhook_post("Retry dead letters"),
            "/healthz": {
                "get": _op(
                    "Health of the node and its engine",
                    security=[],
                    responses={"200": _ok(_OBJECT), "503": _ERROR},
                )
            },
            "/metrics": {
                "get": _op(
                    "Prometheus metrics",
                    responses={"200": {"description": "Prometheus text format"}},
                )
            },
        },
    }
