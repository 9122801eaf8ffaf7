"""Long-polling transport: ``GET /poll?channel=C&cursor=K&timeout=S``, one loop per subscription.

The first request of a subscription made without ``since`` is a plain poll (``timeout=0``): it
returns the channel's current cursor at once, so the subscription has a resume point before the
first long poll, and nothing published from then on can slip between two requests.
"""

from __future__ import annotations

import logging

import httpx

from clarion.client.errors import RequestFailed, unsubscribed
from clarion.client.items import Message
from clarion.client.refusals import Retry
from clarion.client.streams import (
    StreamContext,
    check,
    disconnect_from,
    failed,
    message_from,
    pause,
    reset_from,
)
from clarion.client.subscription import Feed
from clarion.protocol.errors import ErrorCode

log = logging.getLogger(__name__)

FALLBACK_TIMEOUT = 10.0  # for a hub whose ``poll.timeout_max`` is below the client's timeout


async def run_poll(feed: Feed, ctx: StreamContext) -> None:
    """Fill ``feed`` by polling until the feed is done (see :func:`clarion.client.sse.run_sse`)."""
    url = ctx.api.endpoints.url("/poll")
    attempt = 0
    answered = False  # said once, as the other transports say their connection
    longest = ctx.poll_timeout  # lowered to the hub's ``poll.timeout_max`` if that is less
    while not feed.done:
        await feed.wait_room()  # no request while the reader is behind: polling is backpressure
        if feed.done:
            return
        wait = longest if feed.resume_cursor is not None else 0.0
        params = {"channel": feed.channel, "timeout": _seconds(wait)}
        if feed.resume_cursor is not None:
            params["cursor"] = feed.resume_cursor
        elif feed.latest:
            params["latest"] = "1"
        timeout = httpx.Timeout(ctx.api.timeout, read=wait + ctx.api.timeout)
        try:
            headers = await ctx.api.stream_headers()
        except Exception as exc:
            await pause(ctx, attempt, feed, f"the token callable failed: {exc!r}")
            attempt += 1
            continue
        try:
            response = await ctx.api.http.get(url, params=params, headers=headers, timeout=timeout)
            await check(response, ctx, "/poll")
            body = response.json()
            cursor = body.get("cursor") if isinstance(body, dict) else None
            if not isinstance(cursor, str) or not cursor:
                raise Retry(f"{url} answered without a cursor")
        except (httpx.RequestError, Retry, ValueError) as exc:
            await pause(ctx, attempt, feed, failed(url, exc))
            attempt += 1
            continue
        except RequestFailed as exc:
            if exc.code != ErrorCode.BAD_TIMEOUT or longest <= FALLBACK_TIMEOUT:
                raise
            log.info("the hub refused timeout=%s; polling with %s s", longest, FALLBACK_TIMEOUT)
            longest = FALLBACK_TIMEOUT
            continue
        if attempt:
            log.info("connected to %s again (%s)", url, feed.channel)
        elif not answered:
            log.info("connected to %s (%s)", url, feed.channel)
        answered = True
        attempt = 0
        feed.confirmed(cursor)
        messages = [m for m in map(message_from, body.get("publications", ())) if m is not None]
        reset = reset_from(feed, body.get("reset"), _before(messages, cursor))
        if reset is not None:
            await feed.put(reset)
        for message in messages:
            await feed.put(message)
        if feed.done:
            return
        feed.advance(cursor)
        error = disconnect_from(body.get("disconnect"), ctx)
        if error is not None:
            raise error
        for ended in body.get("unsubscribed") or ():
            if isinstance(ended, dict) and ended.get("channel") == feed.channel:
                raise unsubscribed(feed.channel, ended.get("reason"))


def _seconds(value: float) -> str:
    # The hub reads plain decimals (no exponent), to the microsecond at most.
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _before(messages: list[Message], cursor: str) -> str:
    """Where a reset leaves the stream: just before the first publication that follows it."""
    stored = [m for m in messages if not m.ephemeral]  # signals have no place in the stream
    return stored[0].before() if stored else cursor
