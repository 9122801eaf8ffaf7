"""STOMP frames as values, header escaping, and serialisation.

A frame is ``COMMAND EOL *(name ":" value EOL) EOL body NUL``. From STOMP 1.1 on, header names
and values escape four octets: ``\\\\`` for a backslash, ``\\n`` for LF, ``\\r`` for CR and ``\\c``
for ``:`` (so a channel such as ``chat:lobby`` travels as ``/topic/chat\\clobby``). STOMP 1.0 has
no escaping, and neither do the ``CONNECT``/``CONNECTED`` frames of any version, which must stay
readable by 1.0 peers before the version is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clarion.protocol.stomp.errors import LocalProtocolError, RemoteProtocolError

# Commands a client sends, and those a server sends (STOMP 1.2 §"Client Frames"/"Server Frames").
CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})

_ESCAPE = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"})
_UNESCAPE = {"\\": "\\", "r": "\r", "n": "\n", "c": ":"}
_ESCAPE_SEQUENCE = re.compile(r"\\(.?)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame; ``headers`` keep their order and repetitions, as on the wire."""

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (STOMP: a repeated header's first value wins)."""
        for key, value in self.headers:
            if key == name:
                return value
        return default


def escape(text: str) -> str:
    return text.translate(_ESCAPE)


def _unescape_one(match: re.Match[str]) -> str:
    char = match.group(1)
    replacement = _UNESCAPE.get(char)
    if replacement is None:
        shown = "\\" + char if char else "a lone backslash at the end"
        raise RemoteProtocolError(f"undefined escape sequence {shown!r} in a header")
    return replacement


def unescape(text: str) -> str:
    """Undo :func:`escape`; an undefined sequence (``\\t``, a trailing ``\\``) is an error."""
    if "\\" not in text:
        return text
    return _ESCAPE_SEQUENCE.sub(_unescape_one, text)


def serialise(frame: Frame, *, escaped: bool) -> bytes:
    """The frame's bytes; adds ``content-length`` to a frame with a body that has none.

    ``escaped`` selects STOMP 1.1/1.2 header escaping; without it (1.0, ``CONNECTED``) a name or
    value that cannot be written raw is a :class:`LocalProtocolError`.
    """
    parts = [frame.command]
    has_length = False
    for name, value in frame.headers:
        if name == "content-length":
            has_length = True
        if "\0" in name or "\0" in value:
            raise LocalProtocolError(f"header {name!r} holds a NUL octet")
        if escaped:
            parts.append(f"{escape(name)}:{escape(value)}")
        else:
            if ":" in name or "\n" in name or "\r" in name or "\n" in value or "\r" in value:
                raise LocalProtocolError(f"header {name!r} cannot be sent unescaped")
            parts.append(f"{name}:{value}")
    if frame.body and not has_length:
        parts.append(f"content-length:{len(frame.body)}")
    parts.append("\n")
    return "\n".join(parts).encode() + frame.body + b"\0"
