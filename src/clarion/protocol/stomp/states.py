"""The STOMP session's states and every transition, as data.

Two tables, one per side: which frames the client may send in each state and where each leads,
and the same for the hub. Anything not in a table is a protocol error whose fault is clear from
the side: a client frame is a :class:`RemoteProtocolError`, a hub frame a
:class:`LocalProtocolError`. The state diagram in ``docs/stomp.md`` is rendered from these tables
by :func:`transitions_markdown` (a test keeps the two equal).
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    AWAITING_CONNECT = "AWAITING_CONNECT"  # WebSocket open, no CONNECT yet
    CONNECTING = "CONNECTING"  # CONNECT received and being checked
    CONNECTED = "CONNECTED"
    DISCONNECTING = "DISCONNECTING"  # DISCONNECT received; only its RECEIPT may follow
    CLOSED = "CLOSED"  # ERROR sent, or the connection ended: nothing more is read or sent


# Client frame -> next state, per state.
CLIENT_TRANSITIONS: dict[State, dict[str, State]] = {
    State.AWAITING_CONNECT: {
        "CONNECT": State.CONNECTING,
        "STOMP": State.CONNECTING,
    },
    State.CONNECTING: {},
    State.CONNECTED: {
        "SEND": State.CONNECTED,
        "SUBSCRIBE": State.CONNECTED,
        "UNSUBSCRIBE": State.CONNECTED,
        "ACK": State.CONNECTED,
        "NACK": State.CONNECTED,
        "BEGIN": State.CONNECTED,
        "COMMIT": State.CONNECTED,
        "ABORT": State.CONNECTED,
        "DISCONNECT": State.DISCONNECTING,
    },
    State.DISCONNECTING: {},
    State.CLOSED: {},
}

# Hub frame -> next state, per state. "close" is the end of the connection, not a frame.
SERVER_TRANSITIONS: dict[State, dict[str, State]] = {
    State.AWAITING_CONNECT: {"ERROR": State.CLOSED, "close": State.CLOSED},
    State.CONNECTING: {
        "CONNECTED": State.CONNECTED,
        "ERROR": State.CLOSED,
        "close": State.CLOSED,
    },
    State.CONNECTED: {
        "MESSAGE": State.CONNECTED,
        "RECEIPT": State.CONNECTED,
        "ERROR": State.CLOSED,
        "close": State.CLOSED,
    },
    State.DISCONNECTING: {"RECEIPT": State.CLOSED, "close": State.CLOSED},
    State.CLOSED: {"close": State.CLOSED},
}

# States in which client frames are dropped unread: the connection is going away.
IGNORING_INPUT = frozenset({State.DISCONNECTING, State.CLOSED})


def transitions_markdown() -> str:
    """Both tables as one Markdown table (for the docs)."""
    rows = ["| state | client frame → next state | hub frame → next state |", "| --- | --- | --- |"]
    for state in State:
        client = ", ".join(f"`{c}` → {s.value}" for c, s in CLIENT_TRANSITIONS[state].items())
        server = ", ".join(f"`{c}` → {s.value}" for c, s in SERVER_TRANSITIONS[state].items())
        rows.append(f"| {state.value} | {client or '—'} | {server} |")
    return "\n".join(rows) + "\n"
