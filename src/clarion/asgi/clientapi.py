"""``/client/publish``, ``/client/history``, ``/client/presence``, ``/client/presence_stats``: what
a WebSocket session does with those ops, for clients on SSE or polling.

They take the connection token (``Authorization: Bearer``, ``token=`` or the cookie), never the
API key, and apply the client rules: the token's channel and publish permissions, the hooks, the
client publish rate, ``presence_read``. Each request is a session while it runs, like a poll.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from clarion.asgi import access
from clarion.asgi.access import single_param
from clarion.asgi.channelrequest import query_params, refuse
from clarion.asgi.pollreply import PollWaiter
from clarion.asgi.publish import parse_object, publish_reply, read_body
from clarion.asgi.responses import send_json
from clarion.asgi.websocket import history_body
from clarion.core.hub import Hub
from clarion.core.limits import Allowances, LogLimit
from clarion.core.session import SIGNAL_CHANNELS, Session
from clarion.engines.base import presence_body
from clarion.errors import BadRequest, ClarionError, LimitExceeded, MethodNotAllowed
from clarion.protocol import messages
from clarion.protocol.codes import CloseCode
from clarion.protocol.errors import ErrorCode
from clarion.protocol.messages import Command, CommandError
from clarion.protocol.numbers import ascii_int

log = logging.getLogger("clarion.api")
# Tracebacks a peer may cause per request or frame: one per kind of failure a minute.
_failures = LogLimit(log)

ALLOWED_HEADERS = b"authorization, content-type"


class ClientRates:
    """Rates across requests: one bucket per user (or address, without a user) and kind, so a
    client over HTTP gets the budgets of one connection, not one per request or path."""

    def __init__(self, hub: Hub) -> None:
        limits = hub.settings.limits
        rate, burst = limits.client_ephemeral_rate, limits.client_ephemeral_burst
        self.publishes = Allowances(limits.client_publish_rate, limits.client_publish_burst)
        self.signals = Allowances(rate, burst)  # per user and channel
        self.all_signals = Allowances(rate * SIGNAL_CHANNELS, burst * SIGNAL_CHANNELS)

    def take(self, session: Session, signal_channel: str | None = None) -> bool:
        """A token for one publish, or for one ephemeral publish to ``signal_channel`` (their
        own budget, per channel and for all channels together, as on a connection). History
        and presence reads take from ``hub.commands``, which connections share."""
        who = session.rate_key
        if signal_channel is not None:
            return self.signals.take(f"{who} {signal_channel}") and self.all_signals.take(who)
        return self.publishes.take(who)


def _command(obj: dict[str, Any]) -> Command:
    try:
        written = orjson.dumps(obj)
    except orjson.JSONEncodeError:  # read from the body, but too deep to write back
        raise BadRequest("the body is JSON nested too deep (over 254 levels)") from None
    try:
        return messages.parse_command(written)
    except CommandError as exc:
        raise BadRequest(exc.message, code=exc.code) from None


def _flag(value: str | None, name: str) -> bool:
    if value in (None, "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise BadRequest(f"{name} must be 1, true, 0 or false")


class ClientEndpoint:
    """One raw ASGI endpoint for the three paths: origin, CORS preflight, errors, a session."""

    def __init__(self, hub: Hub, op: str, rates: ClientRates | None = None) -> None:
        self.hub = hub
        self.op = op
        self.method = "POST" if op == "publish" else "GET"
        self.rates = ClientRates(hub) if rates is None else rates

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        hub = self.hub
        cors = access.cors_headers(hub, scope)
        try:
            access.check_origin(hub, scope)
            method = scope["method"]
            if method == "OPTIONS":
                await self._preflight(send, cors)
                return
            if method != self.method:
                raise MethodNotAllowed(
                    f"{method} is not allowed here", allow=f"{self.method}, OPTIONS"
                )
            if hub.closing:
                raise ClarionError("the hub is shutting down", code=ErrorCode.SHUTTING_DOWN)
            # Who asks, from the request's head, before any of its body is read: a client
            # that may publish nowhere makes the hub hold none of a body it sends.
            credentials = await hub.authenticate(access.credentials_for(hub, scope), "poll")
            if self.op == "publish":
                hub.auth.check_publishes(credentials)
            command = await self._read(scope, receive)
            session = hub.open_session(
                PollWaiter(0, 0), credentials, access.client_address(hub, scope)
            )
            try:
                result = await self._run(session, command)
            finally:
                session.close(CloseCode.NORMAL)
        except ClarionError as exc:
            await refuse(hub, send, exc, cors)
            return
        except Exception as exc:
            _failures.log(
                logging.ERROR, type(exc).__name__, "client %s failed", self.op, exc_info=exc
            )
            await refuse(hub, send, ClarionError("internal error", code=ErrorCode.INTERNAL), cors)
            return
        await send_json(send, 200, orjson.dumps(result), cors)

    async def _preflight(self, send: Any, cors: list[tuple[bytes, bytes]]) -> None:
        headers = [
            *cors,
            (b"access-control-allow-methods", f"{self.method}, OPTIONS".encode()),
            (b"access-control-allow-headers", ALLOWED_HEADERS),
            (b"access-control-max-age", b"600"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _read(self, scope: dict[str, Any], receive: Any) -> Command:
        """The request as the op a WebSocket client would send, checked by the same codec."""
        if self.op == "publish":
            body = parse_object(await read_body(self.hub, scope, receive))
            return _command({**body, "op": "publish", "id": None, "token": None})
        params = query_params(self.hub, scope)
        unknown = set(params) - {"channel", "since", "limit", "reverse", "token"}
        if unknown:
            raise BadRequest(f"unknown parameter {sorted(unknown)[0][:32]!r}")
        obj: dict[str, Any] = {"op": self.op, "channel": single_param(params, "channel")}
        if self.op == "history":
            since = single_param(params, "since")
            if since is not None:
                obj["since"] = since
            limit = single_param(params, "limit")
            if limit is not None:
                number = ascii_int(limit, max_digits=6)
                if number is None:
                    raise BadRequest("limit must be a whole number")
                obj["limit"] = number
            obj["reverse"] = _flag(single_param(params, "reverse"), "reverse")
        return _command(obj)

    async def _run(self, session: Session, cmd: Command) -> dict[str, Any]:
        hub = self.hub
        channel = cmd.channel
        assert channel is not None
        if cmd.op == "publish":
            hub.auth.check_publish(session.credentials, channel)
            ephemeral = cmd.ephemeral or hub.options(channel).ephemeral
            if not self.rates.take(session, channel if ephemeral else None):
                if ephemeral:
                    raise LimitExceeded(
                        "sending live signals to this channel faster than "
                        "limits.client_ephemeral_rate",
                        code=ErrorCode.EPHEMERAL_RATE_LIMITED,
                    )
                raise LimitExceeded(
                    "publishing faster than the client rate", code=ErrorCode.RATE_LIMITED
                )
            pub = await session.publish(
                channel,
                cmd.data,
                idempotency_key=cmd.publication_id,
                ephemeral=ephemeral,
                key=cmd.key,
            )
            return publish_reply(hub, pub)
        why = f"{cmd.op} refused: reading history or presence faster than client_command_rate"
        hub.commands.require(session.rate_key, 1, why)  # (shared with the user's connections)
        if cmd.op == "history":
            await hub.authorize_read(
                session.credentials, channel, "poll", session.id, act="read the history of"
            )
            history, reason = await hub.history(
                channel, since=cmd.since, limit=cmd.limit, reverse=cmd.reverse, reader=session
            )
            return history_body(hub, channel, history, reason, reverse=cmd.reverse)
        # A request is subscribed to nothing; a user whose token may subscribe to the channel
        # could open a stream on it at once, so it counts as that stream's subscriber.
        subscribed = session.user is not None and _may_subscribe(hub, session, channel)
        hub.auth.check_presence(session.credentials, channel, subscribed=subscribed)
        if cmd.op == "presence_stats":
            return (await hub.presence_stats(channel)).to_dict()
        info = hub.options(channel).presence_info
        limit = hub.settings.limits.max_presence_clients
        # One more than the reply lists tells it is truncated; the engine reads no more.
        entries = await hub.presence(channel, limit + 1)
        return presence_body(entries, info=info, limit=limit)


def _may_subscribe(hub: Hub, session: Session, channel: str) -> bool:
    try:
        hub.auth.check_subscribe(session.credentials, channel)
    except ClarionError:
        return False
    return True
