"""An incremental STOMP frame parser: feed it bytes as they come, take frames out one at a time.

A WebSocket message may hold several frames, part of one, or only heart-beat EOLs; the parser
does not care where messages begin and end. Frames come out one at a time because the escaping of
the next frame depends on the version that the current one (``CONNECT``) negotiates.

Every way the input can be wrong raises :class:`RemoteProtocolError`; after that the parser stays
broken and raises the same error again. The ``message`` of each error is part of the documented
protocol (``docs/stomp.md``).
"""

from __future__ import annotations

import re

from clarion.protocol.errors import ErrorCode
from clarion.protocol.numbers import ascii_int
from clarion.protocol.stomp.errors import RemoteProtocolError
from clarion.protocol.stomp.frame import Frame, unescape

DEFAULT_MAX_FRAME_BYTES = 65536
DEFAULT_MAX_HEADERS = 64
DEFAULT_MAX_HEADER_BYTES = 8192

_BLANK_LINE = re.compile(rb"\n\r?\n")
# Heart-beat EOLs, skipped by the regex engine: a message may hold tens of thousands of them.
_EOLS = re.compile(rb"(?:\r?\n)*")
_COMMAND = re.compile(r"[A-Z]{1,32}")
_CR, _NUL = 13, 0


class _Head:
    """The parsed command and headers of a frame whose body has not fully arrived."""

    __slots__ = ("body_start", "command", "headers", "length")

    def __init__(
        self,
        command: str,
        headers: tuple[tuple[str, str], ...],
        body_start: int,
        length: int | None,
    ) -> None:
        self.command = command
        self.headers = headers
        self.body_start = body_start
        self.length = length


class FrameParser:
    """Bytes in, :class:`Frame` values out, within size limits.

    ``max_frame_bytes`` bounds a whole frame (command, headers, body, NUL); ``max_headers`` and
    ``max_header_bytes`` bound the header block. ``escaped`` turns on STOMP 1.1+ header
    unescaping; the session sets it once the version is known.
    """

    __slots__ = (
        "_broken",
        "_buf",
        "_head",
        "_pos",
        "_scan",
        "escaped",
        "max_frame_bytes",
        "max_header_bytes",
        "max_headers",
    )

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        escaped: bool = False,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.escaped = escaped
        self._buf = bytearray()
        self._pos = 0  # start of the frame being parsed (or of unread bytes)
        self._scan = 0  # where the search for a blank line or NUL resumes
        self._head: _Head | None = None
        self._broken: RemoteProtocolError | None = None

    def feed(self, data: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes of a frame that has begun but not ended (heart-beat EOLs do not count)."""
        return len(self._buf) - self._pos

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes are fed."""
        if self._broken is not None:
            raise self._broken
        try:
            frame = self._next()
        except RemoteProtocolError as exc:
            self._broken = exc
            self._buf = bytearray()
            raise
        if frame is None:
            self._compact()
        return frame

    def _compact(self) -> None:
        pos = self._pos
        if pos:
            del self._buf[:pos]
            self._scan = max(0, self._scan - pos)
            if self._head is not None:
                self._head.body_start -= pos
            self._pos = 0

    def _skip_heart_beats(self) -> None:
        buf = self._buf
        match = _EOLS.match(buf, self._pos)
        assert match is not None  # zero EOLs match
        pos = match.end()
        # A CR left over is the last byte (its LF may come in the next message) or an error.
        if pos + 1 < len(buf) and buf[pos] == _CR:
            self._pos = pos
            raise RemoteProtocolError("a CR octet not followed by LF")
        if pos != self._pos:
            self._pos = pos
            self._scan = pos

    def _next(self) -> Frame | None:
        head = self._head
        if head is None:
            self._skip_heart_beats()
            if self._pos >= len(self._buf) or self._buf[self._pos] == _CR:
                return None
            head = self._parse_head()
            if head is None:
                return None
            self._head = head
        return self._parse_body(head)

    def _parse_head(self) -> _Head | None:
        buf, start = self._buf, self._pos
        match = _BLANK_LINE.search(buf, max(start, self._scan))
        stop = match.start() if match is not None else len(buf)
        if buf.find(b"\0", start, stop) >= 0:
            raise RemoteProtocolError("a frame ended (NUL) before the blank line after its headers")
        if stop - start > self.max_header_bytes:
            raise RemoteProtocolError(
                f"frame headers are over {self.max_header_bytes} bytes", code=ErrorCode.TOO_LARGE
            )
        if match is None:
            self._scan = max(start, len(buf) - 2)  # a blank line may straddle two feeds
            return None
        try:
            text = bytes(buf[start:stop]).decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("frame headers are not valid UTF-8") from None
        lines = text.split("\n")
        if "\r" in text:
            lines = [line.removesuffix("\r") for line in lines]
            if any("\r" in line for line in lines):
                raise RemoteProtocolError("a CR octet not followed by LF")
        command = lines[0]
        if _COMMAND.fullmatch(command) is None:
            raise RemoteProtocolError(f"not a STOMP command: {command[:40]!r}")
        if len(lines) - 1 > self.max_headers:
            raise RemoteProtocolError(
                f"frame has over {self.max_headers} headers", code=ErrorCode.TOO_LARGE
            )
        headers = tuple(self._header(line) for line in lines[1:])
        length: int | None = None
        for name, value in headers:
            if name == "content-length":
                length = ascii_int(value, max_digits=12)
                if length is None:
                    raise RemoteProtocolError(f"invalid content-length {value[:20]!r}")
                break
        body_start = match.end()
        if length is not None and body_start - start + length + 1 > self.max_frame_bytes:
            raise RemoteProtocolError(
                f"frame is over {self.max_frame_bytes} bytes", code=ErrorCode.TOO_LARGE
            )
        self._scan = body_start
        return _Head(command, headers, body_start, length)

    def _header(self, line: str) -> tuple[str, str]:
        name, colon, value = line.partition(":")
        if not colon:
            raise RemoteProtocolError(f"header line without a colon: {line[:40]!r}")
        if not name:
            raise RemoteProtocolError("header with an empty name")
        if self.escaped:
            return unescape(name), unescape(value)
        return name, value

    def _parse_body(self, head: _Head) -> Frame | None:
        buf, start, body_start = self._buf, self._pos, head.body_start
        if head.length is not None:
            end = body_start + head.length
            if len(buf) <= end:
                return None
            if buf[end] != _NUL:
                raise RemoteProtocolError(
                    "frame body is not followed by NUL after content-length octets"
                )
        else:
            end = buf.find(b"\0", max(body_start, self._scan))
            if end < 0:
                if len(buf) - start >= self.max_frame_bytes:
                    raise RemoteProtocolError(
                        f"frame is over {self.max_frame_bytes} bytes", code=ErrorCode.TOO_LARGE
                    )
                self._scan = len(buf)
                return None
            if end + 1 - start > self.max_frame_bytes:
                raise RemoteProtocolError(
                    f"frame is over {self.max_frame_bytes} bytes", code=ErrorCode.TOO_LARGE
                )
        frame = Frame(head.command, head.headers, bytes(buf[body_start:end]))
        self._head = None
        self._pos = self._scan = end + 1
        return frame
