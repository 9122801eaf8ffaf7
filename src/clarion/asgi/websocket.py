"""``GET /ws``: the clarion JSON protocol over WebSocket (subprotocol ``clarion.v1``)."""

from __future__ import annotations

import logging
from typing import Any

from clarion.asgi import access
from clarion.asgi.pipe import Pipe
from clarion.asgi.publish import publish_reply
from clarion.asgi.wsendpoint import Handler, WebSocketEndpoint
from clarion.asgi.wstransport import WsTransport
from clarion.asgitypes import Message
from clarion.core.hub import Hub
from clarion.core.limits import LogLimit
from clarion.core.resume import SubscribeResult
from clarion.core.session import Session
from clarion.engines.base import presence_body
from clarion.errors import ClarionError, Forbidden, LimitExceeded, Unauthorized
from clarion.protocol import messages
from clarion.protocol.codes import CloseCode
from clarion.protocol.errors import ErrorCode
from clarion.protocol.messages import Command, CommandError

log = logging.getLogger("clarion.ws")
# Tracebacks a peer may cause per request or frame: one per kind of failure a minute.
_failures = LogLimit(log)

MAX_BAD_FRAMES = 20  # malformed frames tolerated per connection before it is closed


class ClarionWebSocket(WebSocketEndpoint):
    """``/ws``: the clarion JSON protocol."""

    def subprotocol(self, offered: list[str]) -> str | None:
        return messages.SUBPROTOCOL if messages.SUBPROTOCOL in offered else None

    async def open(self, scope: dict[str, Any], pipe: Pipe) -> _Connection | None:
        hub = self.hub
        # A bad token is told over the protocol (accept, disconnect push, close 4500/4004), so
        # that clients learn whether to reconnect; a refused handshake would look transient.
        refusal: Unauthorized | None = None
        token = None
        try:
            token = access.token_from(hub, scope)
            credentials = hub.auth.anonymous() if token is None else hub.auth.verify_request(token)
        except Unauthorized as exc:
            refusal = exc
            credentials = hub.auth.anonymous()
        transport = WsTransport(pipe)
        address = access.client_address(hub, scope)
        # Until its session opens (the connect hook may take a while) the socket counts against
        # the caps for sockets without a session; from then on the session counts.
        pending_key = hub.pending_key(address)
        pending = hub.pending.admit(pending_key)
        try:
            if refusal is not None:
                raise refusal
            if not pending:
                raise LimitExceeded(
                    "too many connections without a session from this address",
                    code=ErrorCode.TOO_MANY_CONNECTIONS,
                )
            # Without a token at the upgrade, the connect hook is asked when the session first
            # acts: most clients send their token in the connect op, and a backend that turns
            # anonymous sessions away would otherwise refuse them all before they could.
            vetted = hub.hooks is None or token is not None
            if hub.hooks is not None and vetted:
                credentials = await hub.authenticate(credentials, transport.kind)
            session = hub.open_session(transport, credentials, address)
        except ClarionError as exc:  # a cap, the token, or the connect hook said no
            if not isinstance(exc, LimitExceeded):
                hub.stats.errors[exc.code] += 1
            # A hook's refusal names its code (perhaps the application's own) in the reason.
            hooked = not isinstance(exc, LimitExceeded | Unauthorized)
            transport.close(exc.rule.close, f"{exc.code}: {exc.message}" if hooked else exc.message)
            return None
        finally:
            if pending:
                hub.pending.release(pending_key)
        handler = _Connection(hub, session, transport, pending_key, vetted)
        pipe.on_overflow = handler.overflow
        return handler


def oversized(text: str, limit: int) -> bool:
    """Whether ``text`` is over ``limit`` bytes once UTF-8 encoded (encoded only if in doubt)."""
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)


class _Connection(Handler):
    """Carries out one session's commands in the order they arrive."""

    __slots__ = (
        "bad_frames",
        "hub",
        "lingering",
        "pending_key",
        "session",
        "transport",
        "vetted",
    )

    def __init__(
        self,
        hub: Hub,
        session: Session,
        transport: WsTransport,
        pending_key: str | None,
        vetted: bool = True,
    ) -> None:
        self.hub = hub
        self.session = session
        self.transport = transport
        self.pending_key = pending_key  # where the socket counts once its session is over
        self.bad_frames = 0
        self.lingering = False
        self.vetted = vetted  # has the connect hook had its say on this session?

    def start(self) -> None:
        self.transport.on_close = self.linger
        self.hub.subscribe_claimed(self.session)

    def overflow(self) -> None:
        self.hub.overflow(self.session)

    def linger(self) -> None:
        # The hub ended the session (slow, revoked, ...) but the socket is still there until
        # the peer or the server lets go: count it as a socket without a session meanwhile.
        if not self.lingering:
            self.lingering = True
            self.hub.pending.hold(self.pending_key)

    async def receive(self, message: Message) -> None:
        text = message.get("text")
        session = self.session
        if text is None:
            session.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted")
        elif session.closed:
            return
        elif oversized(text, self.hub.settings.limits.max_message_bytes):
            # Another ASGI server has received it whole, up to its own cap (clarion's refuses
            # it while reading it).
            session.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
        else:
            await self.handle(text)

    def finish(self) -> None:
        self.transport.on_close = None
        self.transport.pipe.release()
        self.session.close(CloseCode.NORMAL)
        if self.lingering:
            self.hub.pending.release(self.pending_key)

    async def handle(self, text: str) -> None:
        rid = None
        try:
            command = messages.parse_command(text)
            rid = command.id
            result = await self.dispatch(command)
            if result is not None:
                self.transport.reply(messages.encode_ok(rid, result))
        except CommandError as exc:
            self._error(exc.request_id, exc)
            self.bad_frames += 1
            if exc.foreign or self.bad_frames > MAX_BAD_FRAMES:
                self.session.close(CloseCode.BAD_REQUEST)
        except ClarionError as exc:
            self._error(rid, exc)
            if exc.code in (ErrorCode.TOKEN_EXPIRED, ErrorCode.REVOKED) and isinstance(
                exc, Unauthorized
            ):
                self.session.close(exc.rule.close)
        except Exception as exc:
            _failures.log(logging.ERROR, type(exc).__name__, "command failed", exc_info=exc)
            self._error(rid, ClarionError("internal error", code=ErrorCode.INTERNAL))

    def _error(self, rid: messages.RequestId, exc: ClarionError) -> None:
        self.hub.stats.errors[exc.code] += 1
        self.transport.reply(messages.encode_error(rid, exc))

    async def dispatch(self, cmd: Command) -> dict[str, Any] | None:
        hub, session = self.hub, self.session
        op = cmd.op
        if op == "ping":
            return {}
        # Publishes have buckets of their own; an unsubscribe costs nothing to let through, and
        # refused it would leave a subscription the client thinks gone.
        if op != "publish" and op != "unsubscribe":
            session.take_command(op)
        if not self.vetted and op not in ("connect", "refresh") and not await self.vet():
            return None
        if op == "subscribe":
            assert cmd.channel is not None
            rid = cmd.id

            def ready(result: SubscribeResult) -> None:
                self.transport.reply(messages.encode_ok(rid, result.to_dict()))

            result = await session.subscribe(
                cmd.channel,
                self.transport.fmt,
                self.transport.push,
                since=cmd.since,
                latest=cmd.latest,
                on_ready=ready,
                target=self.transport.target,
            )
            if result is None and not session.closed:
                # The hub ended it before it was ready (its ``unsubscribe`` push says why).
                raise ClarionError(
                    f"unsubscribed from {cmd.channel!r}", code=ErrorCode.UNSUBSCRIBED
                )
            return None
        if op == "unsubscribe":
            assert cmd.channel is not None
            if not await session.unsubscribe(cmd.channel):
                raise ClarionError(
                    f"not subscribed to {cmd.channel!r}", code=ErrorCode.NOT_SUBSCRIBED
                )
            return {}
        if op == "publish":
            assert cmd.channel is not None
            pub = await session.publish(
                cmd.channel,
                cmd.data,
                idempotency_key=cmd.publication_id,
                ephemeral=cmd.ephemeral,
                key=cmd.key,
            )
            return publish_reply(hub, pub)
        if op == "history":
            assert cmd.channel is not None
            await hub.authorize_read(
                session.credentials, cmd.channel, "ws", session.id, act="read the history of"
            )
            history, reason = await hub.history(
                cmd.channel, since=cmd.since, limit=cmd.limit, reverse=cmd.reverse, reader=session
            )
            return history_body(hub, cmd.channel, history, reason, reverse=cmd.reverse)
        if op in ("presence", "presence_stats"):
            assert cmd.channel is not None
            subscribed = cmd.channel in session.subscriptions
            hub.auth.check_presence(session.credentials, cmd.channel, subscribed=subscribed)
            if op == "presence_stats":
                return (await hub.presence_stats(cmd.channel)).to_dict()
            info = hub.options(cmd.channel).presence_info
            limit = hub.settings.limits.max_presence_clients
            # One more than the reply lists tells it is truncated; the engine reads no more.
            entries = await hub.presence(cmd.channel, limit + 1)
            return presence_body(entries, info=info, limit=limit)
        if op in ("connect", "refresh"):
            return await self.authenticate(cmd)
        raise CommandError(
            f"unknown op {op!r}", cmd.id, code=ErrorCode.UNKNOWN_OP
        )  # pragma: no cover

    async def authenticate(self, cmd: Command) -> dict[str, Any]:
        hub, session = self.hub, self.session
        credentials = hub.auth.anonymous() if cmd.token is None else hub.auth.verify(cmd.token)
        if cmd.op == "refresh" and credentials.user != session.user:
            raise Forbidden("a refreshed token must be for the same user")
        if cmd.op == "connect" and session.subscriptions and credentials.user != session.user:
            raise Forbidden("connect must come before the first subscribe")
        # The hook's first say on this session may grant subscriptions (``subs``) too.
        first = (session.user is None and credentials.user is not None) or not self.vetted
        if hub.hooks is not None:
            credentials = await hub.authenticate(credentials, "ws")
            if session.closed:
                return {}
            self.vetted = True
        session.set_credentials(credentials)
        if cmd.op == "connect" and first:
            hub.subscribe_claimed(session)
        body: dict[str, Any] = {"client": session.id, "user": credentials.user}
        if credentials.expires_at is not None:
            body["expires"] = int(credentials.expires_at)
        return body

    async def vet(self) -> bool:
        """The connect hook's say on a session that opened without a token and acts before any
        ``connect`` op: as at an upgrade, a refusal closes it. Whether it may go on."""
        hub, session = self.hub, self.session
        try:
            credentials = await hub.authenticate(session.credentials, "ws")
        except ClarionError as exc:
            hub.stats.errors[exc.code] += 1
            hooked = not isinstance(exc, Unauthorized)
            session.close(exc.rule.close, f"{exc.code}: {exc.message}" if hooked else exc.message)
            return False
        if session.closed:
            return False
        self.vetted = True
        session.set_credentials(credentials)
        hub.subscribe_claimed(session)  # what the hook's answer grants (``subs``)
        return True


def history_body(
    hub: Hub, channel: str, history: Any, reason: str | None, *, reverse: bool = False
) -> dict[str, Any]:
    """A history reply. Forward, ``cursor`` continues after the page; ``reverse``, it is the
    oldest publication of the page (the earliest position held on an empty page), to page
    further back from."""
    from clarion.protocol.cursor import encode_single

    pubs = history.publications
    if reverse:
        if pubs:
            cursor = hub.cursor_of(pubs[-1])
            more = pubs[-1].offset > history.earliest
        else:
            cursor = encode_single(channel, history.position.epoch, history.earliest)
            more = False
    elif pubs:
        cursor = hub.cursor_of(pubs[-1])
        more = pubs[-1].offset < history.position.offset
    else:
        cursor = encode_single(channel, history.position.epoch, history.position.offset)
        more = False
    body: dict[str, Any] = {
        "publications": [{**p.to_dict(), "cursor": hub.cursor_of(p)} for p in pubs],
        "cursor": cursor,
        "more": more,
    }
    if reason is not None:
        body["reset"] = {"channel": channel, "reason": reason}
    return body
