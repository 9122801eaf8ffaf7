"""clarion's async Python client.

::

    from clarion.client import Message, Reset, connect

    async with connect("http://127.0.0.1:8000", token=token) as client:
        async for item in client.subscribe("chat:lobby"):
            if isinstance(item, Reset):
                ...  # publications were missed; reload state, then carry on
            else:
                print(item.data)

It reconnects by itself with jittered exponential backoff and resumes every subscription from its
last cursor; see ``docs/client.md``.
"""

from __future__ import annotations

from clarion.client.backoff import Backoff
from clarion.client.client import Client, TransportName, connect
from clarion.client.errors import (
    ClientClosed,
    ConnectFailed,
    ConnectionLost,
    Disconnected,
    RequestFailed,
    RequestTimeout,
    TransportUnavailable,
)
from clarion.client.items import (
    History,
    Member,
    Message,
    PresenceStats,
    PresentUser,
    Published,
    Reset,
)
from clarion.client.jsonlines import run_subscribe
from clarion.client.subscription import Subscription
from clarion.errors import BadChannel, BadCursor  # what subscribe() raises for bad arguments

__all__ = [
    "Backoff",
    "BadChannel",
    "BadCursor",
    "Client",
    "ClientClosed",
    "ConnectFailed",
    "ConnectionLost",
    "Disconnected",
    "History",
    "Member",
    "Message",
    "PresenceStats",
    "PresentUser",
    "Published",
    "RequestFailed",
    "RequestTimeout",
    "Reset",
    "Subscription",
    "TransportName",
    "TransportUnavailable",
    "connect",
    "run_subscribe",
]
