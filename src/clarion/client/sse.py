"""Server-Sent Events transport: one ``GET /sse?channel=A&channel=B…`` stream for every
subscription (see :mod:`clarion.client.shared`).

Each open names every channel with its position in one ``cursor=`` (the hub merges them); the
hub opens the stream with an ``id:``-only block holding where each channel starts, so a
subscription made "from now" has a resume point before its first event. Events are routed by
their channel; each publication carries its own channel's cursor, which is what its
subscription keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
from httpx_sse import ServerSentEvent

from clarion.client.bounds import EventReader
from clarion.client.errors import TransportUnavailable, unsubscribed
from clarion.client.refusals import Retry
from clarion.client.shared import SharedStream, naming, own_cursor, query, read_cursor
from clarion.client.streams import check, disconnect_from, failed, message_from, reset_from
from clarion.client.subscription import Feed

log = logging.getLogger(__name__)


async def open_sse(stream: SharedStream, feeds: list[Feed], answered: Callable[[], None]) -> str:
    """Read one event stream for ``feeds`` until it ends: why it ended. ``answered`` is called
    at the stream's first id, where it has opened.

    Raises :class:`TransportUnavailable` when the hub has no ``/sse``, and the error that ends
    subscriptions (or the client) when the hub refuses the stream.
    """
    ctx = stream.ctx
    url = ctx.api.endpoints.url("/sse")
    timeout = httpx.Timeout(ctx.api.timeout, read=ctx.read_timeout)
    try:
        headers = await ctx.api.stream_headers()
    except Exception as exc:
        return f"the token callable failed: {exc!r}"
    by_channel = {feed.channel: feed for feed in feeds}
    # The stream is read through EventReader: no event over max_event_bytes is buffered.
    headers |= {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    try:
        async with ctx.api.http.stream(
            "GET", url, params=httpx.QueryParams([*query(feeds)]), headers=headers, timeout=timeout
        ) as response:
            await check(response, ctx, "/sse")
            kind = response.headers.get("content-type", "").partition(";")[0]
            if kind.strip() != "text/event-stream":
                raise TransportUnavailable(f"{url} does not answer with an event stream")
            stream.opened()
            log.info("connected to %s (%s)", url, naming(feeds))
            for feed in feeds:
                # The hub has subscribed this stream: what it sends from now on (a live
                # signal too) comes here, and the stream this one replaces delivers no more.
                # What that one has not delivered yet, this one brings from where it was asked.
                feed.carrier = by_channel
                if feed.resume_cursor is not None:
                    feed.confirmed(None)  # resumed from where it stands
            # The others are confirmed by the stream's first id, where they start: ready before
            # it, a subscription reopened meanwhile would start from a later "now".
            reader = EventReader(ctx.api.limits.event)
            async for chunk in response.aiter_bytes():
                if not _take(stream, by_channel, reader.feed(chunk), answered):
                    break
    except (httpx.RequestError, Retry) as exc:
        stream.refused_for(exc)
        return failed(url, exc)
    return "the hub ended the stream"


def _take(
    stream: SharedStream,
    feeds: dict[str, Feed],
    events: list[ServerSentEvent],
    answered: Callable[[], None],
) -> bool:
    """Handle one read's events; False when the stream should be reopened."""
    for event in events:
        going = _handle(stream, feeds, event)
        if event.id:
            _start(feeds, event.id)
            answered()
        if not going:
            return False
    return True


def _start(feeds: dict[str, Feed], event_id: str) -> None:
    """Confirm the subscriptions still waiting at the positions the stream's id gives (after
    the event it came with: a publication of theirs is theirs, not a duplicate)."""
    waiting = [
        feed
        for feed in feeds.values()
        if not feed.done and (feed.resume_cursor is None or not feed.ready.done())
    ]
    if not waiting:
        return
    at = read_cursor(event_id)
    if at is not None:
        for feed in waiting:
            feed.confirmed(own_cursor(at, feed.channel))


def _handle(stream: SharedStream, feeds: dict[str, Feed], event: ServerSentEvent) -> bool:
    """Buffer what ``event`` carries; False when the stream should be reopened."""
    kind = event.event
    if kind not in ("message", "reset", "disconnect", "unsubscribe"):
        return True  # presence events, and events for newer clients
    if not event.data:
        # An ``id:``-only block (where the stream opens), or a heartbeat comment that the parser
        # reports with the last id it saw: a position, not a publication (see _start).
        return True
    try:
        body = event.json()
    except ValueError:
        log.warning("ignoring an SSE %s event whose data is not JSON", kind)
        return True
    if kind == "disconnect":
        error = disconnect_from(body, stream.ctx)
        if error is not None:
            raise error
        return False
    channel = body.get("channel") if isinstance(body, dict) else None
    feed = feeds.get(channel) if isinstance(channel, str) else None
    if feed is None:
        return True  # a channel the backend added to this stream: no subscription of ours
    if feed.carrier is not feeds:
        return True  # replaced for it: a newer stream delivers to it
    if kind == "message":
        message = message_from(body)  # its own cursor: the event's ``id:`` is the stream's
        if message is not None:
            feed.deliver(message)
    elif kind == "unsubscribe":
        stream.end(feed, unsubscribed(feed.channel, body.get("reason")))
    else:
        at = read_cursor(event.id) if event.id else None
        reset = reset_from(feed, body, None if at is None else own_cursor(at, feed.channel))
        if reset is not None:
            feed.deliver(reset)
    return True
