"""The public surface of ``clarion.server``: changing it is a decision, not an accident."""

from __future__ import annotations

import inspect

import clarion.server
from clarion.server import FAST_WEBSOCKET_EXTENSION, FastWebSocket, Server


def test_exported_members() -> None:
    assert set(clarion.server.__all__) == {
        "FAST_WEBSOCKET_EXTENSION",
        "ClientDisconnected",
        "FastWebSocket",
        "LifespanFailed",
        "Server",
        "serve",
    }


def test_extension_name() -> None:
    assert FAST_WEBSOCKET_EXTENSION == "clarion.fast_websocket"


def test_fast_websocket_members() -> None:
    members = {name for name in dir(FastWebSocket) if not name.startswith("_")}
    assert members == {
        "buffered_bytes",
        "close",
        "closed",
        "cut",
        "deflate_bits",
        "last_activity",
        "listen",
        "ping",
        "push",
        "push_many",
        "push_pair",
        "push_text",
        "set_send_limit",
    }


def test_server_options() -> None:
    parameters = inspect.signature(Server).parameters
    assert list(parameters) == [
        "app",
        "host",
        "port",
        "max_body_bytes",
        "max_message_bytes",
        "handshake_timeout",
        "keepalive_timeout",
        "sock",
        "backlog",
        "max_headers",
        "max_header_bytes",
        "send_limit",
        "close_timeout",
        "flush_interval",
        "compiled",
        "io_uring",
        "body_timeout",
        "send_timeout",
        "max_pending",
        "max_pending_per_ip",
        "client_key",
        "reuse_port",
        "permessage_deflate",
    ]
    assert parameters["max_body_bytes"].default == 65536
    assert parameters["keepalive_timeout"].default == 5.0
    assert parameters["body_timeout"].default == 30.0
    assert parameters["max_pending_per_ip"].default == 1000
    assert parameters["reuse_port"].default is False
    assert parameters["permessage_deflate"].default is True
    assert parameters["io_uring"].default is True
