"""What a client and the hub agree on at ``CONNECT``: the STOMP version and the heart-beats."""

from __future__ import annotations

from dataclasses import dataclass

from clarion.protocol.errors import ErrorCode
from clarion.protocol.numbers import ascii_int
from clarion.protocol.stomp.errors import RemoteProtocolError

VERSIONS = ("1.0", "1.1", "1.2")  # oldest first
SUBPROTOCOLS = {"v12.stomp": "1.2", "v11.stomp": "1.1", "v10.stomp": "1.0"}  # preferred first
MAX_HEART_BEAT_MS = 24 * 3600 * 1000


def select_subprotocol(offered: list[str] | tuple[str, ...]) -> str | None:
    """The WebSocket subprotocol to accept: the newest STOMP one offered, or none.

    The subprotocol is advisory: the version is settled by ``accept-version`` in ``CONNECT``,
    so clients that offer no subprotocol (or several) are served the same way.
    """
    for name in SUBPROTOCOLS:
        if name in offered:
            return name
    return None


def negotiate_version(accept_version: str | None) -> str:
    """The newest version both sides speak; a ``CONNECT`` without ``accept-version`` is 1.0."""
    if accept_version is None:
        return "1.0"
    offered = {v.strip() for v in accept_version.split(",")}
    for version in reversed(VERSIONS):
        if version in offered:
            return version
    raise RemoteProtocolError(
        "Supported protocol versions are " + " ".join(VERSIONS), code=ErrorCode.UNSUPPORTED_VERSION
    )


def parse_heart_beat(value: str | None) -> tuple[int, int]:
    """``cx,cy`` in milliseconds: how often the client can send, how often it wants to receive."""
    if value is None:
        return (0, 0)
    parts = [ascii_int(p.strip(), max_digits=10) for p in value.split(",")]
    if len(parts) != 2:
        raise RemoteProtocolError(f"invalid heart-beat header {value[:40]!r}")
    cx, cy = parts
    if cx is None or cy is None:
        raise RemoteProtocolError(f"invalid heart-beat header {value[:40]!r}")
    return (min(cx, MAX_HEART_BEAT_MS), min(cy, MAX_HEART_BEAT_MS))


@dataclass(frozen=True, slots=True)
class HeartBeat:
    """Negotiated heart-beat periods in milliseconds; 0 means none in that direction.

    ``send_ms``: the hub sends something at least this often. ``receive_ms``: the client promised
    to send something at least this often.
    """

    send_ms: int
    receive_ms: int


def negotiate_heart_beat(client: tuple[int, int], server: tuple[int, int]) -> HeartBeat:
    """STOMP's rule: each direction runs at the slower of what one side offers and the other
    wants, and not at all if either side says 0."""
    cx, cy = client
    sx, sy = server
    send = max(sx, cy) if sx and cy else 0
    receive = max(cx, sy) if cx and sy else 0
    return HeartBeat(send, receive)
