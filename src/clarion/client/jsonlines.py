"""Subscribe and write every item as one JSON line: what ``clarion subscribe`` runs."""

from __future__ import annotations

import logging
from typing import Any, TextIO

import orjson

from clarion.client.client import TransportName, connect
from clarion.client.items import Message, Reset
from clarion.client.tokens import TokenSource

log = logging.getLogger(__name__)


def line_of(item: Message | Reset) -> bytes:
    """A message as the hub pushes it (publication plus ``cursor``); a reset as ``{"reset"}``."""
    body: dict[str, Any]
    if isinstance(item, Reset):
        body = {"reset": {"channel": item.channel, "reason": item.reason, "cursor": item.cursor}}
    else:
        body = {**item.publication.to_dict(), "cursor": item.cursor}
    return orjson.dumps(body)


async def run_subscribe(
    url: str,
    channel: str,
    *,
    out: TextIO,
    since: str | None = None,
    token: TokenSource = None,
    transport: TransportName = "ws",
) -> int:
    """Write ``channel``'s items to ``out`` until the hub says not to reconnect (which raises).

    A hub that cannot be reached yet is waited for as a dropped connection is, with the same
    backoff (no ``open_timeout``): the client's log says what is being tried.
    """
    async with connect(url, token=token, transport=transport, open_timeout=None) as client:
        async for item in client.subscribe(channel, since=since):
            out.write(line_of(item).decode() + "\n")
            out.flush()
    return 0
