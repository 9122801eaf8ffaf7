"""How much the client reads from whatever answers at the hub's URL: every read is bounded.

A wrong URL, a compromised proxy or a hostile server must not be able to fill the client's
memory, so no answer is read whole before its size is known. Each kind of read has one limit,
set from what a real hub can send (docs/client.md, "Limits on what the client reads"):

- ``max_event_bytes`` (default 1 MiB): one SSE event, its lines and comments together. A hub's
  event is one publication of at most ``limits.max_message_bytes`` (64 KiB by default) as JSON,
  with its envelope and an ``id:`` of up to 128 channels' positions;
- ``max_reply_bytes`` (default 8 MiB): one poll reply, API reply (history, presence, publish…)
  or WebSocket message. A reply holds up to the hub's ``limits.send_queue_bytes`` (1 MiB by
  default) and one publication more;
- :data:`MAX_ERROR_BYTES` (64 KiB): the body of an error answer (a 4xx or 5xx), a few hundred
  bytes from a hub.

The limits count the bytes that come, so every request asks for its answer uncompressed
(:data:`UNCOMPRESSED`): a compressed answer inflates a thousandfold from one read, before its
size is known. One compressed anyway is refused unread (:class:`Compressed`).

Past a limit the connection is dropped and the attempt fails: :class:`Dropped` is a
:class:`Retry`, so a stream or a WebSocket connection tries again after the backoff delay, and a
request raises :class:`ConnectionLost` naming the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
from httpx_sse import ServerSentEvent

from clarion.client.refusals import Retry

MAX_EVENT_BYTES = 1024 * 1024
MAX_REPLY_BYTES = 8 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024

# Every request's: what the hub sends is not compressed, and what the limits count is what came.
UNCOMPRESSED = {"Accept-Encoding": "identity"}

_BREAK = re.compile(rb"\r\n?|\n")  # an SSE line ends at CRLF, CR or LF
# Headers that describe the body as sent: a copy holding the body as read has none of them.
_AS_SENT = frozenset({"content-encoding", "content-length", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """The client's limits (``connect(max_event_bytes=…, max_reply_bytes=…)``)."""

    event: int = MAX_EVENT_BYTES
    reply: int = MAX_REPLY_BYTES

    def __post_init__(self) -> None:
        if self.event < 1 or self.reply < 1:
            raise ValueError("max_event_bytes and max_reply_bytes must be positive")


class Dropped(Retry):
    """An answer the client will not read: its connection is dropped."""


class TooLarge(Dropped):
    """An answer over one of the client's limits."""

    def __init__(self, what: str, limit: int, option: str | None) -> None:
        named = f" ({option})" if option else ""
        super().__init__(f"{what} of more than {limit} bytes{named}")
        self.limit = limit


class Compressed(Dropped):
    """An answer compressed although the request asked for it as sent."""

    def __init__(self, coding: str) -> None:
        super().__init__(f"an answer with content-encoding {coding[:40]!r}, not asked for")


def dropped(url: str, exc: Dropped) -> str:
    return f"{url} sent {exc}: the connection was dropped"


def refuse_compressed(response: httpx.Response) -> None:
    """Raise :class:`Compressed` if ``response``'s body is compressed (before any is read)."""
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise Compressed(coding)


def _declared(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None


class _Body:
    """A body read in chunks, ``limit`` bytes at most (one declared longer is refused first)."""

    __slots__ = ("data", "limit", "option", "what")

    def __init__(self, response: httpx.Response, limit: int, what: str, option: str | None):
        self.data = bytearray()
        self.limit, self.what, self.option = limit, what, option
        refuse_compressed(response)
        declared = _declared(response)
        if declared is not None and declared > limit:
            raise TooLarge(what, limit, option)

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            raise TooLarge(self.what, self.limit, self.option)


async def read_body(
    response: httpx.Response, limit: int, what: str, option: str | None
) -> httpx.Response:
    """``response`` (opened with ``stream``) with its body read, ``limit`` bytes at most."""
    body = _Body(response, limit, what, option)
    async for chunk in response.aiter_bytes():
        body.add(chunk)
    return _holding(response, bytes(body.data))


def read_body_sync(
    response: httpx.Response, limit: int, what: str, option: str | None
) -> httpx.Response:
    """:func:`read_body` for a response of a blocking ``httpx.stream``."""
    body = _Body(response, limit, what, option)
    for chunk in response.iter_bytes():
        body.add(chunk)
    return _holding(response, bytes(body.data))


async def read_answer(response: httpx.Response, limits: ReadLimits) -> httpx.Response:
    """A reply read up to ``max_reply_bytes``, an error answer up to :data:`MAX_ERROR_BYTES`."""
    if response.is_success:
        return await read_body(response, limits.reply, "a reply", "max_reply_bytes")
    return await read_body(response, MAX_ERROR_BYTES, f"an HTTP {response.status_code} body", None)


def _holding(response: httpx.Response, body: bytes) -> httpx.Response:
    """A copy of ``response`` holding ``body``, as ``response.json()`` and ``.text`` read it."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _AS_SENT]
    kept = {k: response.extensions.get(k) for k in ("reason_phrase", "http_version")}
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions={k: v for k, v in kept.items() if v is not None},
    )


class EventReader:
    """Server-sent events from a stream's bytes, none over ``limit`` bytes.

    Events are parsed as ``httpx_sse`` parses them (an ``id:``-only block is an event; the last
    id is kept across events), but an event's bytes — its lines, comments and line ends, up to
    the blank line that ends it — are counted as they arrive, and past ``limit`` it raises
    :class:`TooLarge` instead of buffering more: a line that never ends, or lines that never
    make an event, cannot grow the client.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._line = bytearray()
        self._held = 0  # bytes of the event being read
        self._cr = False  # the last chunk ended with CR: an LF that starts the next is its pair
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        pos = 0
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):
                pos = 1
        for end in _BREAK.finditer(chunk, pos):
            self._take(chunk, pos, end.end())
            line = bytes(self._line[: len(self._line) - (end.end() - end.start())])
            self._line.clear()
            event = self._read_line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
            pos = end.end()
        self._cr = chunk.endswith(b"\r")
        self._take(chunk, pos, len(chunk))
        return events

    def _take(self, chunk: bytes, start: int, end: int) -> None:
        self._held += end - start
        if self._held > self.limit:
            raise TooLarge("an event", self.limit, "max_event_bytes")
        self._line += chunk[start:end]

    def _read_line(self, line: str) -> ServerSentEvent | None:
        if not line:
            self._held = 0
            if not (self._event or self._data or self._id or self._retry is not None):
                return None
            event = ServerSentEvent(self._event, "\n".join(self._data), self._id, self._retry)
            self._event, self._data, self._retry = "", [], None  # the id is kept (the spec's)
            return event
        if line.startswith(":"):
            return None  # a comment (the hub's heartbeat)
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None
