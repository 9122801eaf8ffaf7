"""``GET /poll``: long polling and plain polling, with everything needed in the cursor.

A poll reads history after its cursor first. When that holds something (or a reset), or when
``timeout=0``, it answers at once. Otherwise it subscribes its channels through the core with
the positions it just read — the core's subscribe looks again after registering (on Redis at
the channel's position, reading only if it moved), so a publication landing between the read
and the wait is pushed, not lost — and answers with the first publications pushed, or with an
unchanged cursor when ``timeout`` runs out. On Redis the channels subscribe all at once, so
that their round trips share pipelines. A client that goes away while waiting is noticed
through ``http.disconnect`` and its session closed at once.

Each poll is a short core session of kind ``"poll"``: it counts against the connection limits
and in the metrics. Nothing is kept between polls: the next one resumes from the cursor alone,
on any node. A poll that names ``client`` puts its client in presence, not the session (which
would join and leave on every poll): an entry held for the wait and a grace, renewed by each
poll under the id the first was given (:meth:`~clarion.core.presence.Roster.hold_poll`).
"""

from __future__ import annotations

import asyncio

from clarion.asgi import access
from clarion.asgi.access import Params, single_param
from clarion.asgi.channelrequest import (
    LAST_EVENT_ID_PARAMS,
    ChannelEndpoint,
    ChannelRequest,
    authorized,
    channel_request,
    stopped_by_host,
    subscribe_each,
    until_disconnect,
)
from clarion.asgi.pollreply import POLL_WAKE, PollReply, PollReset, PollWaiter
from clarion.asgitypes import Receive, Scope, Send
from clarion.core.hub import Hub
from clarion.core.limits import principal
from clarion.core.pages import CURSOR_BYTES
from clarion.core.presence import POLL_CLIENT
from clarion.core.session import Session
from clarion.errors import BadRequest
from clarion.protocol.codes import CloseCode
from clarion.protocol.errors import ErrorCode
from clarion.protocol.numbers import ascii_decimal
from clarion.protocol.publication import Publication, StreamPosition


def read_timeout(hub: Hub, params: Params) -> float:
    options = hub.settings.poll
    raw = single_param(params, "timeout")
    if raw is None:
        return min(options.timeout, options.timeout_max)
    seconds = ascii_decimal(raw, max_digits=6, max_fraction=6)
    if seconds is None or seconds > options.timeout_max:
        raise BadRequest(
            f"timeout must be a number of seconds from 0 to {options.timeout_max:g}",
            code=ErrorCode.BAD_TIMEOUT,
        )
    return seconds


def read_client(params: Params) -> str | None:
    """``client``: absent, no presence; empty, a new client's first poll; else its id."""
    raw = single_param(params, "client")
    if raw is None or raw == "":
        return raw
    if not POLL_CLIENT.fullmatch(raw):
        raise BadRequest("client must be the id an earlier poll's reply gave, or empty")
    return raw


def charge(hub: Hub, request: ChannelRequest, address: str | None) -> None:
    """Spend one of the client's poll budget per channel the poll names, before any is read:
    a poll costs the hub a check of each (and a subscription of each while it waits), so a
    client polling at once, again and again, on many channels is held to
    ``limits.client_poll_check_rate`` of them, not to what one core can answer."""
    who = principal(request.credentials.user, hub.pending_key(address))
    why = "polling more channels a second than limits.client_poll_check_rate allows"
    hub.poll_checks.require(who, len(request.channels), why)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate in ("*", etag):
            return True
    return False


class PollEndpoint(ChannelEndpoint):
    """``GET /poll?channel=A&cursor=C&timeout=S``; ``DELETE /poll?channel=A&client=ID``, a
    long-poll client leaving the presence of channels it stops polling."""

    METHODS = ("GET", "DELETE")

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        params: Params,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        hub = self.hub
        if scope["method"] == "DELETE":
            await self._leave(scope, send, params, cors)
            return
        timeout = read_timeout(hub, params)
        if access.header(scope, b"last-event-id") or any(p in params for p in LAST_EVENT_ID_PARAMS):
            # An event stream's: ignored here, the poll would start from now without a word.
            raise BadRequest("/poll resumes from cursor=, not Last-Event-ID")
        given = read_client(params)
        request = channel_request(hub, scope, params, params.get("cursor", []))
        address = access.client_address(hub, scope)
        charge(hub, request, address)
        request = await authorized(hub, request, "poll")
        limits = hub.settings.limits
        waiter = PollWaiter(limits.max_history_batch, limits.send_queue_bytes)
        session = hub.open_session(waiter, request.credentials, address)
        reply: PollReply | None
        client: str | None = None
        try:
            if given is not None:
                client = await hub.roster.hold_poll(
                    session, given or None, request.channels, timeout
                )
            reply = await self._read(request, session)
            if reply.empty and timeout > 0 and not session.closed:
                given = None if reply.moved else reply.given
                reply = await self._wait(
                    session, waiter, request, reply.positions, given, timeout, receive
                )
            elif not session.closed:
                reply.hub_changes(waiter)
        finally:
            session.close(CloseCode.NORMAL)
        if reply is None:
            # The client went away: nobody reads the answer, but an application's middleware
            # (Starlette's BaseHTTPMiddleware) takes a request left unanswered for a fault.
            await send({"type": "http.response.start", "status": 499, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        reply.client = client
        cursor = reply.cursor()
        etag = f'"{cursor}"'
        headers = [
            (b"etag", etag.encode("ascii")),
            (b"access-control-expose-headers", b"ETag"),
            *cors,
        ]
        if (
            reply.empty
            and client == (given or None)  # a new id is never left unsaid
            and _etag_matches(access.header(scope, b"if-none-match"), etag)
        ):
            headers += [(b"cache-control", b"no-cache"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        body = reply.body(cursor)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"cache-control", b"no-cache"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _leave(
        self, scope: Scope, send: Send, params: Params, cors: list[tuple[bytes, bytes]]
    ) -> None:
        """The client's entries on the channels go now, and their leaves with them: ``204``
        whether or not it was in their presence (a repeat changes nothing)."""
        hub = self.hub
        client = read_client(params)
        if not client:
            raise BadRequest("client must be the id an earlier poll's reply gave")
        request = await authorized(hub, channel_request(hub, scope, params, []), "poll")
        address = access.client_address(hub, scope)
        await hub.roster.release_poll(request.credentials, address, client, request.channels)
        headers = [(b"cache-control", b"no-cache"), *cors]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _read(self, request: ChannelRequest, session: Session) -> PollReply:
        """History after the cursor, within one reply's count and bytes, shared by channels,
        and within what the client's allowance has left (at least one publication).

        The channels with nothing new are told apart first, all at once: a comparison each in
        process, one pipelined look at their positions on Redis; each of the others costs a
        one-publication read. The channels with something are read
        oldest first, by the time of the first publication each has for the client: when the
        reply fills (the allowance spent, it holds one publication) the others stay where
        their cursor is, and the next poll serves them before anything newer. No channel
        waits on another's later publications, whatever the order the request names them in.
        """
        hub = self.hub
        limits = hub.settings.limits
        count = limits.max_history_batch
        # Taken before the reads, which may wait: concurrent polls find what is left.
        size = hub.reads.reserve(session.rate_key, limits.send_queue_bytes)
        share = max(1, count // len(request.channels))
        found: dict[str, list[Publication | PollReset]] = {}
        start: dict[str, StreamPosition] = {}
        # (time of the first publication after the cursor, request order, channel, cursor)
        behind: list[tuple[int, int, str, StreamPosition]] = []
        cursors = {c: since for c in request.channels if (since := request.since[c]) is not None}
        standing = await hub.standing(cursors)
        for index, channel in enumerate(request.channels):
            since = request.since[channel]
            if since is not None:
                start[channel] = since
                if channel in standing:
                    continue
                first, reason = await hub.history(channel, since=since, limit=1, budget=1)
                if reason is not None:
                    # As on every transport: a reset, then live publications from the current
                    # position. It sends nothing, so it comes first.
                    found[channel] = [PollReset(channel, reason, first.position)]
                elif first.publications:
                    behind.append((first.publications[0].time, index, channel, since))
                continue
            if channel in request.latest:
                # The newest stored publication: its position is the channel's top. It is sent
                # however full the reply is (its start is just before it).
                history, _ = await hub.history(channel, limit=1, reverse=True)
                for pub in history.publications:
                    count -= 1
                    size -= len(pub.json()) + CURSOR_BYTES
                found[channel] = list(history.publications)
            else:
                history, _ = await hub.history(channel, limit=0)
            start[channel] = history.position
        behind.sort()
        for _, _, channel, since in behind:
            if count <= 0 or size <= 0:
                # The reply is full (and holds something): this channel stays where its cursor
                # is, for the next poll, unread; a full reply costs its pages, not its channels.
                break
            history, reason = await hub.history(
                channel, since=since, limit=min(share, count), budget=max(size, 1)
            )
            if reason is not None:  # trimmed since the first read
                found[channel] = [PollReset(channel, reason, history.position)]
                continue
            events: list[Publication | PollReset] = []
            for pub in history.publications:
                if count <= 0 or size <= 0:
                    break
                count -= 1
                size -= len(pub.json()) + CURSOR_BYTES
                events.append(pub)
            found[channel] = events
        hub.reads.give_back(session.rate_key, size)
        reply = PollReply(start, request.given)
        for channel in request.channels:
            if channel in found:
                reply.add_channel(channel, found[channel])
        return reply

    async def _wait(
        self,
        session: Session,
        waiter: PollWaiter,
        request: ChannelRequest,
        positions: dict[str, StreamPosition],
        given: str | None,
        timeout: float,
        receive: Receive,
    ) -> PollReply | None:
        watcher = asyncio.create_task(until_disconnect(receive), name="clarion-poll-watcher")

        async def subscribe(channel: str) -> None:
            await session.subscribe(
                channel, POLL_WAKE, waiter.push, since=positions[channel], checked=True
            )

        def done() -> bool:
            return waiter.woken.done() or session.closed or watcher.done()

        try:
            await subscribe_each(self.hub, request.channels, subscribe, done)
            if not waiter.woken.done() and not watcher.done():
                try:
                    await asyncio.wait(
                        (waiter.woken, watcher),
                        timeout=timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                except asyncio.CancelledError:
                    stopped_by_host(session)  # answered below, with its disconnect
            if watcher.done():
                return None
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        reply = PollReply(positions, given)
        for channel in request.channels:
            events = [e for e in waiter.events if _channel_of(e) == channel]
            if events:
                reply.add_channel(channel, events)
        reply.disconnect = waiter.disconnect
        reply.hub_changes(waiter)
        return reply


def _channel_of(event: Publication | PollReset) -> str:
    return event.channel
