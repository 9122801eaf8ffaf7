"""Server-Sent Events encoding: fields, events and comments as bytes, framed per the WHATWG spec.

An event is a block of ``field: value`` lines ended by a blank line. The parser splits lines on
CR, LF and CRLF alike, so a value containing any of them would end its line early and could forge
fields or events. :func:`encode_event` therefore splits ``data`` on every line break into several
``data:`` lines — the parser joins them back with LF, so CR and CRLF in data arrive as LF, which
is all the format can carry. NUL is passed through in data (parsers keep it), while an ``id``
containing NUL would be ignored by parsers, so ids and event names with NUL or a line break are
refused. Each value is written after ``": "`` so a leading space in the value survives (the
parser strips exactly one).

Publication events on the wire::

    id: <cursor>
    event: message
    data: {"channel":"chat:lobby","offset":7,...,"cursor":"<cursor>"}

The ``id:`` line comes first so that, on a stream carrying several channels, a per-stream ``id:``
line can be prepended to the ``event:``/``data:`` part shared by every stream
(:func:`publication_body`), which is encoded once per publication.
"""

from __future__ import annotations

import re

import orjson

from clarion.protocol import messages
from clarion.protocol.publication import Publication

MESSAGE = "message"
RESET = "reset"
DISCONNECT = "disconnect"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
CONTENT_TYPE = b"text/event-stream; charset=utf-8"

HEARTBEAT = b": ping\n\n"

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\0]")


def _check_field(name: str, value: str) -> bytes:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"an SSE {name} must not contain CR, LF or NUL")
    return value.encode("utf-8")


def data_lines(data: bytes | str) -> bytes:
    """``data:`` lines carrying ``data``, one per line of it (CR, LF and CRLF all split)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if raw.find(b"\n") < 0 and raw.find(b"\r") < 0:  # the common case: one line (any JSON)
        return b"data: " + raw + b"\n"
    return b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(raw))


def id_line(event_id: str) -> bytes:
    return b"id: " + _check_field("id", event_id) + b"\n"


def encode_event(data: bytes | str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One complete event: optional ``id:`` and ``event:`` lines, ``data:`` lines, a blank line."""
    out = b""
    if id is not None:
        out += id_line(id)
    if event is not None:
        out += b"event: " + _check_field("event name", event) + b"\n"
    return out + data_lines(data) + b"\n"


def encode_comment(text: str = "") -> bytes:
    """A comment: ignored by parsers, it keeps proxies and idle timers from closing the stream."""
    raw = text.encode("utf-8")
    return b"".join(b": " + line + b"\n" for line in _LINE_BREAK.split(raw)) + b"\n"


def reset_mark(channel: str, reason: str) -> bytes:
    """A comment line of a stream's opening block: ``channel`` did not recover (``reason``),
    its ``reset`` event follows. Parsers that do not look for it skip it, as any comment."""
    fields = (_check_field("channel", channel), _check_field("reason", reason))
    return b": reset %s %s\n" % fields


def encode_retry(milliseconds: int) -> bytes:
    """The reconnection delay a client should use, sent first on every stream."""
    if milliseconds < 0:
        raise ValueError("retry must not be negative")
    return b"retry: %d\n\n" % milliseconds


def publication_body(pub: Publication, cursor: str | None) -> bytes:
    """``event: message`` and the publication's ``data:``, without an ``id:`` line."""
    return b"event: message\n" + data_lines(messages.encode_publication(pub, cursor)) + b"\n"


def publication_event(pub: Publication, cursor: str | None) -> bytes:
    """A publication event whose ``id:`` is ``cursor`` (the stream carries one channel).

    An ephemeral publication (``cursor`` ``None``) has no ``id:`` line: the stream's last event
    id, what a reconnect resumes from, stays where the stored publications left it.
    """
    if cursor is None:
        return publication_body(pub, None)
    return id_line(cursor) + publication_body(pub, cursor)


def reset_event(channel: str, reason: str, cursor: str, stream_id: str | None) -> bytes:
    """A gap that history could not fill; live events follow from ``cursor``."""
    body = orjson.dumps({"channel": channel, "reason": reason, "cursor": cursor})
    return encode_event(body, event=RESET, id=stream_id)


def disconnect_event(code: int, reason: str, reconnect: bool) -> bytes:
    body = orjson.dumps({"code": code, "reason": reason, "reconnect": reconnect})
    return encode_event(body, event=DISCONNECT)


def subscribe_event(result: dict[str, object]) -> bytes:
    """The hub added a channel to the stream (``data`` as a ``/ws`` subscribe reply); the
    caller puts the stream's ``id:`` in front."""
    return encode_event(orjson.dumps(result), event=SUBSCRIBE)


def unsubscribe_event(channel: str, reason: str, stream_id: str | None = None) -> bytes:
    """The hub ended the stream's subscription to ``channel``; the stream goes on."""
    body = orjson.dumps({"channel": channel, "reason": reason})
    return encode_event(body, event=UNSUBSCRIBE, id=stream_id)


def presence_event(kind: str, event: dict[str, object]) -> bytes:
    """A presence ``join`` or ``leave`` event."""
    return encode_event(orjson.dumps(event), event=kind)
