"""The clarion JSON protocol (WebSocket subprotocol ``clarion.v1``), in both directions.

Client → hub, one JSON object per text frame::

    {"id": 1, "op": "subscribe", "channel": "chat:lobby", "since": "<cursor>"}

Hub → client: replies carry the command's ``id`` with ``ok`` or ``error``; pushes carry no ``id``
(a publication object plus its ``cursor``, or one of ``reset``/``join``/``leave``/``subscribe``/
``unsubscribe``/``disconnect``).

The hub reads commands with :func:`parse_command` and writes frames with the ``encode_*``
functions; a client writes commands with :func:`encode_command` and reads frames with
:func:`parse_frame`, as the typed values below. Each pair reads back what the other writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from clarion.errors import BadRequest, ClarionError, Code
from clarion.protocol.channels import validate_channel
from clarion.protocol.errors import ErrorCode
from clarion.protocol.publication import MAX_KEY_CHARS, Publication

SUBPROTOCOL = "clarion.v1"

OPS = frozenset(
    {
        "connect",
        "refresh",
        "subscribe",
        "unsubscribe",
        "publish",
        "history",
        "presence",
        "presence_stats",
        "ping",
    }
)
_CHANNEL_OPS = frozenset(
    {"subscribe", "unsubscribe", "publish", "history", "presence", "presence_stats"}
)
MAX_ID_CHARS = 64
MAX_HISTORY_LIMIT = 1000

RequestId = int | str | None


class CommandError(BadRequest):
    """A command that cannot be carried out as sent; ``request_id`` echoes its ``id``.

    ``foreign``: the frame is another protocol's (a STOMP client at the JSON endpoint), so no
    frame of that peer's will be readable: the connection is closed at once."""

    def __init__(
        self,
        message: str,
        request_id: RequestId = None,
        code: Code | None = None,
        *,
        foreign: bool = False,
    ):
        super().__init__(message, code=code)
        self.request_id = request_id
        self.foreign = foreign


# The first line of a STOMP client's first frame (STOMP 1.2, "Connecting").
_STOMP_CONNECT = re.compile(rb"\A(?:CONNECT|STOMP)\r?\n")


@dataclass(frozen=True, slots=True)
class Command:
    id: RequestId
    op: str
    channel: str | None = None
    since: str | None = None
    data: Any = None
    publication_id: str | None = None
    limit: int | None = None
    token: str | None = None
    latest: bool = False  # subscribe: the newest stored publication first
    reverse: bool = False  # history: newest first, older than ``since``
    ephemeral: bool = False  # publish: a live signal, never stored
    key: str | None = None  # publish: an ephemeral publication's key


def parse_command(frame: str | bytes) -> Command:
    """Decode and validate one client frame; raise :class:`CommandError` when it is wrong."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raw = frame.encode() if isinstance(frame, str) else frame
        if _STOMP_CONNECT.match(raw):
            raise CommandError(
                "a STOMP frame: this endpoint speaks clarion's JSON protocol; "
                "STOMP is served at the hub's /stomp",
                foreign=True,
            ) from None
        raise CommandError("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise CommandError("frame must be a JSON object")
    rid = obj.get("id")
    if rid is not None and not (
        (isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**53)
        or (isinstance(rid, str) and len(rid) <= MAX_ID_CHARS)
    ):
        raise CommandError("id must be a non-negative integer or a short string")
    op = obj.get("op")
    if not isinstance(op, str):
        raise CommandError("op is required and must be a string", rid)
    if op not in OPS:
        raise CommandError(f"unknown op {op[:32]!r}", rid, code=ErrorCode.UNKNOWN_OP)
    channel = None
    if op in _CHANNEL_OPS:
        try:
            channel = validate_channel(obj.get("channel"))
        except ClarionError as exc:
            raise CommandError(exc.message, rid, code=exc.code) from None
    since = obj.get("since")
    if since is not None and not isinstance(since, str):
        raise CommandError("since must be a cursor string", rid, code=ErrorCode.BAD_CURSOR)
    limit = obj.get("limit")
    if limit is not None and (
        not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_HISTORY_LIMIT
    ):
        raise CommandError(f"limit must be an integer from 0 to {MAX_HISTORY_LIMIT}", rid)
    flags = {}
    for name in ("latest", "reverse"):
        value = obj.get(name, False)
        if not isinstance(value, bool):
            raise CommandError(f"{name} must be true or false", rid)
        flags[name] = value
    pub_id = None
    ephemeral, key = False, None
    if op == "publish":
        if "data" not in obj:
            raise CommandError("publish needs data", rid)
        pub_id = obj.get("pub_id")
        if pub_id is not None and (not isinstance(pub_id, str) or len(pub_id) > 128):
            raise CommandError("pub_id must be a string of at most 128 characters", rid)
        ephemeral, key = signal_fields(obj, rid)
    token = obj.get("token")
    if op in ("connect", "refresh"):
        if token is not None and not isinstance(token, str):
            raise CommandError("token must be a string", rid)
        if op == "refresh" and not token:
            raise CommandError("refresh needs a token", rid)
    elif token is not None:
        token = None
    return Command(
        id=rid,
        op=op,
        channel=channel,
        since=since,
        data=obj.get("data"),
        publication_id=pub_id,
        limit=limit,
        token=token,
        latest=flags["latest"] and op == "subscribe",
        reverse=flags["reverse"] and op == "history",
        ephemeral=ephemeral,
        key=key,
    )


def signal_fields(obj: dict[str, Any], rid: RequestId = None) -> tuple[bool, str | None]:
    """A publish's ``ephemeral`` and ``key`` fields, checked (the API's bodies too)."""
    ephemeral = obj.get("ephemeral", False)
    if not isinstance(ephemeral, bool):
        raise CommandError("ephemeral must be true or false", rid)
    key = obj.get("key")
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_KEY_CHARS):
        raise CommandError(f"key must be a string of 1 to {MAX_KEY_CHARS} characters", rid)
    return ephemeral, key


def encode_command(command: Command) -> bytes:
    """A command as a client sends it: what :func:`parse_command` reads back as ``command``."""
    obj: dict[str, Any] = {"id": command.id, "op": command.op}
    if command.channel is not None:
        obj["channel"] = command.channel
    if command.since is not None:
        obj["since"] = command.since
    if command.op == "publish":
        obj["data"] = command.data
    if command.publication_id is not None:
        obj["pub_id"] = command.publication_id
    if command.limit is not None:
        obj["limit"] = command.limit
    if command.token is not None:
        obj["token"] = command.token
    if command.latest:
        obj["latest"] = True
    if command.reverse:
        obj["reverse"] = True
    if command.ephemeral:
        obj["ephemeral"] = True
    if command.key is not None:
        obj["key"] = command.key
    return orjson.dumps(obj)


def encode_ok(rid: RequestId, result: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"id": rid, "ok": result if result is not None else {}})


def encode_error(rid: RequestId, error: ClarionError) -> bytes:
    if rid is None:
        return orjson.dumps({"error": error.to_dict()})
    return orjson.dumps({"id": rid, "error": error.to_dict()})


def encode_publication(pub: Publication, cursor: str | None) -> bytes:
    """The publication object plus its ``cursor``; reuses the publication's cached JSON.

    An ephemeral publication has no cursor (``None``): it is the object alone.
    """
    body = pub.json()
    if cursor is None:
        return body
    return b'%s,"cursor":"%s"}' % (body[:-1], cursor.encode("ascii"))


def encode_reset(channel: str, reason: str, cursor: str) -> bytes:
    return orjson.dumps({"reset": {"channel": channel, "reason": reason, "cursor": cursor}})


def encode_subscribe(result: dict[str, Any]) -> bytes:
    """The hub subscribed the connection (backend or token ``subs``): as a subscribe reply."""
    return orjson.dumps({"subscribe": result})


def encode_unsubscribe(channel: str, reason: str) -> bytes:
    """The hub ended a subscription: the token no longer allows it, or the backend said so."""
    return orjson.dumps({"unsubscribe": {"channel": channel, "reason": reason}})


def encode_presence_event(kind: str, event: dict[str, Any]) -> bytes:
    return orjson.dumps({kind: event})


def encode_disconnect(code: int, reason: str, reconnect: bool) -> bytes:
    return orjson.dumps({"disconnect": {"code": code, "reason": reason, "reconnect": reconnect}})


# ---- hub → client, as a client reads them -----------------------------------------------------


class FrameError(ValueError):
    """A hub frame this version of the protocol cannot read."""


class ErrorBody(TypedDict):
    code: str
    message: str
    # What some errors add: the wait a rate limit names, the limit, the channel refused.
    retry_after: NotRequired[int]
    limit: NotRequired[int]
    channel: NotRequired[str]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the command with this ``id``: ``ok`` on success, else ``error``."""

    id: RequestId
    ok: dict[str, Any] | None = None
    error: ErrorBody | None = None


@dataclass(frozen=True, slots=True)
class PublicationPush:
    publication: Publication
    cursor: str | None  # None: an ephemeral publication, which has no place in the stream


@dataclass(frozen=True, slots=True)
class ResetPush:
    channel: str
    reason: str
    cursor: str | None


@dataclass(frozen=True, slots=True)
class SubscribePush:
    """The hub subscribed the connection: the body of a subscribe reply. ``cursor`` is where
    the connection stands, before the publications that follow: the push's ``since`` when it
    resumes from there, else the channel's position."""

    channel: str
    cursor: str | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnsubscribePush:
    channel: str
    reason: str


@dataclass(frozen=True, slots=True)
class PresencePush:
    kind: Literal["join", "leave"]
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DisconnectPush:
    code: int
    reason: str
    reconnect: bool


Frame = (
    Reply
    | PublicationPush
    | ResetPush
    | SubscribePush
    | UnsubscribePush
    | PresencePush
    | DisconnectPush
)


def parse_frame(frame: str | bytes) -> Frame | None:
    """Read one hub frame; ``None`` for a push this version does not know (a newer hub's).

    Raises :class:`FrameError` when the frame is not what the protocol says.
    """
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise FrameError("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")
    if "ok" in obj or "error" in obj:
        return _reply(obj)
    if "channel" in obj and ("offset" in obj or obj.get("ephemeral") is True):
        cursor = obj.get("cursor")
        if not isinstance(cursor, str) and obj.get("ephemeral") is not True:
            raise FrameError("a publication without its cursor")
        try:
            return PublicationPush(
                Publication.from_dict(obj), cursor if isinstance(cursor, str) else None
            )
        except (KeyError, TypeError, ValueError):
            raise FrameError("a malformed publication") from None
    for kind in ("reset", "subscribe", "unsubscribe", "join", "leave", "disconnect"):
        body = obj.get(kind)
        if isinstance(body, dict):
            return read_push(kind, body)
    return None


def _reply(obj: dict[str, Any]) -> Reply:
    rid = obj.get("id")
    if not (rid is None or isinstance(rid, int | str)) or isinstance(rid, bool):
        raise FrameError("a reply whose id is neither a number nor a string")
    if "error" in obj:
        error = obj["error"] if isinstance(obj["error"], dict) else {}
        code, message = error.get("code"), error.get("message")
        body: ErrorBody = {
            "code": code if isinstance(code, str) else "error",
            "message": message if isinstance(message, str) else "the hub refused the request",
        }
        for name in ("retry_after", "limit"):
            if type(value := error.get(name)) is int:
                body[name] = value
        if isinstance(channel := error.get("channel"), str):
            body["channel"] = channel
        return Reply(rid, error=body)
    ok = obj["ok"]
    return Reply(rid, ok=ok if isinstance(ok, dict) else {})


def read_push(kind: str, body: object) -> Frame:
    """The body of a ``kind`` push (``reset``, ``disconnect``, ...), also as SSE events and
    poll replies carry it; :class:`FrameError` when it is not what the protocol says."""
    if not isinstance(body, dict):
        raise FrameError(f"a {kind} that is not an object")
    if kind in ("join", "leave"):
        return PresencePush("join" if kind == "join" else "leave", body)
    if kind == "disconnect":
        code, reason, reconnect = body.get("code"), body.get("reason"), body.get("reconnect")
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(reconnect, bool):
            raise FrameError("a disconnect without its code or reconnect")
        return DisconnectPush(code, reason if isinstance(reason, str) else "", reconnect)
    channel = body.get("channel")
    if not isinstance(channel, str):
        raise FrameError(f"a {kind} push without its channel")
    reason = body.get("reason")
    if kind == "unsubscribe":
        return UnsubscribePush(channel, reason if isinstance(reason, str) else "")
    cursor = body.get("since" if kind == "subscribe" and "since" in body else "cursor")
    cursor = cursor if isinstance(cursor, str) and cursor else None
    if kind == "reset":
        return ResetPush(channel, reason if isinstance(reason, str) else "", cursor)
    return SubscribePush(channel, cursor, body)
