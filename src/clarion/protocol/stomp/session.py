"""The hub's side of one STOMP connection, without I/O: bytes in, checked events and frames out.

The adapter feeds what the socket received to :meth:`StompSession.receive_data`, takes
:class:`~clarion.protocol.stomp.events.Event` values from :meth:`StompSession.next_event`, acts on
them with the hub, and writes the frames that :meth:`connected`, :meth:`receipt`, :meth:`error`
and :meth:`reset` return. Every state change goes through the tables in
:mod:`clarion.protocol.stomp.states`. Fan-out ``MESSAGE`` frames bypass this object on purpose
(:mod:`clarion.protocol.stomp.message`): they are built once for all sessions.

Long on purpose: every frame's checks and the state they change are one table-driven class,
the one place a STOMP rule is enforced.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson

from clarion.errors import BadChannel, BadCursor
from clarion.protocol.channels import validate_channel
from clarion.protocol.cursor import Cursor, channel_tag, decode_entries
from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import MAX_KEY_CHARS, StreamPosition
from clarion.protocol.stomp.acks import ACK_MODES, AckMode, AckRoom
from clarion.protocol.stomp.errors import LocalProtocolError, RemoteProtocolError
from clarion.protocol.stomp.events import (
    Abort,
    Ack,
    Begin,
    Commit,
    Connect,
    Disconnect,
    Event,
    Send,
    StompSubscription,
    Subscribe,
    Unsubscribe,
)
from clarion.protocol.stomp.frame import CLIENT_COMMANDS, SERVER_COMMANDS, Frame, serialise
from clarion.protocol.stomp.message import (
    EPHEMERAL_PREFIX,
    JSON_TYPE,
    RESET_PREFIX,
    TOPIC,
    event_frame,
    reset_frame,
)
from clarion.protocol.stomp.negotiation import (
    VERSIONS,
    HeartBeat,
    negotiate_heart_beat,
    negotiate_version,
    parse_heart_beat,
)
from clarion.protocol.stomp.parser import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    FrameParser,
)
from clarion.protocol.stomp.states import (
    CLIENT_TRANSITIONS,
    IGNORING_INPUT,
    SERVER_TRANSITIONS,
    State,
)

MAX_ID_CHARS = 256  # subscription ids
# Frames one receive_data (one WebSocket message) may complete, heart-beat EOLs aside. Clients
# send a frame per message; thousands of small frames packed in one, a few bytes each once
# deflated, would make the hub work for minutes per kilobyte received.
MAX_FRAMES_PER_MESSAGE = 16
DEFAULT_MAX_SUBSCRIPTIONS = 128
MAX_USER_HEADERS = 32  # on one SEND, passed on to subscribers
MAX_USER_HEADER_BYTES = 4096  # their names and values, in UTF-8
# Headers a SEND consumes (not passed on), and those a MESSAGE sets itself (refused on a SEND).
CONSUMED_HEADERS = frozenset(
    {
        "destination",
        "transaction",
        "receipt",
        "content-type",
        "content-length",
        "x-idempotency-key",
        "x-ephemeral",
        "x-key",
    }
)
RESERVED_HEADERS = frozenset(
    {
        "subscription",
        "message-id",
        "ack",
        "x-offset",
        "x-epoch",
        "x-reset",
        "x-cursor",
        "x-event",
        "x-reason",
    }
)
MAX_TRANSACTIONS = 8  # open at once, per connection
MAX_TRANSACTION_FRAMES = 256  # SEND, ACK and NACK frames held by one transaction
MAX_IDEMPOTENCY_KEY_CHARS = 128
# What a transaction holds until COMMIT: an ACK or NACK, or a SEND as it came (with its receipt).
Held = Ack | tuple[Frame, str | None]


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RemoteProtocolError(
            "the Authorization header must be 'Bearer <token>'", code=ErrorCode.UNAUTHORIZED
        )
    return token.strip()


def _one_line(text: str) -> str:
    """``text`` as a header value that any version can carry raw."""
    return text.replace("\r", " ").replace("\n", " ").replace("\0", " ")


def frame_bytes(frame: Frame) -> int:
    """About what ``frame`` took on the wire: its command, headers and body."""
    return (
        len(frame.command)
        + sum(len(name) + len(value) + 2 for name, value in frame.headers)
        + len(frame.body)
        + 2
    )


def decode_body(frame: Frame) -> tuple[Any, dict[str, Any] | None]:
    """A ``SEND`` body as the publication's ``data`` and attributes, so that subscribers get the
    same bytes with the same ``content-type``.

    * ``content-type: application/json`` with a body in compact form (as clarion writes JSON):
      a JSON publication — ``data`` is the value;
    * any other body of a JSON type must still be valid JSON (``bad_json``);
    * every other body is carried as it is: ``data`` is the text (``encoding: utf-8``) when it
      is valid UTF-8, else its base64 (``encoding: base64``), with its ``content_type`` if any.
    """
    content_type = frame.get("content-type")
    body = frame.body
    if content_type is not None:
        mime = content_type.partition(";")[0].strip().lower()
        if mime == "application/json" or mime.endswith("+json"):
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise RemoteProtocolError(
                    "SEND body is not valid JSON", code=ErrorCode.BAD_JSON
                ) from None
            try:
                written = orjson.dumps(value)
            except orjson.JSONEncodeError:  # read, but too deep to write to a subscriber
                raise RemoteProtocolError(
                    "SEND body is JSON nested too deep (over 254 levels)", code=ErrorCode.BAD_JSON
                ) from None
            if content_type == JSON_TYPE and written == body:
                return value, None
    attrs: dict[str, Any] = {}
    try:
        data = body.decode("utf-8")
        attrs["encoding"] = "utf-8"
    except UnicodeDecodeError:
        data = base64.b64encode(body).decode()
        attrs["encoding"] = "base64"
    if content_type is not None:
        attrs["content_type"] = content_type
    return data, attrs


def user_headers(frame: Frame) -> dict[str, str]:
    """The headers of a ``SEND`` that reach subscribers: all but the ones STOMP and clarion
    reserve; a repeated header's first value, as STOMP reads it."""
    headers: dict[str, str] = {}
    size = 0
    for name, value in frame.headers:
        if name in CONSUMED_HEADERS or name in headers:
            continue
        if name in RESERVED_HEADERS:
            raise RemoteProtocolError(
                f"header {name[:40]!r} is set by the hub on MESSAGE frames",
                code=ErrorCode.RESERVED_HEADER,
            )
        if len(headers) >= MAX_USER_HEADERS:
            raise RemoteProtocolError(
                f"over {MAX_USER_HEADERS} user headers on SEND", code=ErrorCode.TOO_MANY_HEADERS
            )
        size += len(name.encode()) + len(value.encode())
        if size > MAX_USER_HEADER_BYTES:
            raise RemoteProtocolError(
                f"user headers on SEND are over {MAX_USER_HEADER_BYTES} bytes",
                code=ErrorCode.TOO_MANY_HEADERS,
            )
        headers[name] = value
    return headers


class StompSession:
    """One STOMP connection's state, subscriptions and acked positions.

    ``heart_beat`` is what the hub offers, ``(sx, sy)`` in milliseconds: it sends something at
    least every ``sx`` and wants to hear from the client at least every ``sy``.
    """

    __slots__ = (
        "_ack_room",
        "_by_suffix",
        "_by_tag",
        "_frames_left",
        "_held_bytes",
        "_serial",
        "by_channel",
        "heart_beat",
        "max_subscriptions",
        "max_transaction_bytes",
        "parser",
        "server_heart_beat",
        "state",
        "subscriptions",
        "transactions",
        "version",
    )

    def __init__(
        self,
        *,
        heart_beat: tuple[int, int] = (0, 0),
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        max_transaction_bytes: int | None = None,
    ) -> None:
        self.state = State.AWAITING_CONNECT
        self.version: str | None = None
        self.server_heart_beat = heart_beat
        self.heart_beat = HeartBeat(0, 0)
        self.parser = FrameParser(
            max_frame_bytes=max_frame_bytes,
            max_headers=max_headers,
            max_header_bytes=max_header_bytes,
        )
        self.max_subscriptions = max_subscriptions
        self.subscriptions: dict[str, StompSubscription] = {}
        # channel -> its subscriptions, oldest first (several ids may name one destination)
        self.by_channel: dict[str, list[StompSubscription]] = {}
        # Who takes an ack id: a bare cursor goes by its channel tag, a suffixed one by suffix.
        self._by_tag: dict[bytes, StompSubscription] = {}
        self._by_suffix: dict[str, StompSubscription] = {}
        self._serial = 0
        self._ack_room = AckRoom()  # acknowledgements held out of order, all subscriptions
        self._frames_left = MAX_FRAMES_PER_MESSAGE  # in the message being read
        # Open transactions: their held frames (with the bytes each counts for), in order.
        self.transactions: dict[str, list[tuple[Held, int]]] = {}
        self.max_transaction_bytes = (
            4 * max_frame_bytes if max_transaction_bytes is None else max_transaction_bytes
        )
        self._held_bytes = 0

    @property
    def escaped(self) -> bool:
        """Whether frames sent now escape their headers (1.1+, once ``CONNECTED`` was sent)."""
        return self.version not in (None, "1.0") and self.state in (
            State.CONNECTED,
            State.DISCONNECTING,
        )

    # ---- client -> hub ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take one WebSocket message's bytes: at most MAX_FRAMES_PER_MESSAGE frames end in it."""
        if self.state not in IGNORING_INPUT:
            self.parser.feed(data)
            self._frames_left = MAX_FRAMES_PER_MESSAGE

    @property
    def pending_bytes(self) -> int:
        """Bytes of a frame begun but not finished."""
        return self.parser.pending

    def next_event(self) -> Event | None:
        """The next client frame as an event, ``None`` until more bytes arrive.

        Raises :class:`RemoteProtocolError` for anything the client got wrong; the session can
        then only send an ``ERROR``.
        """
        if self.state in IGNORING_INPUT:
            return None
        frame = self.parser.next_frame()
        if frame is None:
            return None
        self._frames_left -= 1
        if self._frames_left < 0:
            raise RemoteProtocolError(
                f"over {MAX_FRAMES_PER_MESSAGE} frames in one WebSocket message"
            )
        receipt = frame.get("receipt")
        following = CLIENT_TRANSITIONS[self.state].get(frame.command)
        if following is None:
            raise self._unexpected(frame.command, receipt)
        handler = self._handlers[frame.command]
        try:
            event = handler(self, frame, receipt)
        except RemoteProtocolError as exc:
            if exc.receipt_id is None:
                exc.receipt_id = receipt
            raise
        self.state = following
        return event

    def _unexpected(self, command: str, receipt: str | None) -> RemoteProtocolError:
        if self.state is State.AWAITING_CONNECT and command in CLIENT_COMMANDS:
            message = f"the first frame must be CONNECT or STOMP, not {command}"
        elif command in ("CONNECT", "STOMP"):
            message = "already connected"
        elif command in SERVER_COMMANDS:
            message = f"{command} is a server frame"
        elif command in CLIENT_COMMANDS:
            message = f"{command} is not allowed in state {self.state.value}"
        else:
            message = f"unknown command {command}"
        return RemoteProtocolError(message, receipt_id=receipt)

    def _on_connect(self, frame: Frame, receipt: str | None) -> Connect:
        version = negotiate_version(frame.get("accept-version"))
        client_beats = parse_heart_beat(frame.get("heart-beat"))
        token = (
            frame.get("token")
            or _bearer(frame.get("Authorization") or frame.get("authorization"))
            or frame.get("passcode")
            or None
        )
        self.version = version
        self.heart_beat = negotiate_heart_beat(client_beats, self.server_heart_beat)
        return Connect(version, self.heart_beat, token, frame.get("login"), frame.get("host"))

    def _channel(self, frame: Frame) -> str:
        dest = frame.get("destination")
        if dest is None:
            raise RemoteProtocolError(f"{frame.command} needs a destination header")
        if not dest.startswith(TOPIC):
            raise RemoteProtocolError(
                f"destination must be /topic/<channel>, not {dest[:80]!r}",
                code=ErrorCode.BAD_DESTINATION,
            )
        try:
            return validate_channel(dest[len(TOPIC) :])
        except BadChannel as exc:
            raise RemoteProtocolError(
                f"bad destination {dest[:80]!r}: {exc.message}", code=ErrorCode.BAD_CHANNEL
            ) from None

    def _on_send(self, frame: Frame, receipt: str | None) -> Send:
        key = frame.get("x-idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise RemoteProtocolError(
                f"x-idempotency-key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
            )
        flag = frame.get("x-ephemeral")
        if flag not in (None, "true", "false"):
            raise RemoteProtocolError("x-ephemeral must be true or false")
        signal_key = frame.get("x-key")
        if signal_key is not None and not 0 < len(signal_key) <= MAX_KEY_CHARS:
            raise RemoteProtocolError(f"x-key must be 1 to {MAX_KEY_CHARS} characters")
        transaction = self._transaction_of(frame)
        send = self._decoded_send(frame, receipt)
        if transaction is not None:
            # Held as it came, and read again at COMMIT: what a body decodes to can be many
            # times its bytes (a JSON list of empty lists), and headers count as much as bodies.
            self._hold(transaction, (frame, receipt), frame_bytes(frame))
        return send

    # ---- transactions: frames held until COMMIT, dropped at ABORT or the end of the session

    def _transaction_of(self, frame: Frame) -> str | None:
        """The frame's ``transaction`` header, which must name an open transaction."""
        name = frame.get("transaction")
        if name is not None and name not in self.transactions:
            raise RemoteProtocolError(
                f"no open transaction {name[:80]!r}", code=ErrorCode.UNKNOWN_TRANSACTION
            )
        return name

    def _hold(self, transaction: str, event: Held, size: int) -> None:
        held = self.transactions[transaction]
        if len(held) >= MAX_TRANSACTION_FRAMES:
            raise RemoteProtocolError(
                f"over {MAX_TRANSACTION_FRAMES} frames in transaction {transaction[:80]!r}",
                code=ErrorCode.TRANSACTION_TOO_LARGE,
            )
        if self._held_bytes + size > self.max_transaction_bytes:
            raise RemoteProtocolError(
                f"open transactions hold over {self.max_transaction_bytes} bytes",
                code=ErrorCode.TRANSACTION_TOO_LARGE,
            )
        self._held_bytes += size
        held.append((event, size))

    def _on_begin(self, frame: Frame, receipt: str | None) -> Begin:
        name = frame.get("transaction")
        if not name or len(name) > MAX_ID_CHARS:
            raise RemoteProtocolError(
                f"BEGIN needs a transaction of 1 to {MAX_ID_CHARS} characters"
            )
        if name in self.transactions:
            raise RemoteProtocolError(
                f"transaction {name[:80]!r} is already open", code=ErrorCode.UNKNOWN_TRANSACTION
            )
        if len(self.transactions) >= MAX_TRANSACTIONS:
            raise RemoteProtocolError(
                f"over {MAX_TRANSACTIONS} open transactions", code=ErrorCode.TOO_MANY_TRANSACTIONS
            )
        self.transactions[name] = []
        return Begin(name, receipt)

    def _end_transaction(self, frame: Frame) -> tuple[str, list[tuple[Held, int]]]:
        name = frame.get("transaction")
        if name is None:
            raise RemoteProtocolError(f"{frame.command} needs a transaction header")
        self._transaction_of(frame)  # which must be open
        held = self.transactions.pop(name)
        self._held_bytes -= sum(size for _, size in held)
        return name, held

    def _on_commit(self, frame: Frame, receipt: str | None) -> Commit:
        name, held = self._end_transaction(frame)
        events = tuple(
            event if isinstance(event, Ack) else self._decoded_send(*event) for event, _ in held
        )
        return Commit(name, events, receipt)

    def _decoded_send(self, frame: Frame, receipt: str | None) -> Send:
        """The publish a ``SEND`` frame asks for: when it comes, and again at ``COMMIT`` for one
        its transaction held."""
        data, attrs = decode_body(frame)
        headers = user_headers(frame)
        if headers:
            attrs = {**(attrs or {}), "headers": headers}
        return Send(
            self._channel(frame),
            data,
            receipt,
            frame.get("x-idempotency-key"),
            frame.get("transaction"),
            attrs,
            frame.get("x-ephemeral") == "true",
            frame.get("x-key"),
        )

    def _on_abort(self, frame: Frame, receipt: str | None) -> Abort:
        name, _ = self._end_transaction(frame)
        return Abort(name, receipt)

    def abort_all(self) -> None:
        """Drop every open transaction (the session is ending)."""
        self.transactions.clear()
        self._held_bytes = 0

    def _on_subscribe(self, frame: Frame, receipt: str | None) -> Subscribe:
        channel = self._channel(frame)
        sub_id = frame.get("id")
        if sub_id is None:
            if self.version != "1.0":
                raise RemoteProtocolError("SUBSCRIBE needs an id header")
            sub_id = frame.get("destination", "")
        if not sub_id or len(sub_id) > MAX_ID_CHARS:
            raise RemoteProtocolError(f"subscription id must be 1 to {MAX_ID_CHARS} characters")
        if sub_id in self.subscriptions:
            raise RemoteProtocolError(f"subscription id {sub_id[:80]!r} is already in use")
        if len(self.subscriptions) >= self.max_subscriptions:
            raise RemoteProtocolError(
                f"over {self.max_subscriptions} subscriptions on this connection",
                code=ErrorCode.TOO_MANY_SUBSCRIPTIONS,
            )
        ack = frame.get("ack") or "auto"
        if ack not in ACK_MODES:
            raise RemoteProtocolError(
                f"ack must be auto, client or client-individual, not {ack[:40]!r}"
            )
        mode: AckMode = ack
        since = frame.get("x-since")
        position = None
        if since is not None:
            try:
                position = Cursor.decode(since).get(channel)
            except BadCursor as exc:
                raise RemoteProtocolError(
                    f"x-since: {exc.message}", code=ErrorCode.BAD_CURSOR
                ) from None
            if position is None:
                raise RemoteProtocolError(
                    f"x-since holds no position for channel {channel!r}", code=ErrorCode.BAD_CURSOR
                )
        latest = frame.get("x-latest")
        if latest not in (None, "true", "false"):
            raise RemoteProtocolError("x-latest must be true or false")
        sub = self._register(sub_id, channel, mode)
        return Subscribe(sub, position, receipt, latest=latest == "true")

    def _on_unsubscribe(self, frame: Frame, receipt: str | None) -> Unsubscribe:
        sub_id = frame.get("id")
        if sub_id is not None:
            sub = self.subscriptions.get(sub_id)
        elif self.version == "1.0":
            subs = self.by_channel.get(self._channel(frame))
            sub = subs[0] if subs else None
        else:
            raise RemoteProtocolError("UNSUBSCRIBE needs an id header")
        if sub is not None:
            self.forget(sub)
        return Unsubscribe(sub, receipt)

    def forget(self, sub: StompSubscription) -> None:
        """Drop ``sub`` from the session's books."""
        sub.end()
        if self.subscriptions.get(sub.id) is sub:
            del self.subscriptions[sub.id]
        subs = self.by_channel.get(sub.channel)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self.by_channel[sub.channel]
        if sub.ack_suffix:
            if self._by_suffix.get(sub.ack_suffix) is sub:
                del self._by_suffix[sub.ack_suffix]
        elif self._by_tag.get(tag := channel_tag(sub.channel)) is sub:
            del self._by_tag[tag]

    def _on_ack(self, frame: Frame, receipt: str | None) -> Ack:
        command = frame.command
        ident = frame.get("id") if self.version == "1.2" else None
        ident = ident or frame.get("message-id")
        if ident is None:
            needed = "an id" if self.version == "1.2" else "a message-id"
            raise RemoteProtocolError(f"{command} needs {needed} header")
        if ident.startswith(EPHEMERAL_PREFIX):
            # An ephemeral publication has no position: acknowledging it moves nothing.
            return Ack(None, StreamPosition("", 0), command == "NACK", receipt, None, False)
        cumulative = ident.startswith(RESET_PREFIX)
        cursor, dot, serial = (ident[len(RESET_PREFIX) :] if cumulative else ident).partition(".")
        try:
            entries = decode_entries(cursor)
        except BadCursor:
            entries = {}
        if len(entries) != 1:
            raise RemoteProtocolError(
                f"{command} names no message of this hub: {ident[:60]!r}", code=ErrorCode.BAD_ACK
            )
        ((tag, position),) = entries.items()
        named = frame.get("subscription")
        if named is not None:
            sub = self.subscriptions.get(named)
        elif dot:
            sub = self._by_suffix.get(dot + serial)
        else:
            sub = self._by_tag.get(tag)
        if sub is not None and channel_tag(sub.channel) != tag:
            raise RemoteProtocolError(
                f"{command} names a message of another subscription", code=ErrorCode.BAD_ACK
            )
        transaction = self._transaction_of(frame)
        ack = Ack(sub, position, command == "NACK", receipt, transaction, cumulative)
        if transaction is not None:
            self._hold(transaction, ack, 0)
        else:
            self.apply_ack(ack)
        return ack

    def apply_ack(self, ack: Ack) -> None:
        """Move the acked position of ``ack``'s subscription (at once, or at ``COMMIT``)."""
        sub = ack.subscription
        if sub is None or ack.negative or sub.acks is None:
            return
        if self.subscriptions.get(sub.id) is sub:  # not ended meanwhile
            sub.acks.ack(ack.position, cumulative=ack.cumulative)

    def _on_disconnect(self, frame: Frame, receipt: str | None) -> Disconnect:
        self.abort_all()  # STOMP: a transaction still open at DISCONNECT is aborted
        return Disconnect(receipt)

    _handlers: dict[str, Callable[[StompSession, Frame, str | None], Event]] = {
        "CONNECT": _on_connect,
        "STOMP": _on_connect,
        "SEND": _on_send,
        "SUBSCRIBE": _on_subscribe,
        "UNSUBSCRIBE": _on_unsubscribe,
        "ACK": _on_ack,
        "NACK": _on_ack,
        "BEGIN": _on_begin,
        "COMMIT": _on_commit,
        "ABORT": _on_abort,
        "DISCONNECT": _on_disconnect,
    }

    # ---- hub -> client ------------------------------------------------------------------------

    def _transition(self, command: str) -> None:
        following = SERVER_TRANSITIONS[self.state].get(command)
        if following is None:
            raise LocalProtocolError(f"cannot send {command} in state {self.state.value}")
        self.state = following

    def can_send(self, command: str) -> bool:
        return command in SERVER_TRANSITIONS[self.state]

    def connected(self, session_id: str, server: str, user: str | None = None) -> bytes:
        """The ``CONNECTED`` frame; from now on headers are escaped (1.1+)."""
        assert self.version is not None
        beats = self.heart_beat
        headers = [
            ("version", self.version),
            ("heart-beat", f"{beats.send_ms},{beats.receive_ms}"),
            ("session", session_id),
            ("server", server),
        ]
        if user is not None and user == _one_line(user):
            headers.append(("user-name", user))
        self._transition("CONNECTED")
        self.parser.escaped = self.version != "1.0"
        return serialise(Frame("CONNECTED", tuple(headers)), escaped=False)

    def receipt(self, receipt_id: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
        escaped = self.escaped
        self._transition("RECEIPT")
        frame = Frame("RECEIPT", (("receipt-id", receipt_id), *headers))
        return serialise(frame, escaped=escaped)

    def error(
        self,
        message: str,
        *,
        code: str,
        receipt_id: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> bytes | None:
        """The ``ERROR`` frame that ends the session, or ``None`` when one may not be sent now."""
        if not self.can_send("ERROR"):
            return None
        escaped = self.escaped
        self._transition("ERROR")
        message = _one_line(message)
        extra: list[tuple[str, str]] = [("message", message), ("x-code", code)]
        if receipt_id is not None:
            extra.append(("receipt-id", _one_line(receipt_id)))
        if code == ErrorCode.UNSUPPORTED_VERSION:
            extra.append(("version", ",".join(VERSIONS)))
        extra.append(("content-type", "text/plain"))
        frame = Frame("ERROR", (*extra, *headers), (message + "\n").encode())
        return serialise(frame, escaped=escaped)

    def reset(self, sub: StompSubscription, reason: str, cursor: str) -> bytes | None:
        """The reset ``MESSAGE`` for ``sub``, or ``None`` when the session no longer sends."""
        if not self.can_send("MESSAGE") or self.subscriptions.get(sub.id) is not sub:
            return None
        self._transition("MESSAGE")
        if sub.acks is not None:
            position = Cursor.decode(cursor).get(sub.channel)
            if position is not None:
                sub.acks.reset(position)
        return reset_frame(
            sub.id,
            sub.channel,
            reason,
            cursor,
            escaped=self.escaped,
            ack=sub.needs_ack,
            ack_suffix=sub.ack_suffix,
        )

    def hub_subscription(self, channel: str) -> StompSubscription:
        """A subscription the hub makes on the client's behalf (``ack: auto``). Its id is
        ``server-<channel>``, with ``-2``, ``-3``... appended if the client took that id."""
        base = sub_id = f"server-{channel}"
        n = 1
        while sub_id in self.subscriptions:
            n += 1
            sub_id = f"{base}-{n}"
        return self._register(sub_id, channel, "auto")

    def _register(self, sub_id: str, channel: str, ack: AckMode) -> StompSubscription:
        tag = channel_tag(channel)
        suffix = ""
        if tag in self._by_tag:
            self._serial += 1
            suffix = f".{self._serial}"
        sub = StompSubscription(
            sub_id, channel, ack, escaped=self.escaped, ack_suffix=suffix, room=self._ack_room
        )
        self.subscriptions[sub_id] = sub
        self.by_channel.setdefault(channel, []).append(sub)
        if suffix:
            self._by_suffix[suffix] = sub
        else:
            self._by_tag[tag] = sub
        return sub

    def subscribed(self, sub: StompSubscription, cursor: str) -> bytes | None:
        """The ``x-event: subscribe`` signal for a subscription the hub made."""
        if not self.can_send("MESSAGE") or self.subscriptions.get(sub.id) is not sub:
            return None
        self._transition("MESSAGE")
        return event_frame(
            sub.id, sub.channel, "subscribe", (("x-cursor", cursor),), escaped=self.escaped
        )

    def unsubscribed(self, channel: str, reason: str) -> bytes | None:
        """The hub ended the subscriptions to ``channel``: forget them and return their
        ``x-event: unsubscribe`` signals (``None`` if there is no such subscription, or the
        session no longer sends)."""
        subs = self.by_channel.get(channel)
        if not subs:
            return None
        frames = []
        for sub in list(subs):
            self.forget(sub)
            if not self.can_send("MESSAGE"):
                return None
            self._transition("MESSAGE")
            frames.append(
                event_frame(
                    sub.id, channel, "unsubscribe", (("x-reason", reason),), escaped=self.escaped
                )
            )
        return b"".join(frames)

    def presence_event(self, channel: str, kind: str, body: bytes) -> bytes | None:
        """The ``x-event: join``/``leave`` signals (``body`` the event's JSON) for every
        subscription to ``channel``; ``None`` if there is none, or the session no longer
        sends."""
        subs = self.by_channel.get(channel)
        if not subs:
            return None
        frames = []
        for sub in list(subs):
            if not self.can_send("MESSAGE"):
                return None
            self._transition("MESSAGE")
            frames.append(event_frame(sub.id, channel, kind, (), escaped=self.escaped, body=body))
        return b"".join(frames)

    def close(self) -> None:
        """The connection ended (or is being ended): nothing more is read or sent; open
        transactions are aborted."""
        self._transition("close")
        self.abort_all()


def acked_cursor(sub: StompSubscription) -> str | None:
    """The cursor of ``sub``'s acked position (``None`` in ``auto`` mode)."""
    if sub.acks is None:
        return None
    position: StreamPosition = sub.acks.position
    return Cursor.single(sub.channel, position).encode()
