"""Server-Sent Events transport: ``GET /sse?channel=C``, one stream per subscription.

The first request resumes from ``since`` with the ``cursor=`` parameter; every later one from the
last buffered event with ``Last-Event-ID``, as a browser's EventSource would. The hub opens every
stream with an ``id:``-only block holding the starting cursor, so a subscription made "from now"
has a resume point before its first event.
"""

from __future__ import annotations

import logging

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from clarion.client.errors import TransportUnavailable, unsubscribed
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

log = logging.getLogger(__name__)


async def run_sse(feed: Feed, ctx: StreamContext) -> None:
    """Fill ``feed`` from the hub's event stream until the feed is done.

    Raises :class:`TransportUnavailable` when the hub has no ``/sse``, and the error that ends
    the subscription (or the client) when the hub refuses it.
    """
    url = ctx.api.endpoints.url("/sse")
    timeout = httpx.Timeout(ctx.api.timeout, read=ctx.read_timeout)
    attempt = 0
    first = True
    while not feed.done:
        await feed.wait_room()  # a reader that is behind gets no new stream yet
        if feed.done:
            return
        try:
            headers = await ctx.api.stream_headers()
        except Exception as exc:
            await pause(ctx, attempt, feed, f"the token callable failed: {exc!r}")
            attempt += 1
            continue
        params = [("channel", feed.channel)]
        if feed.resume_cursor is not None:
            if first:
                params.append(("cursor", feed.resume_cursor))
            else:
                headers["Last-Event-ID"] = feed.resume_cursor
        elif feed.latest:
            params.append(("latest", "1"))
        why: object = "the hub ended the stream"
        try:
            async with aconnect_sse(
                ctx.api.http, "GET", url, params=params, headers=headers, timeout=timeout
            ) as source:
                await check(source.response, ctx, "/sse")
                kind = source.response.headers.get("content-type", "").partition(";")[0]
                if kind.strip() != "text/event-stream":
                    raise TransportUnavailable(f"{url} does not answer with an event stream")
                first = False
                attempt = 0
                log.info("connected to %s (%s)", url, feed.channel)
                feed.confirmed(None)
                async for event in source.aiter_sse():
                    if not await _handle(feed, event, ctx):
                        break
        except (httpx.RequestError, SSEError, Retry) as exc:
            why = failed(url, exc)
        if feed.done:
            return
        await pause(ctx, attempt, feed, why)
        attempt += 1


async def _handle(feed: Feed, event: ServerSentEvent, ctx: StreamContext) -> bool:
    """Buffer what ``event`` carries; False when the stream should be reopened."""
    kind = event.event
    if kind not in ("message", "reset", "disconnect", "unsubscribe"):
        return True  # presence events, and events for newer clients
    if not event.data:
        # An ``id:``-only block (the stream's opening position), or a heartbeat comment that the
        # parser reports with the last id it saw: a position, not a publication.
        if event.id:
            feed.confirmed(event.id)
        return True
    try:
        body = event.json()
    except ValueError:
        log.warning("ignoring an SSE %s event whose data is not JSON", kind)
        return True
    cursor = event.id or None
    if isinstance(body, dict) and body.get("channel", feed.channel) != feed.channel:
        return True  # a channel the backend added to this stream: not this feed's
    if kind == "message":
        message = message_from(body, cursor)
        if message is not None:
            await feed.put(message)
    elif kind == "unsubscribe":
        raise unsubscribed(feed.channel, body.get("reason"))
    elif kind == "reset":
        reset = reset_from(feed, body, cursor)
        if reset is not None:
            await feed.put(reset)
    else:
        error = disconnect_from(body, ctx)
        if error is not None:
            raise error
        return False
    return True
