"""Long-polling transport: one ``GET /poll?channel=A&channel=B…&cursor=K&timeout=S`` loop for
every subscription (see :mod:`clarion.client.shared`).

While a subscription has no position yet (made without ``since``), or the hub has not answered
this loop yet, the poll is a plain one (``timeout=0``): it returns each channel's current
position at once, so the subscription has a resume point before the first long poll, and
nothing published from then on can slip between two requests. Each reply's combined cursor
moves every subscription it answered for to its own channel's position.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx

from clarion.client.bounds import read_body
from clarion.client.errors import RequestFailed, unsubscribed
from clarion.client.items import Message
from clarion.client.refusals import Retry
from clarion.client.shared import SharedStream, lanes, naming, own_cursor, query, read_cursor
from clarion.client.streams import (
    StreamContext,
    check,
    disconnect_from,
    failed,
    message_from,
    reset_from,
)
from clarion.client.subscription import Feed
from clarion.protocol.cursor import Cursor
from clarion.protocol.errors import ErrorCode

log = logging.getLogger(__name__)

FALLBACK_TIMEOUT = 10.0  # for a hub whose ``poll.timeout_max`` is below the client's timeout
# Seconds a leave may take: without it the client leaves all the same, when its lease ends.
LEAVE_TIMEOUT = 2.0


async def open_poll(
    stream: SharedStream, feeds: list[Feed], replied: Callable[[], None]
) -> str | None:
    """Poll for ``feeds`` until a poll fails: why it failed (see :func:`open_sse`). ``replied``
    is called at the first reply."""
    ctx = stream.ctx
    url = ctx.api.endpoints.url("/poll")
    answered = False  # said once per open, as the other transports say their connection
    longest = ctx.poll_timeout  # lowered to the hub's ``poll.timeout_max`` if that is less
    while True:
        if any(feed.done or feed.paused for feed in feeds):
            # Ended by the hub, or a reader behind: the shared stream reopens without it.
            feeds = [feed for feed in feeds if not (feed.done or feed.paused)]
            if not feeds:
                return None  # the stream reopens for the change
        # A plain poll until this open was answered, whatever the cursors: a long poll of a
        # quiet channel would outlast the first open's deadline with the hub up, and hold up
        # the change of subscriptions that waits for this open's first reply.
        ready = answered and all(f.resume_cursor is not None for f in feeds)
        wait = longest if ready else 0.0
        params = httpx.QueryParams(
            [*query(feeds), ("timeout", _seconds(wait)), ("client", ctx.poll.id)]
        )
        timeout = httpx.Timeout(ctx.api.timeout, read=wait + ctx.api.timeout)
        try:
            headers = await ctx.api.stream_headers()
        except Exception as exc:
            return f"the token callable failed: {exc!r}"
        asked = [feed.channel for feed in feeds]
        ctx.poll.ask(asked)
        try:
            async with ctx.api.http.stream(
                "GET", url, params=params, headers=headers, timeout=timeout
            ) as response:
                await check(response, ctx, "/poll")
                limit = ctx.api.limits.reply
                raw = (await read_body(response, limit, "a reply", "max_reply_bytes")).content
            body = json.loads(raw)
            cursor = body.get("cursor") if isinstance(body, dict) else None
            at = read_cursor(cursor) if isinstance(cursor, str) and cursor else None
            if at is None:
                raise Retry(f"{url} answered without a cursor")
            if isinstance(given := body.get("client"), str):
                ctx.poll.id = given
        except (httpx.RequestError, Retry, ValueError) as exc:
            stream.refused_for(exc)
            return failed(url, exc)
        except RequestFailed as exc:
            if exc.code != ErrorCode.BAD_TIMEOUT or longest <= FALLBACK_TIMEOUT:
                raise
            log.info("the hub refused timeout=%s; polling with %s s", longest, FALLBACK_TIMEOUT)
            longest = FALLBACK_TIMEOUT
            continue
        finally:
            ctx.poll.done(asked)  # answered (its id taken), failed or cut
        if not answered:
            log.info("connected to %s (%s)", url, naming(feeds))
            answered = True
            stream.opened()
        _take(stream, feeds, body, at)
        error = disconnect_from(body.get("disconnect"), ctx)
        if error is not None:
            raise error
        replied()


async def leave_poll(ctx: StreamContext, feeds: list[Feed]) -> None:
    """Tell the hub that this client's polls no longer read ``feeds``' channels: it leaves
    their presence now, not when the lease of its last poll ends (``DELETE /poll``). Never
    raises: a leave that fails changes only when."""
    if not feeds:
        return
    url = ctx.api.endpoints.url("/poll")
    try:
        async with asyncio.timeout(LEAVE_TIMEOUT):  # the token callable's time included
            # After the polls that named them: one reaching the hub later would undo the leave
            # (and the first one's reply gives the id).
            await ctx.poll.quiet([feed.channel for feed in feeds])
            client = ctx.poll.id
            if not client:
                return
            headers = await ctx.api.stream_headers()
            answers = await asyncio.gather(
                *(
                    ctx.api.status(
                        "DELETE",
                        url,
                        params=httpx.QueryParams(
                            [*(("channel", feed.channel) for feed in lane), ("client", client)]
                        ),
                        headers=headers,
                    )
                    for lane in lanes(feeds)
                )
            )
    except Exception as exc:
        log.debug("leaving %s failed: %r", naming(feeds), exc)
        return
    for answer in answers:
        if answer != 204:
            log.debug("leaving %s: HTTP %d", naming(feeds), answer)


def _take(stream: SharedStream, feeds: list[Feed], body: dict[str, Any], at: Cursor) -> None:
    """Buffer what one reply carries, and move each subscription to where the reply leaves it."""
    by_channel = {feed.channel: feed for feed in feeds}
    for feed in feeds:
        feed.confirmed(own_cursor(at, feed.channel))
    messages: dict[str, list[Message]] = {}
    for message in map(message_from, body.get("publications", ())):
        if message is not None and message.channel in by_channel:
            messages.setdefault(message.channel, []).append(message)
    reset_body = body.get("reset")
    if isinstance(reset_body, dict) and reset_body.get("channel") in by_channel:
        feed = by_channel[reset_body["channel"]]
        here = messages.get(feed.channel, [])
        reset = reset_from(feed, reset_body, _before(here, own_cursor(at, feed.channel)))
        if reset is not None:
            feed.deliver(reset)
    for channel, delivered in messages.items():
        feed = by_channel[channel]
        for message in delivered:
            feed.deliver(message)
    for feed in feeds:
        # A reader behind keeps its own position (the next open resumes it from there).
        if not (feed.done or feed.paused) and (mine := own_cursor(at, feed.channel)) is not None:
            feed.advance(mine)
    for ended in body.get("unsubscribed") or ():
        gone = by_channel.get(str(ended.get("channel"))) if isinstance(ended, dict) else None
        if gone is not None:
            stream.end(gone, unsubscribed(gone.channel, ended.get("reason")))


def _seconds(value: float) -> str:
    # The hub reads plain decimals (no exponent), to the microsecond at most.
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _before(messages: list[Message], cursor: str | None) -> str | None:
    """Where a reset leaves the stream: just before the first publication that follows it."""
    stored = [m for m in messages if not m.ephemeral]  # signals have no place in the stream
    return stored[0].before() if stored else cursor
