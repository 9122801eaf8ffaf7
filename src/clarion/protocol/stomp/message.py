"""``MESSAGE`` frames for fan-out: a shared tail per publication, a prefix per subscription.

Every subscriber of a channel gets the same ``MESSAGE`` but for its ``subscription`` header. So
the header is placed first and the frame is cut right after it::

    MESSAGE\\nsubscription:<id>          <- prefix: built once per subscription
    \\nmessage-id:<cursor>\\n...\\n\\n<body>\\0   <- tail: built once per publication and flavour

The flavours differ in escaping (STOMP 1.0 writes ``:`` raw, 1.1+ writes ``\\c``) and in the
``ack`` header that subscriptions with ``ack: client``/``client-individual`` need. A delivery is
then the prefix followed by the tail.
"""

from __future__ import annotations

import base64
import itertools

from clarion.protocol.jsonkeep import dumps_to_keep
from clarion.protocol.publication import Publication
from clarion.protocol.stomp.frame import Frame, escape, serialise

TOPIC = "/topic/"
RESET_PREFIX = "reset-"
# An ephemeral publication's message-id: ``ephemeral-<n>``, unique within the process. It
# names no stream position, so acknowledging it moves nothing.
EPHEMERAL_PREFIX = "ephemeral-"
_signal_serial = itertools.count(1)
JSON_TYPE = "application/json"


def destination(channel: str, *, escaped: bool) -> str:
    return TOPIC + (escape(channel) if escaped else channel)


def message_prefix(subscription: str, *, escaped: bool) -> bytes:
    """The per-subscription head of every ``MESSAGE``: command and ``subscription`` header."""
    value = escape(subscription) if escaped else subscription
    return b"MESSAGE\nsubscription:" + value.encode()


def message_tail(
    pub: Publication,
    cursor: str | None,
    body: bytes,
    *,
    escaped: bool,
    ack: bool,
    ack_suffix: str = "",
) -> bytes:
    """The shared rest of a ``MESSAGE``: every header after ``subscription``, the body, the NUL.

    ``body`` is :func:`message_body`; ``cursor`` the publication's single-channel cursor, which
    is the ``message-id`` and, followed by ``ack_suffix``, the ``ack`` id: a client resumes
    from it with ``x-since``.
    """
    if cursor is None:  # ephemeral: no place in the stream, ``x-ephemeral`` instead
        cursor = f"{EPHEMERAL_PREFIX}{next(_signal_serial)}"
        key = pub.key
        place = "\nx-ephemeral:true"
        if key is not None:
            place += _user_header("x-key", key, escaped)
    else:
        epoch = escape(pub.epoch) if escaped else pub.epoch
        place = f"\nx-offset:{pub.offset}\nx-epoch:{epoch}"
    ack_header = f"\nack:{cursor}{ack_suffix}" if ack else ""
    head = (
        f"\nmessage-id:{cursor}{ack_header}"
        f"\ndestination:{destination(pub.channel, escaped=escaped)}"
        f"{_content_type(pub, escaped)}\ncontent-length:{len(body)}{place}"
    )
    attrs = pub.attrs
    headers = attrs.get("headers") if attrs else None
    if headers:
        head += "".join(_user_header(str(k), str(v), escaped) for k, v in headers.items())
    return head.encode() + b"\n\n" + body + b"\0"


def is_binary(pub: Publication) -> bool:
    """Whether ``pub``'s ``MESSAGE`` body is not UTF-8: it travels in a binary WebSocket
    message (a text message must be UTF-8)."""
    attrs = pub.attrs
    return attrs is not None and attrs.get("encoding") == "base64"


def message_body(pub: Publication) -> bytes:
    """The ``MESSAGE`` body: the raw body a publication with an ``encoding`` carries, or its
    ``data`` as JSON."""
    attrs = pub.attrs
    encoding = attrs.get("encoding") if attrs else None
    if encoding == "utf-8" and isinstance(pub.data, str):
        return pub.data.encode()
    if encoding == "base64" and isinstance(pub.data, str):
        return base64.b64decode(pub.data)
    return dumps_to_keep(pub.data)  # memoised on the publication


def _content_type(pub: Publication, escaped: bool) -> str:
    attrs = pub.attrs
    if not attrs or "encoding" not in attrs:
        return f"\ncontent-type:{JSON_TYPE}"
    content_type = attrs.get("content_type")
    if content_type is None:
        return ""  # sent without one: delivered without one
    return _user_header("content-type", str(content_type), escaped)


def _user_header(name: str, value: str, escaped: bool) -> str:
    if escaped:
        return f"\n{escape(name)}:{escape(value)}"
    # STOMP 1.0 cannot carry a line break, or a colon in a name: those become spaces.
    name = name.replace(":", " ")
    return f"\n{_one_line(name)}:{_one_line(value)}"


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def reset_frame(
    subscription: str,
    channel: str,
    reason: str,
    cursor: str,
    *,
    escaped: bool,
    ack: bool,
    ack_suffix: str = "",
) -> bytes:
    """The reset signal: a ``MESSAGE`` with ``x-reset``, ``x-cursor`` and an empty body.

    Publications between the client's position and ``cursor`` are gone; live ones follow.
    ``message-id`` is ``reset-<cursor>``, never a publication's id.
    """
    message_id = RESET_PREFIX + cursor
    headers = [("subscription", subscription), ("message-id", message_id)]
    if ack:
        headers.append(("ack", message_id + ack_suffix))
    headers += [
        ("destination", TOPIC + channel),
        ("x-reset", reason),
        ("x-cursor", cursor),
        ("content-length", "0"),
    ]
    return serialise(Frame("MESSAGE", tuple(headers)), escaped=escaped)


def event_frame(
    subscription: str,
    channel: str,
    event: str,
    headers: tuple[tuple[str, str], ...],
    *,
    escaped: bool,
    body: bytes = b"",
) -> bytes:
    """A signal, not a publication: a ``MESSAGE`` with ``x-event`` set (``subscribe``,
    ``unsubscribe`` with an empty body; presence ``join``, ``leave`` with the event as a JSON
    body); ``message-id`` is ``<event>-<channel>``.

    No ``ack`` header: the signal is not a publication and is never acknowledged.
    """
    all_headers = [
        ("subscription", subscription),
        ("message-id", f"{event}-{channel}"),
        ("destination", TOPIC + channel),
        ("x-event", event),
        *headers,
    ]
    if body:
        all_headers.append(("content-type", "application/json"))
    all_headers.append(("content-length", str(len(body))))
    return serialise(Frame("MESSAGE", tuple(all_headers), body), escaped=escaped)
