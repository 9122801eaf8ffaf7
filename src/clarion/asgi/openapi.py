"""The OpenAPI 3.1 document of the server API, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from clarion import __version__

_ERROR = {"$ref": "#/components/responses/Error"}
_CHANNEL = {"type": "string", "pattern": "^[A-Za-z0-9_.:@/=,+-]{1,255}$"}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, required: bool, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def document() -> dict[str, Any]:
    errors = {"400": _ERROR, "401": _ERROR, "413": _ERROR, "503": _ERROR}
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
                }
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
                "post": {
                    "summary": "Publish to one channel",
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "required": ["channel", "data"],
                            "properties": {
                                "channel": _CHANNEL,
                                "data": {},
                                "id": {"type": "string", "description": "idempotency key"},
                            },
                        }
                    ),
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "offset": {"type": "integer"},
                                    "epoch": {"type": "string"},
                                    "cursor": {"type": "string"},
                                },
                            }
                        ),
                        **errors,
                    },
                }
            },
            "/api/broadcast": {
                "post": {
                    "summary": "Publish the same data to several channels",
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "required": ["channels", "data"],
                            "properties": {
                                "channels": {"type": "array", "items": _CHANNEL},
                                "data": {},
                            },
                        }
                    ),
                    "responses": {"200": _ok({"type": "object"}), **errors},
                }
            },
            "/api/history": {
                "get": {
                    "summary": "Read a channel's history",
                    "parameters": [
                        _query("channel", True, _CHANNEL, "the channel"),
                        _query("since", False, {"type": "string"}, "a cursor"),
                        _query("limit", False, {"type": "integer"}, "at most this many"),
                    ],
                    "responses": {"200": _ok({"type": "object"}), **errors},
                }
            },
            "/api/presence": {
                "get": {
                    "summary": "Who is subscribed to a channel",
                    "parameters": [_query("channel", True, _CHANNEL, "the channel")],
                    "responses": {"200": _ok({"type": "object"}), **errors},
                }
            },
            "/api/channels": {
                "get": {
                    "summary": "Channels with subscribers on this node",
                    "responses": {"200": _ok({"type": "object"}), **errors},
                }
            },
            "/api/disconnect": {
                "post": {
                    "summary": "Disconnect a user's sessions on every node",
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "required": ["user"],
                            "properties": {"user": {"type": "string"}},
                        }
                    ),
                    "responses": {"200": _ok({"type": "object"}), **errors},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Health of the node and its engine",
                    "security": [],
                    "responses": {"200": _ok({"type": "object"}), "503": _ERROR},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text format"}},
                }
            },
        },
    }
