"""What one ``GET /poll`` collects and answers: the transport a waiting poll is to the core
(:class:`PollWaiter`), and the reply built from what it read or was pushed (:class:`PollReply`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from clarion.core.fanout import WireFormat, cursor_if_stored
from clarion.core.pages import CURSOR_BYTES
from clarion.core.resume import SubscribeResult
from clarion.core.session import Session
from clarion.protocol import messages
from clarion.protocol.codes import Disconnect, disconnect_for
from clarion.protocol.cursor import Cursor
from clarion.protocol.publication import Publication, StreamPosition

# The waiter reads the publication objects themselves: nothing to encode per poll.
POLL_WAKE = WireFormat("poll/publication", "poll", lambda pub: pub)


class PollReset:
    __slots__ = ("channel", "position", "reason")

    def __init__(self, channel: str, reason: str, position: StreamPosition) -> None:
        self.channel = channel
        self.reason = reason
        self.position = position


class PollWaiter:
    """A waiting poll's transport: collects what the core pushes and wakes the poll."""

    kind = "poll"
    __slots__ = (
        "bytes_left",
        "count_left",
        "disconnect",
        "events",
        "presence",
        "subscribed",
        "unsubscribed",
        "woken",
    )

    def __init__(self, count: int, size: int) -> None:
        self.events: list[Publication | PollReset] = []
        # Presence events (``{"join": {...}}``) while the poll waits: it answers with them.
        self.presence: list[dict[str, Any]] = []
        self.unsubscribed: dict[str, str] = {}  # channel -> reason
        # Channels the hub subscribed meanwhile -> where the client starts reading them.
        self.subscribed: dict[str, StreamPosition] = {}
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.disconnect: Disconnect | None = None
        # Beyond one reply's worth nothing is kept: the next poll reads it from history.
        self.count_left = count
        self.bytes_left = size

    def _wake(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)

    def push(self, pub: Publication) -> None:
        if pub.ephemeral:
            # A live signal answers the waiting poll; beyond one reply's worth it is dropped
            # (it leaves no gap: it was never in the stream).
            if self.count_left > 0 and self.bytes_left > 0:
                self.count_left -= 1
                self.bytes_left -= len(pub.json())
                self.events.append(pub)
            self._wake()
            return
        if self.count_left > 0 and self.bytes_left > 0:
            self.count_left -= 1
            self.bytes_left -= len(pub.json()) + CURSOR_BYTES
            self.events.append(pub)
        else:
            self.count_left = self.bytes_left = 0  # keep later ones out: no gap in a channel
        self._wake()

    @property
    def last_activity(self) -> float:
        return time.monotonic()

    def ping(self) -> None:
        return None

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        position = Cursor.decode(cursor).get(channel)
        if position is not None and self.count_left > 0:
            self.events.append(PollReset(channel, reason, position))
        self._wake()

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        if len(self.presence) < self.count_left:  # bounded like the publications
            self.presence.append({kind: event})
        self._wake()

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        self.unsubscribed[channel] = reason
        self.subscribed.pop(channel, None)
        self._wake()

    async def hub_subscribe(
        self, session: Session, channel: str, since: StreamPosition | None, *, server: bool
    ) -> None:
        """The reply names the channel and the cursor holds its position: the client adds it
        to its next poll, which reads what was published since from history."""

        def ready(result: SubscribeResult) -> None:
            # A ``since`` history could not cover stays the channel's position: the next
            # poll, reading from it, reports the reset. (The top would skip the gap unsaid;
            # this reply names no such channel, so it carries no reset of its.)
            start = result.start
            if since is not None and result.reset is not None:
                start = since
            self.subscribed[channel] = start
            self._wake()

        await session.subscribe(
            channel, POLL_WAKE, _ignore, since=since, on_ready=ready, server=server
        )

    def close(self, code: int, reason: str) -> None:
        if self.disconnect is None:
            self.disconnect = disconnect_for(code)
        self._wake()


class PollReply:
    """Builds one reply: per channel its publications and where it now stands."""

    __slots__ = (
        "client",
        "disconnect",
        "events",
        "given",
        "moved",
        "positions",
        "publications",
        "reset",
        "subscribed",
        "unsubscribed",
    )

    def __init__(self, since: dict[str, StreamPosition], given: str | None = None) -> None:
        self.positions = dict(since)
        # The request's cursor, when it held exactly ``since``: the reply's while nothing moves
        # (encoding one per channel again, only to get it back, cost as much as reading them).
        self.given = given
        self.moved = False
        self.publications: list[Publication] = []
        self.reset: tuple[str, str, StreamPosition] | None = None
        self.disconnect: Disconnect | None = None
        self.unsubscribed: dict[str, str] = {}
        self.subscribed: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.client: str | None = None  # the long-poll client's id in presence

    def hub_changes(self, waiter: PollWaiter) -> None:
        """What the hub subscribed and unsubscribed while this poll was open."""
        self.unsubscribed = waiter.unsubscribed
        self.events = waiter.presence
        for channel, position in waiter.subscribed.items():
            self.subscribed.append(channel)
            self.positions[channel] = position
            self.moved = True

    def add_channel(self, channel: str, events: list[Publication | PollReset]) -> None:
        """Take one channel's events, in order. One reset per reply: a channel with another
        reset keeps its old position and is left for the next poll, which reports it at once."""
        if any(isinstance(e, PollReset) for e in events):
            if self.reset is not None:
                return
            first = next(e for e in events if isinstance(e, PollReset))
            self.reset = (channel, first.reason, first.position)
        self.moved = True
        for event in events:
            if isinstance(event, PollReset):
                self.positions[channel] = event.position
            else:
                self.publications.append(event)
                if not event.ephemeral:  # a signal moves no cursor
                    self.positions[channel] = event.position

    @property
    def empty(self) -> bool:
        return (
            not self.publications
            and self.reset is None
            and self.disconnect is None
            and not self.unsubscribed
            and not self.subscribed
            and not self.events
        )

    def cursor(self) -> str:
        if self.given is not None and not self.moved:
            return self.given
        return Cursor.of(self.positions).encode()

    def body(self, cursor: str) -> bytes:
        pubs = b",".join(
            messages.encode_publication(pub, cursor_if_stored(pub)) for pub in self.publications
        )
        out = b'{"publications":[%s],"cursor":"%s"' % (pubs, cursor.encode("ascii"))
        if self.client is not None:
            out += b',"client":"%s"' % self.client.encode("ascii")
        if self.reset is not None:
            channel, reason, position = self.reset
            single = Cursor.single(channel, position).encode()  # the channel's own, after the gap
            out += b',"reset":' + orjson.dumps(
                {"channel": channel, "reason": reason, "cursor": single}
            )
        if self.subscribed:
            out += b',"subscribed":' + orjson.dumps(
                [
                    {"channel": c, "cursor": Cursor.single(c, self.positions[c]).encode()}
                    for c in self.subscribed
                ]
            )
        if self.unsubscribed:
            out += b',"unsubscribed":' + orjson.dumps(
                [{"channel": c, "reason": r} for c, r in self.unsubscribed.items()]
            )
        if self.events:
            out += b',"events":' + orjson.dumps(self.events)
        if self.disconnect is not None:
            out += b',"disconnect":' + orjson.dumps(self.disconnect.to_dict())
        return out + b"}"


def _ignore(pub: Publication) -> None:
    return None  # read from history by the next poll, which names the channel
