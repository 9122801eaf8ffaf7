"""Every error code the hub can give a peer, with what it means on each transport.

One table: an error code's HTTP status (``/api``, ``/sse``, ``/poll``, ``/client``), the close
code when the error ends a WebSocket or STOMP connection, and from that close code whether a
client should come back (see :mod:`clarion.protocol.codes`). The hub's transports, the Python
client and ``clarion.js`` all read it (a test keeps the browser client's copy equal), and
``docs/protocol.md`` lists it (a test keeps that equal too).

Codes outside the table exist: a hook's refusal carries the application's own code, and a
client may hear a code from a newer hub. Such a code is a :data:`ForeignCode`, made on purpose
where it is read, and follows the rule of its exception's class (:func:`rule_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NewType

from clarion.protocol.codes import CloseCode, disconnect_for


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    BAD_CHANNEL = "bad_channel"
    BAD_CURSOR = "bad_cursor"
    ALREADY_SUBSCRIBED = "already_subscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    UNSUBSCRIBED = "unsubscribed"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    ORIGIN_FORBIDDEN = "origin_forbidden"
    LOCAL_ONLY = "local_only"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UPGRADE_REQUIRED = "upgrade_required"
    TOO_LARGE = "too_large"
    LIMIT_EXCEEDED = "limit_exceeded"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_CHANNELS = "too_many_channels"
    UNSAFE_TARGET = "unsafe_target"
    CONFIGURED_WEBHOOK = "configured_webhook"
    BAD_TIMEOUT = "bad_timeout"
    RATE_LIMITED = "rate_limited"
    EPHEMERAL_RATE_LIMITED = "ephemeral_rate_limited"
    REVOKED = "revoked"
    SHUTTING_DOWN = "shutting_down"
    NOT_STARTED = "not_started"
    ENGINE_NOT_SHARED = "engine_not_shared"
    NODE_FULL = "node_full"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    HOOK_UNAVAILABLE = "hook_unavailable"
    INTERNAL = "internal"
    # Sent in STOMP ERROR frames only (listed in docs/stomp.md).
    BAD_FRAME = "bad_frame"
    BAD_DESTINATION = "bad_destination"
    BAD_JSON = "bad_json"
    BAD_ACK = "bad_ack"
    BUSY = "busy"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    INCOMPLETE_FRAME = "incomplete_frame"
    RESERVED_HEADER = "reserved_header"
    TOO_MANY_ACKS = "too_many_acks"
    TOO_MANY_HEADERS = "too_many_headers"
    TOO_MANY_TRANSACTIONS = "too_many_transactions"
    TRANSACTION_TOO_LARGE = "transaction_too_large"
    UNKNOWN_TRANSACTION = "unknown_transaction"
    UNSUPPORTED_VERSION = "unsupported_version"

    @property
    def rule(self) -> ErrorRule:
        return ERRORS[self]

    @property
    def status(self) -> int:
        return ERRORS[self].status

    @property
    def close_code(self) -> CloseCode:
        return ERRORS[self].close

    @property
    def reconnect(self) -> bool:
        return ERRORS[self].reconnect


@dataclass(frozen=True, slots=True)
class ErrorRule:
    code: ErrorCode
    status: int  # of an HTTP answer carrying the error
    close: CloseCode  # when the error ends a WebSocket or STOMP connection
    meaning: str
    stomp_only: bool = False

    @property
    def reconnect(self) -> bool:
        """Whether a client refused with this error tries again (after its backoff delay)."""
        return disconnect_for(self.close).reconnect

    def to_dict(self) -> dict[str, object]:
        return {"status": self.status, "close": int(self.close), "reconnect": self.reconnect}


E, C = ErrorCode, CloseCode
_BAD = C.BAD_REQUEST

_RULES = [
    ErrorRule(
        E.BAD_REQUEST, 400, _BAD, "malformed body or command, missing or wrongly typed field"
    ),
    ErrorRule(E.UNKNOWN_OP, 400, _BAD, "the `op` is not one of the protocol's"),
    ErrorRule(E.BAD_CHANNEL, 400, _BAD, "channel name outside the grammar"),
    ErrorRule(E.BAD_CURSOR, 400, _BAD, "garbage, corrupted or foreign cursor"),
    ErrorRule(
        E.ALREADY_SUBSCRIBED, 400, _BAD, "this connection is already subscribed to the channel"
    ),
    ErrorRule(
        E.NOT_SUBSCRIBED,
        400,
        _BAD,
        "unsubscribe from a channel this connection is not subscribed to",
    ),
    ErrorRule(
        E.UNSUBSCRIBED,
        409,
        _BAD,
        "the hub ended a subscription while it was being made (its `unsubscribe` push says why)",
    ),
    ErrorRule(E.UNAUTHORIZED, 401, C.UNAUTHORIZED, "missing, invalid or refused token or API key"),
    ErrorRule(E.TOKEN_EXPIRED, 401, C.TOKEN_EXPIRED, "the token's `exp` has passed"),
    ErrorRule(
        E.FORBIDDEN,
        403,
        C.FORBIDDEN,
        "the identity may not do this (channel permissions, client publish)",
    ),
    ErrorRule(
        E.ORIGIN_FORBIDDEN,
        403,
        C.FORBIDDEN,
        "the browser origin is not allowed (`allowed_origins`, `public_url`)",
    ),
    ErrorRule(
        E.LOCAL_ONLY,
        403,
        C.FORBIDDEN,
        "the hub is in local development mode (no `api_key`, no token secret) and the request "
        "came from another machine (`insecure` lets every address in)",
    ),
    ErrorRule(E.NOT_FOUND, 404, _BAD, "no such endpoint or resource"),
    ErrorRule(E.METHOD_NOT_ALLOWED, 405, _BAD, "wrong HTTP method"),
    ErrorRule(
        E.UPGRADE_REQUIRED,
        426,
        _BAD,
        "a plain HTTP request to a WebSocket endpoint (`/ws`, `/stomp`): a browser opening it, "
        "or a proxy that drops the `Upgrade` and `Connection` headers",
    ),
    ErrorRule(
        E.TOO_LARGE,
        413,
        C.MESSAGE_TOO_BIG,
        'over `limits.max_message_bytes`; a publication\'s data over it names the cap (`"limit"`)',
    ),
    ErrorRule(E.LIMIT_EXCEEDED, 429, _BAD, "a rate or count limit"),
    ErrorRule(
        E.TOO_MANY_SUBSCRIPTIONS, 429, _BAD, "over `limits.max_subscriptions_per_connection`"
    ),
    ErrorRule(
        E.TOO_MANY_CONNECTIONS, 429, C.TOO_MANY_CONNECTIONS, "per-IP or per-user connection cap"
    ),
    ErrorRule(
        E.TOO_MANY_CHANNELS,
        400,
        _BAD,
        "more channels in one `/sse` or `/poll` request than "
        "`limits.max_subscriptions_per_connection`",
    ),
    ErrorRule(
        E.UNSAFE_TARGET,
        400,
        _BAD,
        "a webhook URL that points where webhooks may not reach "
        "(see [webhooks.md](webhooks.md#safety-where-webhooks-may-point))",
    ),
    ErrorRule(
        E.CONFIGURED_WEBHOOK,
        403,
        C.FORBIDDEN,
        "deleting a webhook that is configured in `clarion.toml`",
    ),
    ErrorRule(
        E.BAD_TIMEOUT,
        400,
        _BAD,
        "a `/poll` `timeout` that is not a number of seconds from 0 to `poll.timeout_max`",
    ),
    ErrorRule(
        E.RATE_LIMITED,
        429,
        C.ABUSE,
        "publishing faster than `limits.client_publish_rate` (or the per-user rate), sending "
        "subscribe, unsubscribe, history, presence and token ops faster than "
        "`limits.client_command_rate` (per connection; the reads and token ops also per user "
        "or address), starting subscriptions faster than `limits.client_subscribe_rate` "
        "allows a user or address, or naming more channels in `/poll` requests than "
        "`limits.client_poll_check_rate` allows; a budget per user or address says when it "
        "has room again: `retry_after`, and `Retry-After` over HTTP",
    ),
    ErrorRule(
        E.EPHEMERAL_RATE_LIMITED,
        429,
        C.ABUSE,
        "sending [live signals](#live-signals-ephemeral-publications) to one channel faster "
        "than `limits.client_ephemeral_rate`",
    ),
    ErrorRule(
        E.REVOKED,
        401,
        C.DISCONNECTED,
        "the user or token was revoked with `POST /api/disconnect` and `until`",
    ),
    ErrorRule(E.SHUTTING_DOWN, 503, C.SHUTDOWN, "the node is shutting down: connect to another"),
    ErrorRule(
        E.NOT_STARTED,
        503,
        C.SHUTDOWN,
        "the hub mounted in an application was never started (`hub.lifespan` not passed to the "
        "application, or `hub.start()` not awaited)",
    ),
    ErrorRule(
        E.ENGINE_NOT_SHARED,
        503,
        C.SERVER_ERROR,
        "another process serves this port (or Unix socket) with a hub of its own on the memory "
        "engine (a server's worker processes): a publication would reach one process's "
        "subscribers only",
    ),
    ErrorRule(E.NODE_FULL, 503, C.NODE_FULL, "the node holds `limits.max_connections`"),
    ErrorRule(
        E.ENGINE_UNAVAILABLE, 503, C.SERVER_ERROR, "the engine (e.g. Redis) cannot be reached"
    ),
    ErrorRule(
        E.HOOK_UNAVAILABLE,
        503,
        C.SERVER_ERROR,
        "a [hook](#hooks-asking-the-applications-backend) failed (error status, timeout, "
        'backend down, malformed answer) and `hooks.on_failure = "deny"`',
    ),
    ErrorRule(
        E.INTERNAL, 500, C.SERVER_ERROR, "a bug: reported without details, logged on the hub"
    ),
    ErrorRule(E.BAD_FRAME, 400, _BAD, "a frame the STOMP session cannot accept", True),
    ErrorRule(E.BAD_DESTINATION, 400, _BAD, "a destination that is not `/topic/<channel>`", True),
    ErrorRule(E.BAD_JSON, 400, _BAD, "a JSON `SEND` body that is not JSON", True),
    ErrorRule(E.BAD_ACK, 400, _BAD, "an `ACK`/`NACK` naming no message of the connection", True),
    ErrorRule(E.BUSY, 400, _BAD, "a further subscription while the first one catches up", True),
    ErrorRule(E.HANDSHAKE_TIMEOUT, 408, C.HANDSHAKE_TIMEOUT, "no `CONNECT` frame in time", True),
    ErrorRule(E.INCOMPLETE_FRAME, 400, _BAD, "a frame without its NUL octet in time", True),
    ErrorRule(E.RESERVED_HEADER, 400, _BAD, "a header the hub sets itself", True),
    ErrorRule(E.TOO_MANY_ACKS, 400, _BAD, "too many messages acknowledged out of order", True),
    ErrorRule(E.TOO_MANY_HEADERS, 400, _BAD, "a frame with too many headers", True),
    ErrorRule(E.TOO_MANY_TRANSACTIONS, 400, _BAD, "too many open transactions", True),
    ErrorRule(E.TRANSACTION_TOO_LARGE, 400, _BAD, "too many frames in one transaction", True),
    ErrorRule(E.UNKNOWN_TRANSACTION, 400, _BAD, "a `transaction` header naming none open", True),
    ErrorRule(E.UNSUPPORTED_VERSION, 400, _BAD, "no STOMP version in common with the client", True),
]
del E, C

ERRORS: Mapping[ErrorCode, ErrorRule] = {rule.code: rule for rule in _RULES}


# A code that is not clarion's to define: an application's own (a hook's refusal), or one a hub
# sent that this client does not know. A distinct type, so that no code is a free string.
ForeignCode = NewType("ForeignCode", str)


def code_of(value: str) -> ErrorCode | ForeignCode:
    """``value``, read from a peer or an application, as the table's code when it is one."""
    try:
        return ErrorCode(value)
    except ValueError:
        return ForeignCode(value)


def rule_for(code: str, fallback: ErrorCode = ErrorCode.INTERNAL) -> ErrorRule:
    """The rule of ``code``; of ``fallback`` for a code outside the table."""
    try:
        return ERRORS[ErrorCode(code)]
    except ValueError:
        return ERRORS[fallback]
