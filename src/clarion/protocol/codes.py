"""Close and disconnect codes, with what each tells a client to do.

One table for every transport: WebSocket close codes are the numbers below; SSE and STOMP carry
the same ``code``/``reason``/``reconnect`` in their own disconnect signal. Clients (Python and JS)
decide whether to reconnect from ``reconnect`` alone. Codes 4000-4499 invite a reconnect (with
backoff), 4500-4999 do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SHUTDOWN = 4000
    SLOW = 4001
    NO_PONG = 4002
    SERVER_ERROR = 4003
    TOKEN_EXPIRED = 4004
    NODE_FULL = 4005
    UNAUTHORIZED = 4500
    DISCONNECTED = 4501
    FORBIDDEN = 4502
    TOO_MANY_CONNECTIONS = 4503
    IDLE = 4504
    ABUSE = 4505
    HANDSHAKE_TIMEOUT = 4506
    BAD_REQUEST = 4507


@dataclass(frozen=True, slots=True)
class Disconnect:
    code: int
    reason: str
    reconnect: bool
    meaning: str

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "reason": self.reason, "reconnect": self.reconnect}


_TABLE = [
    Disconnect(1000, "normal", False, "The client or the hub closed normally."),
    Disconnect(1001, "going away", True, "The peer is going away (page unload, process exit)."),
    Disconnect(1002, "protocol error", False, "A WebSocket protocol violation."),
    Disconnect(1003, "unsupported data", False, "A binary frame where only text is accepted."),
    Disconnect(1007, "invalid data", False, "A text frame that is not valid UTF-8."),
    Disconnect(1008, "policy violation", False, "The handshake was refused (origin, path)."),
    Disconnect(1009, "message too big", False, "A frame larger than `max_message_bytes`."),
    Disconnect(1011, "internal error", True, "An unexpected error in the hub; reconnect later."),
    Disconnect(4000, "shutdown", True, "The node is shutting down: reconnect, to another node."),
    Disconnect(
        4001,
        "slow",
        True,
        "The client read too slowly; its send queue overflowed. "
        "Reconnect and resume from the last cursor.",
    ),
    Disconnect(4002, "no pong", True, "The client did not answer the hub's pings in time."),
    Disconnect(
        4003,
        "server error",
        True,
        "The hub hit an error it could not recover from "
        "for this session (e.g. its engine became unavailable).",
    ),
    Disconnect(
        4004, "token expired", True, "The connection token expired; reconnect with a fresh token."
    ),
    Disconnect(
        4005,
        "node full",
        True,
        "The node holds its maximum number of connections; reconnect later or elsewhere.",
    ),
    Disconnect(4500, "unauthorized", False, "The token is missing, invalid or was refused."),
    Disconnect(
        4501,
        "disconnected",
        False,
        "The server disconnected this user on purpose (`POST /api/disconnect`).",
    ),
    Disconnect(4502, "forbidden", False, "The client is not allowed to connect here."),
    Disconnect(
        4503, "too many connections", False, "The IP address or user holds too many connections."
    ),
    Disconnect(4504, "idle", False, "The connection had no subscription for `idle_timeout`."),
    Disconnect(
        4505,
        "abuse",
        False,
        "The client kept exceeding its publish rate or its command rate "
        "(subscribe, unsubscribe, history, presence, refresh).",
    ),
    Disconnect(
        4506,
        "handshake timeout",
        False,
        "The client did not finish connecting in time: no token, and for an anonymous client "
        "no subscription, within `limits.handshake_timeout`.",
    ),
    Disconnect(4507, "bad request", False, "The client kept sending frames the hub cannot read."),
]

DISCONNECTS: dict[int, Disconnect] = {d.code: d for d in _TABLE}


def disconnect_for(code: int) -> Disconnect:
    known = DISCONNECTS.get(code)
    if known is not None:
        return known
    reconnect = 4000 <= code < 4500 or code in (1001, 1006, 1011, 1012, 1013, 1014)
    return Disconnect(code, "unknown", reconnect, "")


def should_reconnect(code: int | None) -> bool:
    """What every clarion client does with a close code (``None``: connection lost)."""
    if code is None or code == 1006:
        return True
    return disconnect_for(code).reconnect


def clip_reason(reason: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 §5.5: control payloads ≤ 125)."""
    data = reason.encode()
    if len(data) <= 123:
        return reason
    return data[:123].decode(errors="ignore")
