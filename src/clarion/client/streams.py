"""What the HTTP transports (SSE, polling) share: reading the hub's answers and refusals.

HTTP status codes map onto the same decisions as WebSocket close codes: retry after a backoff
delay, end the subscriptions refused, stop the client, or (missing endpoint) fall back to the
next transport (see :mod:`clarion.client.refusals`). One stream carries every subscription
(:mod:`clarion.client.shared`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from clarion.client.api import HttpApi, failure
from clarion.client.backoff import Backoff
from clarion.client.bounds import Dropped, dropped, read_answer, refuse_compressed
from clarion.client.errors import Disconnected, TransportUnavailable
from clarion.client.items import Message, Reset
from clarion.client.refusals import refused, stops
from clarion.client.subscription import Feed
from clarion.errors import os_reason
from clarion.protocol.messages import DisconnectPush, FrameError, ResetPush, read_push

log = logging.getLogger(__name__)

MISSING = frozenset({404, 405, 501})  # the hub (or a proxy before it) has no such endpoint


@dataclass(slots=True)
class PollClient:
    """The id the hub gave this client's polls: one client in presence across its polls (and
    its poll loops), whatever node answers them. Empty until a poll's reply gives one."""

    id: str = ""
    # Channel -> its polls on their way. A leave waits for them: one that reached the hub after
    # the leave would put the client back in the channel's presence.
    asking: Counter[str] = field(default_factory=Counter)
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    def ask(self, channels: list[str]) -> None:
        self.asking.update(channels)

    def done(self, channels: list[str]) -> None:
        asking = self.asking
        for channel in channels:
            asking[channel] -= 1
            if asking[channel] <= 0:
                del asking[channel]  # a channel polled once is not kept for the client's life
        self.answered.set()

    async def quiet(self, channels: list[str]) -> None:
        """Until no poll naming ``channels`` is on its way."""
        while any(self.asking[channel] > 0 for channel in channels):
            self.answered.clear()
            await self.answered.wait()


@dataclass(frozen=True, slots=True)
class StreamContext:
    api: HttpApi
    backoff: Backoff
    poll_timeout: float
    read_timeout: float  # SSE: longer than the hub's heartbeat interval
    open_timeout: float | None  # until the client's first stream is answered (None: no end)
    poll: PollClient = field(default_factory=PollClient)


async def check(response: httpx.Response, ctx: StreamContext, path: str) -> None:
    """Raise what a non-200 answer to a stream request means; return on 200."""
    refuse_compressed(response)  # whatever its status: a compressed body is not read
    status = response.status_code
    if status == 200:
        return
    response = await read_answer(response, ctx.api.limits)  # Dropped: a failed attempt
    error = failure(response)
    if status in MISSING:
        raise TransportUnavailable(
            f"nothing serves {path} at {ctx.api.endpoints.url(path)} (HTTP {status}): "
            f"{ctx.api.endpoints.doubt()}"
        )
    # Retry later, stop the client, or (a refusal of this channel) end this subscription.
    raise refused(error, ctx.api.tokens.source, whole=False)


def message_from(obj: Any, cursor: str | None = None) -> Message | None:
    if not isinstance(obj, dict):
        return None
    try:
        return Message.from_wire(obj, cursor)
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring a malformed publication: %.120r", obj)
        return None


def reset_from(feed: Feed, obj: Any, fallback: str | None) -> Reset | None:
    if obj is None:
        return None
    try:
        push = read_push("reset", obj)
    except FrameError as exc:
        log.warning("ignoring a reset on %s: %s", feed.channel, exc)
        return None
    if not isinstance(push, ResetPush):
        return None
    cursor = push.cursor or fallback
    if not cursor:
        log.warning("ignoring a reset without a cursor on %s", feed.channel)
        return None
    return Reset(feed.channel, push.reason, cursor)


def disconnect_from(obj: Any, ctx: StreamContext) -> Disconnected | None:
    """A ``disconnect`` signal that forbids reconnecting, as the error to stop with."""
    if obj is None:
        return None
    try:
        push = read_push("disconnect", obj)
    except FrameError as exc:
        log.warning("ignoring a disconnect signal: %s", exc)
        return None
    if not isinstance(push, DisconnectPush):
        return None
    if not stops(push.code, push.reconnect, ctx.api.tokens.source):
        return None
    return Disconnected(push.code, push.reason)


def failed(url: str, exc: BaseException) -> str:
    """What went wrong with a request to ``url``, in plain words."""
    if isinstance(exc, Dropped):
        return dropped(url, exc)
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {url}: {_reason(exc)}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {url} in time"
    if isinstance(exc, httpx.TransportError):
        return f"lost the connection to {url}"
    return str(exc) or type(exc).__name__


def _reason(exc: BaseException) -> str:
    return os_reason(exc) or str(exc) or type(exc).__name__
