"""The hub: the one object an application or adapter talks to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from clarion.core.admission import Admission
from clarion.core.auth import Authenticator, Credentials, auth_notes
from clarion.core.fanout import LocalChannel, Push, Subscription, WireFormat, publication_cursor
from clarion.core.hooks import Hooks
from clarion.core.limits import AddressCount, Refusals, Revocations
from clarion.core.metrics import Stats, make_registry, render
from clarion.core.session import Backlogged, Session, SubscribeResult, Transport
from clarion.engines.base import Engine, History, PresenceEntry, PresenceStats, SharedLimits
from clarion.errors import (
    BadCursor,
    BadRequest,
    ClarionError,
    ConfigError,
    LimitExceeded,
    NodeFull,
    TooLarge,
    Unauthorized,
)
from clarion.protocol.channels import namespace_of, validate_channel
from clarion.protocol.codes import CloseCode, disconnect_for
from clarion.protocol.cursor import Cursor, encode_single
from clarion.protocol.proxies import address_key
from clarion.protocol.publication import (
    MAX_KEY_CHARS,
    Publication,
    StreamPosition,
    payload_size,
)
from clarion.settings import REDIS_URL_SCHEMES, NamespaceOptions, Settings

log = logging.getLogger("clarion.hub")

TICK = 1.0  # seconds between heartbeat / idle / expiry sweeps over sessions
# Seconds between reads of the engine's revocations: what a node missed (it was cut off from the
# others when a revocation was announced) is refused at the latest this long after.
REVOCATION_SYNC = 5.0


def make_engine(settings: Settings) -> Engine:
    url = settings.engine
    if url == "memory":
        from clarion.engines.memory import MemoryEngine

        return MemoryEngine(data_dir=settings.data_dir)
    if url.startswith(REDIS_URL_SCHEMES):
        try:
            from clarion.engines.redis import RedisEngine
        except ImportError as exc:
            raise ConfigError(
                f"the redis engine needs the redis extra ({exc}): "
                "pip install -e '.[redis]' in the checkout"
            ) from None
        return RedisEngine(url, settings)
    raise ConfigError(f"unknown engine {url!r}: use 'memory' or 'redis://host:port/db'")


def position_for(channel: str, since: str | StreamPosition | None) -> StreamPosition | None:
    if since is None or isinstance(since, StreamPosition):
        return since
    position = Cursor.decode(since).get(channel)
    if position is None:
        raise BadCursor(f"cursor holds no position for channel {channel!r}")
    return position


def reset_reason(history: History, since: StreamPosition) -> str:
    if since.epoch != history.position.epoch:
        return "epoch"  # the history the cursor pointed into is gone
    if since.offset > history.position.offset:
        return "position"  # a position this stream never reached
    return "trimmed"  # older than what history still holds (size or TTL)


class Hub:
    """A clarion hub: channels, sessions, fan-out and the engine behind them.

    This is the transport-agnostic core; :class:`clarion.Hub` adds the ASGI application.
    """

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.engine: Engine = engine if engine is not None else make_engine(self.settings)
        self.auth = Authenticator(self.settings)
        self.local: dict[str, LocalChannel] = {}
        self.sessions: dict[str, Session] = {}
        self.by_user: dict[str, set[Session]] = {}
        self.by_ip: dict[str, int] = {}
        limits = self.settings.limits
        # Sockets without a session yet (STOMP before CONNECT), per address key and in all.
        self.pending = AddressCount(
            limits.max_pending_connections_per_ip,
            limits.max_pending_connections,
            Refusals(log, "WebSocket(s) without a session"),
        )
        self.revocations = Revocations()
        # Set by the application layer when ``[hooks]`` are configured.
        self.hooks: Hooks | None = None
        self.admission = Admission(self)
        self.stats = Stats()
        self.metrics_registry = make_registry(self)
        self._recovering: dict[str, list[Publication]] = {}
        # (channel, user) -> the task that sends the user's leave once its grace has passed.
        self._retiring: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._revocation_sync: asyncio.Task[None] | None = None
        self._started = False
        self.closing = False
        # Called with every publication this node made (webhooks' outbox, for one); what a
        # listener returns, when awaitable, is awaited before the publish call answers.
        self.publish_listeners: list[Callable[[Publication], Awaitable[object] | None]] = []
        # Called with session lifecycle events: connect, disconnect, subscribe, unsubscribe.
        self.lifecycle_listeners: list[Callable[[str, dict[str, Any]], None]] = []

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.closing = False
        await self.engine.start(self)
        shared = getattr(self.engine, "limits", None)
        self.admission.shared = shared if isinstance(shared, SharedLimits) else None
        # Before the first connection: a revoked user or token is refused from the start.
        await self.sync_revocations()
        self._ticker = asyncio.create_task(self._tick_forever(), name="clarion-hub-tick")
        self._revocation_sync = asyncio.create_task(
            self._sync_revocations_forever(), name="clarion-revocation-sync"
        )
        log.info("hub started (engine=%s)", self.engine.name)
        for note in auth_notes(self.settings):  # embedded hubs say it too, not only the CLI
            log.warning(note)

    async def close(self, code: int = CloseCode.SHUTDOWN) -> None:
        """Close every session with ``code`` (default: reconnect elsewhere) and the engine."""
        if not self._started:
            return
        self.closing = True
        for session in list(self.sessions.values()):
            self.close_session(session, code)
        for retiring in self._retiring.values():
            retiring.cancel()  # a node going away sends no late leave
        self._retiring.clear()
        for timer in (self._ticker, self._revocation_sync):
            if timer is not None:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        await self.engine.close()
        self._started = False
        log.info("hub closed")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Run the hub for the lifetime of a host application (Starlette/FastAPI ``lifespan``)."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    def spawn(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def options(self, channel: str) -> NamespaceOptions:
        return self.settings.namespace(namespace_of(channel))

    # ---- publishing -------------------------------------------------------------------------

    def check_data(self, data: Any, attrs: dict[str, Any] | None = None) -> None:
        try:
            size = payload_size(data, attrs)
        except TypeError as exc:
            raise BadRequest(f"data is not JSON-serialisable: {exc}") from None
        if size > self.settings.limits.max_message_bytes:
            raise TooLarge(
                f"data is {size} bytes, over max_message_bytes "
                f"({self.settings.limits.max_message_bytes})"
            )

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        idempotency_key: str | None = None,
        info: dict[str, Any] | None = None,
        idempotency_scope: str | None = None,
        attrs: dict[str, Any] | None = None,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> Publication:
        """Publish ``data`` to ``channel``; every subscriber on every node receives it.

        ``idempotency_scope`` is ``None`` for the backend (API and app code); client publishes
        pass their session's scope, so that no client can take a key the backend will use.
        ``ephemeral`` (or the namespace's ``ephemeral`` option): a live signal, see
        :meth:`publish_ephemeral`; ``key`` is an ephemeral publication's key.
        """
        validate_channel(channel)
        self.check_data(data, attrs)
        options = self.options(channel)
        if ephemeral or options.ephemeral:
            if idempotency_key is not None:
                raise BadRequest("an ephemeral publication takes no id: it is never stored")
            return await self.publish_ephemeral(channel, data, info=info, attrs=attrs, key=key)
        if key is not None:
            raise BadRequest("a key is for ephemeral publications only")
        pub = await self.engine.publish(
            channel,
            data,
            options,
            idempotency_key=idempotency_key,
            info=info,
            idempotency_scope=idempotency_scope,
            attrs=attrs,
        )
        if not pub.repeated:  # a repeat published nothing: listeners saw it the first time
            await self._published(pub)
        return pub

    async def publish_ephemeral(
        self,
        channel: str,
        data: Any,
        *,
        info: dict[str, Any] | None = None,
        attrs: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> Publication:
        """A live signal: delivered to the channel's live subscribers on every node, never
        stored, no offset, no cursor, not sent to webhooks. When a subscriber's send queue has
        a backlog, only the latest signal per ``key`` waits in it."""
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_KEY_CHARS):
            raise BadRequest(f"key must be a string of 1 to {MAX_KEY_CHARS} characters")
        pub = Publication.signal(channel, data, int(time.time() * 1000), info, attrs, key)
        await self.engine.publish_ephemeral(pub)
        return pub

    async def _published(self, pub: Publication) -> None:
        """Tell the listeners; those that return an awaitable (a durable write: the webhook
        outbox) are waited for, so the publish call answers once they are done."""
        waits = []
        for listener in self.publish_listeners:
            try:
                result = listener(pub)
            except Exception:
                log.exception("publish listener failed")
            else:
                if result is not None:
                    waits.append(result)
        for wait in waits:
            try:
                await wait
            except Exception:
                log.exception("publish listener failed")

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        """Report a lifecycle event to the listeners (never raises)."""
        for listener in self.lifecycle_listeners:
            try:
                listener(kind, payload)
            except Exception:
                log.exception("lifecycle listener failed")

    async def broadcast(self, channels: list[str], data: Any) -> list[Publication]:
        for channel in channels:
            validate_channel(channel)
        self.check_data(data)
        pubs = []
        for channel in channels:
            options = self.options(channel)
            if options.ephemeral:
                pubs.append(await self.publish_ephemeral(channel, data))
                continue
            pub = await self.engine.publish(channel, data, options)
            await self._published(pub)
            pubs.append(pub)
        return pubs

    async def history(
        self,
        channel: str,
        *,
        since: str | StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> tuple[History, str | None]:
        """A history read; also returns a reset reason when ``since`` cannot be covered.

        ``reverse``: newest first, older than ``since`` (see :meth:`Engine.history`); the
        reset reasons are then ``epoch`` and ``position`` only — reaching the oldest
        publication held is the end of the pages, not a gap.
        """
        validate_channel(channel)
        position = position_for(channel, since)
        cap = self.settings.limits.max_history_batch
        limit = cap if limit is None else min(limit, cap)
        history = await self.engine.history(
            channel, self.options(channel), since=position, limit=limit, reverse=reverse
        )
        reason = None
        if position is not None:
            if reverse:
                top = history.position
                if position.epoch != top.epoch or position.offset > top.offset + 1:
                    reason = reset_reason(history, position)
            elif not history.covers(position):
                reason = reset_reason(history, position)
        return history, reason

    async def presence(self, channel: str) -> list[PresenceEntry]:
        validate_channel(channel)
        return await self.engine.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients and distinct users are present, without listing them."""
        validate_channel(channel)
        return await self.engine.presence_stats(channel)

    def channels(self) -> dict[str, int]:
        """Channels with subscribers on this node, with their subscriber counts."""
        return {name: len(local) for name, local in self.local.items()}

    # ---- engine sink: everything delivered goes through here ---------------------------------

    def on_publication(self, pub: Publication) -> None:
        self.stats.publications += 1
        local = self.local.get(pub.channel)
        if local is None:
            return
        recovering = self._recovering.get(pub.channel)
        if recovering is not None:
            recovering.append(pub)
            return
        last = local.position
        if last is not None:
            if pub.epoch == last.epoch:
                if pub.offset <= last.offset:
                    return  # already delivered (e.g. recovered from history first)
                if pub.offset != last.offset + 1:
                    self._recover(local, pub)
                    return
            else:
                self._reset_all(local, "epoch", StreamPosition(pub.epoch, pub.offset - 1))
        local.position = pub.position
        self._deliver(local, pub)
        stats = self.stats
        stats.countdown -= 1
        if stats.countdown <= 0:
            stats.sample(pub)

    def _deliver(self, local: LocalChannel, pub: Publication) -> None:
        for buffer in local.pending.values():
            buffer.append(pub)
        if local.conflating:
            conflating = local.conflating
            for sub in conflating:
                conflating[sub] = pub
        deliveries = self.stats.deliveries
        total = 0
        for fmt, group in local.by_format.items():
            fmt.deliver(group.values(), pub.encoded(fmt, fmt.encode))
            deliveries[fmt.transport] += len(group)
            total += len(group)
        self.stats.activity.count(pub.channel, total)
        if local.ahead:
            local.catch_up(pub)

    def on_ephemeral(self, pub: Publication) -> None:
        """A live signal: to the channel's live subscribers as it comes. Nothing of the
        stream's position changes; subscribers still reading history (their subscribe reply
        is not out yet) and conflating ones (a backlog of stored publications) do without."""
        self.stats.signals += 1
        local = self.local.get(pub.channel)
        if local is None:
            return
        deliveries = self.stats.deliveries
        for fmt, group in local.by_format.items():
            fmt.deliver(group.values(), pub.encoded(fmt, fmt.encode))
            deliveries[fmt.transport] += len(group)
        for sub in local.ahead:  # live already, only waiting for stored publications
            sub.push(pub.encoded(sub.fmt, sub.fmt.encode))

    def on_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        local = self.local.get(channel)
        if local is None:
            return
        # Presence events go to the subscribers who may read the channel's presence only.
        may_read = self.auth.may_read_presence
        pending = local.pending
        for sub in local.subscriptions():
            if sub in pending:
                continue  # not confirmed yet: nothing may come before its subscribe reply
            if may_read(sub.session.credentials, channel, subscribed=True):
                sub.session.transport.send_event(channel, kind, event)

    def on_control(self, command: str, payload: dict[str, Any]) -> None:
        if command == "disconnect":
            user = payload.get("user")
            jti = payload.get("jti")
            until = payload.get("until")
            if isinstance(user, str) or isinstance(jti, str):
                self.disconnect_local_user(
                    user if isinstance(user, str) else None,
                    int(payload.get("code") or CloseCode.DISCONNECTED),
                    token_id=jti if isinstance(jti, str) else None,
                    until=float(until) if isinstance(until, int | float) else None,
                )
        elif command in ("subscribe", "unsubscribe"):
            channel, since = payload.get("channel"), payload.get("since")
            if not isinstance(channel, str):
                return
            for session in self._addressed(payload):
                if command == "unsubscribe":
                    self.drop(session, channel, "server")
                else:
                    cursor = since if isinstance(since, str) else None
                    self.spawn(self.subscribe_for(session, [channel], cursor, server=True))

    def _addressed(self, payload: dict[str, Any]) -> list[Session]:
        """This node's sessions of ``payload``'s ``user``, or its session ``client``."""
        user, client = payload.get("user"), payload.get("client")
        if isinstance(user, str):
            return list(self.by_user.get(user, ()))
        session = self.sessions.get(client) if isinstance(client, str) else None
        return [session] if session is not None else []

    async def subscribe_for(
        self, session: Session, channels: Iterable[str], since: str | None = None, *, server: bool
    ) -> None:
        """Subscribe ``session`` to ``channels`` on the hub's initiative, telling the client
        with a ``subscribe`` push each (or an ``unsubscribe`` push with the error code).

        ``server``: the backend's grant (``POST /api/subscribe``); otherwise the token's ``subs``
        claim, whose channels its permissions must allow.
        """
        for channel in channels:
            if session.closed:
                return
            existing = session.subscriptions.get(channel)
            if existing is not None:
                existing.server = existing.server or server
                continue
            try:
                position = position_for(channel, since) if since is not None else None
                await session.transport.hub_subscribe(session, channel, position, server=server)
            except ClarionError as exc:
                if not session.closed and channel not in session.subscriptions:
                    session.transport.send_unsubscribe(channel, exc.code)
            except Exception:
                log.exception("subscribing %r to %s failed", session, channel)

    def subscribe_claimed(self, session: Session) -> None:
        """Subscribe what the token's ``subs`` claim lists (adapters call it once the
        connection can carry pushes)."""
        if session.credentials.subs:
            self.spawn(self.subscribe_for(session, session.credentials.subs, server=False))

    async def server_subscribe(
        self, channel: str, *, user: str | None, client: str | None, since: str | None = None
    ) -> None:
        """``POST /api/subscribe``: every live session of ``user`` (or the session ``client``),
        on every node, starts receiving ``channel`` (resuming from ``since`` if given)."""
        validate_channel(channel)
        if since is not None:
            position_for(channel, since)  # a bad cursor is the caller's error, answered now
        payload = {"user": user, "client": client, "channel": channel, "since": since}
        await self.engine.broadcast_control("subscribe", payload)

    async def server_unsubscribe(
        self, channel: str, *, user: str | None, client: str | None
    ) -> None:
        """``POST /api/unsubscribe``: those sessions stop receiving ``channel`` (reason
        ``server``), whoever subscribed it."""
        validate_channel(channel)
        payload = {"user": user, "client": client, "channel": channel}
        await self.engine.broadcast_control("unsubscribe", payload)

    def _reset_all(self, local: LocalChannel, reason: str, position: StreamPosition) -> None:
        cursor = encode_single(local.name, position.epoch, position.offset)
        for sub in local.subscriptions():
            self.stats.resets[reason] += 1
            sub.session.transport.send_reset(local.name, reason, cursor)
        local.all_live()

    def _recover(self, local: LocalChannel, pub: Publication) -> None:
        """Publications went missing between the engine and this node: read them back."""
        self._recovering[local.name] = [pub]
        self.spawn(self._recover_from_history(local), name=f"clarion-recover-{local.name}")

    async def _recover_from_history(self, local: LocalChannel) -> None:
        channel = local.name
        try:
            since = local.position
            history = None
            if since is not None:
                try:
                    history = await self.engine.history(channel, self.options(channel), since=since)
                except Exception:
                    log.warning("history read failed while recovering %s", channel, exc_info=True)
            if since is None or history is None or not history.covers(since):
                log.warning("could not recover %s from %s: resetting subscribers", channel, since)
                target = history.position if history is not None else since
                if target is not None:
                    self._reset_all(local, "lost", target)
                # After the reset the channel goes on live from its next publication; without a
                # position to compare with, that one is not taken for another gap.
                local.position = history.position if history is not None else None
            else:
                position = since
                for pub in history.publications:
                    if pub.offset > position.offset:
                        position = local.position = pub.position
                        self._deliver(local, pub)
        finally:
            buffered = self._recovering.pop(channel, [])
        for pub in sorted(buffered, key=lambda p: p.offset):
            if self.local.get(channel) is local:
                self.on_publication(pub)

    # ---- sessions ---------------------------------------------------------------------------

    def open_session(
        self, transport: Transport, credentials: Credentials, client_ip: str | None = None
    ) -> Session:
        """Register a new connection. Raises :class:`LimitExceeded` when a cap is reached."""
        limits = self.settings.limits
        if len(self.sessions) >= limits.max_connections:
            raise NodeFull("this node holds its maximum number of connections")
        self.check_revoked(credentials)
        if credentials.user is not None:
            held = self.by_user.get(credentials.user)
            if held is not None and len(held) >= limits.max_connections_per_user:
                raise LimitExceeded(
                    "too many connections for this user", code="too_many_connections"
                )
        session = Session(self, transport, credentials, client_ip)
        ip_key = session.ip_key
        if ip_key is not None and self.by_ip.get(ip_key, 0) >= limits.max_connections_per_ip:
            raise LimitExceeded(
                "too many connections from this address", code="too_many_connections"
            )
        self.sessions[session.id] = session
        if credentials.user is not None:
            self.by_user.setdefault(credentials.user, set()).add(session)
        if ip_key is not None:
            self.by_ip[ip_key] = self.by_ip.get(ip_key, 0) + 1
        if self.admission.shared is not None and transport.kind != "poll":
            self.spawn(self.admission.admit(session))
        if self._reports_lifecycle(session):
            self.emit("connect", self._session_info(session))
        return session

    def pending_key(self, client_ip: str | None) -> str | None:
        """What caps count a client address as (IPv6: its ``ipv6_prefix`` network)."""
        if client_ip is None:
            return None
        return address_key(client_ip, self.settings.limits.ipv6_prefix)

    def _reports_lifecycle(self, session: Session) -> bool:
        # A poll is a session per request: reporting each as connect/subscribe/disconnect
        # would flood lifecycle listeners (webhooks) with noise.
        return bool(self.lifecycle_listeners) and session.transport.kind != "poll"

    def _session_info(self, session: Session) -> dict[str, Any]:
        return {"client": session.id, "user": session.user, "transport": session.transport.kind}

    async def authenticate(self, credentials: Credentials, transport: str) -> Credentials:
        """The credentials a new session (or a new token) gets: the connect hook's say."""
        if self.hooks is None:
            return credentials
        return await self.hooks.connect(credentials, transport)

    async def authorize_read(
        self, credentials: Credentials, channel: str, transport: str, client: str | None = None
    ) -> None:
        """May these credentials read ``channel`` (subscribe, history, presence)?"""
        self.auth.check_subscribe(credentials, channel)
        if self.hooks is not None:
            await self.hooks.subscribe(credentials, channel, client, transport)

    def set_credentials(self, session: Session, credentials: Credentials) -> None:
        """Give ``session`` a new identity (the ``connect``/``refresh`` ops)."""
        self.check_revoked(credentials)
        old, new = session.user, credentials.user
        if new != old and new is not None:
            held = self.by_user.get(new)
            if held is not None and len(held) >= self.settings.limits.max_connections_per_user:
                raise LimitExceeded(
                    "too many connections for this user", code="too_many_connections"
                )
        if old is not None and old != new:
            held = self.by_user.get(old)
            if held is not None:
                held.discard(session)
                if not held:
                    del self.by_user[old]
        session.credentials = credentials
        if new is not None:
            self.by_user.setdefault(new, set()).add(session)
        self.recheck(session)

    def recheck(self, session: Session) -> list[str]:
        """End the subscriptions ``session``'s credentials no longer allow; returns them.

        Synchronous: once a new token is applied, nothing more of a channel it does not allow
        is delivered. Subscriptions the backend made are its own grant and are kept.
        """
        dropped = []
        for channel, sub in list(session.subscriptions.items()):
            if sub.server:
                continue
            try:
                self.auth.check_subscribe(session.credentials, channel)
            except ClarionError:
                self.drop(session, channel, "forbidden")
                dropped.append(channel)
        return dropped

    def drop(self, session: Session, channel: str, reason: str) -> bool:
        """End one subscription from the hub's side and tell the client why."""
        sub = session.subscriptions.pop(channel, None)
        if sub is None:
            return False
        self._detach(sub)
        if not session.subscriptions:
            session.idle_since = time.monotonic()
        try:
            session.transport.send_unsubscribe(channel, reason)
        except Exception:
            log.exception("unsubscribe push failed for %r", session)
        if self._reports_lifecycle(session):
            self.emit("unsubscribe", {**self._session_info(session), "channel": channel})
        self.spawn(self._leave_all(session, [channel]))
        return True

    def close_session(self, session: Session, code: int, reason: str | None = None) -> None:
        """End ``session``: stop deliveries now, tell the client, clean up presence later."""
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        ip = session.ip_key
        if ip is not None:
            left = self.by_ip.get(ip, 1) - 1
            if left > 0:
                self.by_ip[ip] = left
            else:
                self.by_ip.pop(ip, None)
        if session.user is not None:
            held = self.by_user.get(session.user)
            if held is not None:
                held.discard(session)
                if not held:
                    del self.by_user[session.user]
                    self.admission.forget_user(session.user)
        subs = list(session.subscriptions.values())
        session.subscriptions.clear()
        for sub in subs:
            self._detach(sub)
        if reason is None:
            reason = disconnect_for(code).reason
        try:
            session.transport.close(code, reason)
        except Exception:
            log.exception("transport close failed for %r", session)
        if self.admission.holds(session.id):
            self.spawn(self.admission.release(session.id))
        if self._reports_lifecycle(session):
            for sub in subs:
                self.emit("unsubscribe", {**self._session_info(session), "channel": sub.channel})
            self.emit("disconnect", {**self._session_info(session), "code": code})
        if subs:
            self.spawn(self._leave_all(session, [s.channel for s in subs]))

    def check_revoked(self, credentials: Credentials) -> None:
        if self.revocations.refused(credentials.user, credentials.token_id):
            raise Unauthorized("this user or token was revoked", code="revoked")

    def overflow(self, session: Session) -> None:
        """``session``'s send queue is full: conflate it, or close it with 4001 "slow".

        Conflation needs every channel of the session in a ``conflate`` namespace, and a
        transport that reports its backlog; otherwise the session is disconnected.
        """
        if session.closed or session.conflating:
            return
        subs = list(session.subscriptions.values())
        if (
            subs
            and isinstance(session.transport, Backlogged)
            and all(self.options(sub.channel).slow_consumer == "conflate" for sub in subs)
        ):
            session.conflating = True
            for sub in subs:
                local = self.local.get(sub.channel)
                if local is not None and local.remove(sub):
                    local.conflating[sub] = None
            self.stats.conflations += 1
            return
        self.stats.slow_disconnects += 1
        self.close_session(session, CloseCode.SLOW)

    def _end_conflation(self, session: Session, transport: Backlogged) -> None:
        """The backlog drained: send each channel's latest publication, then go live again."""
        if transport.backlog() > self.settings.limits.send_queue_bytes // 2:
            return
        session.conflating = False
        for sub in session.subscriptions.values():
            local = self.local.get(sub.channel)
            if local is None or sub not in local.conflating:
                continue
            latest = local.conflating.pop(sub)
            if latest is not None:
                sub.push(latest.encoded(sub.fmt, sub.fmt.encode))
            local.add_live(sub)
        transport.watch_overflow()

    def disconnect_local_user(
        self,
        user: str | None,
        code: int = CloseCode.DISCONNECTED,
        *,
        token_id: str | None = None,
        until: float | None = None,
    ) -> int:
        """Close a user's (or a token's) sessions on this node; refuse them until ``until``."""
        if until is not None:
            self.revocations.revoke(user=user, token_id=token_id, until=until)
        if user is not None:
            sessions = list(self.by_user.get(user, ()))
        else:
            sessions = [s for s in self.sessions.values() if s.credentials.token_id == token_id]
        for session in sessions:
            self.close_session(session, code)
        return len(sessions)

    async def disconnect_user(
        self,
        user: str | None,
        code: int = CloseCode.DISCONNECTED,
        *,
        token_id: str | None = None,
        until: float | None = None,
        exp: float | None = None,
    ) -> None:
        """Close the sessions of ``user`` (or of the token ``token_id``) on every node.

        With ``until`` (Unix time), their new connections are refused until then, on every node
        (including nodes started later) and across restarts: the engine keeps the revocation.
        A token revoked without ``until`` is refused until its ``exp`` (given, or at most
        ``revocation_ttl`` from now).
        """
        if until is None and token_id is not None:
            until = exp if exp is not None else time.time() + self.settings.revocation_ttl
        failure: ClarionError | None = None
        if until is not None and until > time.time():
            try:
                if user is not None:
                    await self.engine.revoke("user", user, until)
                if token_id is not None:
                    await self.engine.revoke("jti", token_id, until)
            except ClarionError as exc:
                failure = exc  # the sessions are still closed; the caller learns it did not last
        payload: dict[str, Any] = {"user": user, "code": code, "jti": token_id, "until": until}
        await self.engine.broadcast_control("disconnect", payload)
        if failure is not None:
            raise failure

    async def sync_revocations(self) -> None:
        """Take in every revocation the engine holds (those this node may have missed)."""
        self.revocations.expire()
        try:
            entries = await self.engine.revocations()
        except ClarionError as exc:
            log.warning("could not read revocations: %s", exc.message)
            return
        for kind, key, until in entries:
            if self.revocations.add(kind, key, until):  # missed: its sessions may still be open
                user, jti = (key, None) if kind == "user" else (None, key)
                self.disconnect_local_user(user, token_id=jti)

    async def _sync_revocations_forever(self) -> None:
        while True:
            await asyncio.sleep(REVOCATION_SYNC)
            try:
                await self.sync_revocations()
            except Exception:
                log.exception("revocation sync failed")

    # ---- subscriptions ----------------------------------------------------------------------

    async def _local_channel(self, channel: str) -> LocalChannel:
        while True:
            local = self.local.get(channel)
            if local is None:
                local = self.local[channel] = LocalChannel(channel)
                ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                local.ready = ready
                subscribed = False
                try:
                    await self.engine.subscribe(channel)
                    subscribed = True
                    # Where live delivery starts: from here the engine hands this node every
                    # later publication, in order, and none before. Subscribers whose history
                    # reads end further on wait for the channel to get there (``ahead``);
                    # the channel's position never jumps over publications still on their way.
                    start = await self.engine.history(channel, self.options(channel), limit=0)
                except BaseException as exc:
                    if self.local.get(channel) is local:
                        del self.local[channel]
                    if subscribed:
                        self.spawn(self._engine_unsubscribe(channel))
                    ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError())
                    ready.exception()  # retrieved: waiters re-raise it themselves
                    raise
                if local.position is None:
                    local.position = start.position
                local.ready = None
                ready.set_result(None)
                return local
            if local.ready is not None:
                await asyncio.shield(local.ready)
                continue
            return local

    async def subscribe(
        self,
        session: Session,
        channel: str,
        fmt: WireFormat,
        push: Push,
        *,
        since: str | StreamPosition | None = None,
        latest: bool = False,
        on_ready: Callable[[SubscribeResult], None] | None = None,
        target: Any = None,
        server: bool = False,
        checked: bool = False,
    ) -> SubscribeResult | None:
        """Subscribe ``session`` to ``channel``; ``None`` if it closed or unsubscribed meanwhile.

        ``latest`` (without ``since``, which wins): the newest stored publication is pushed
        right after ``on_ready``, before live ones. ``server``: the backend asked for it
        (``POST /api/subscribe``), so the token's permissions are not checked, and a later
        token does not end it. ``checked``: the adapter already authorized this read for the
        same request (:meth:`authorize_read`).
        """
        validate_channel(channel)
        if not server:
            self.auth.check_subscribe(session.credentials, channel)
        since_pos = position_for(channel, since)
        self._check_room(session, channel)
        if not server and not checked and self.hooks is not None:
            kind = session.transport.kind
            await self.hooks.subscribe(session.credentials, channel, session.id, kind)
            if session.closed:
                return None
            self._check_room(session, channel)  # the same channel may have come meanwhile
        options = self.options(channel)
        sub = Subscription(session, channel, fmt, push, target, server=server)
        session.subscriptions[channel] = sub
        session.idle_since = None
        try:
            local = await self._local_channel(channel)
        except BaseException:
            session.subscriptions.pop(channel, None)
            raise
        if session.subscriptions.get(channel) is not sub:  # closed or unsubscribed meanwhile
            self._release(local)
            return None
        # Buffer live publications before reading history, so none falls between the two.
        buffer: list[Publication] = []
        local.pending[sub] = buffer
        try:
            if since_pos is None and latest:
                # The stream's newest entry; its position is the channel's top, so live
                # publications buffered meanwhile follow it without a gap or a repeat.
                history = await self.engine.history(channel, options, limit=1, reverse=True)
            else:
                history = await self.engine.history(
                    channel, options, since=since_pos, limit=None if since_pos else 0
                )
        except BaseException:
            if session.subscriptions.get(channel) is sub:
                del session.subscriptions[channel]
            local.remove(sub)
            self._release(local)
            raise
        if local.pending.get(sub) is not buffer:  # detached meanwhile
            return None
        reason = None
        if since_pos is not None and not history.covers(since_pos):
            reason = reset_reason(history, since_pos)
        recovered = reason is None
        last = since_pos if (since_pos is not None and recovered) else history.position
        result = SubscribeResult(
            channel,
            history.position,
            encode_single(channel, history.position.epoch, history.position.offset),
            recovered=recovered,
            reset=reason,
        )
        # From here to add_live nothing awaits: history, buffered and live stay in order.
        if on_ready is not None:
            on_ready(result)
        if reason is not None:
            self.stats.resets[reason] += 1
            session.transport.send_reset(channel, reason, result.cursor)
        if (since_pos is not None and recovered) or (since_pos is None and latest):
            for pub in history.publications:
                push(pub.encoded(fmt, fmt.encode))
                last = pub.position
        for pub in buffer:
            if pub.epoch != last.epoch:
                self.stats.resets["epoch"] += 1
                cursor = encode_single(channel, pub.epoch, pub.offset - 1)
                session.transport.send_reset(channel, "epoch", cursor)
            elif pub.offset <= last.offset:
                continue
            push(pub.encoded(fmt, fmt.encode))
            last = pub.position
        del local.pending[sub]
        live = local.position
        if live is not None and live.epoch == last.epoch and live.offset < last.offset:
            # The subscriber already has publications this node has not delivered live yet
            # (pub/sub lags the history just read, or the client comes from a node that was
            # ahead): it goes live once the channel gets there, and gets nothing twice.
            local.ahead[sub] = last
        else:
            local.add_live(sub)
            if live is None:
                local.position = last
        if options.presence and session.transport.kind != "poll":
            self.spawn(self._join(session, channel))
        if self._reports_lifecycle(session):
            self.emit("subscribe", {**self._session_info(session), "channel": channel})
        return result

    def _check_room(self, session: Session, channel: str) -> None:
        if channel in session.subscriptions:
            raise BadRequest(f"already subscribed to {channel!r}", code="already_subscribed")
        if len(session.subscriptions) >= self.settings.limits.max_subscriptions_per_connection:
            raise LimitExceeded(
                "too many subscriptions on this connection", code="too_many_subscriptions"
            )

    def retarget(
        self, session: Session, channel: str, fmt: WireFormat, push: Push, target: Any = None
    ) -> bool:
        """Move a live subscription to another wire format (e.g. a faster path that became
        available once a response started). Synchronous: no publication falls in between."""
        sub = session.subscriptions.get(channel)
        local = self.local.get(channel)
        if sub is None or local is None or sub not in local.by_format.get(sub.fmt, ()):
            return False  # not live (still resuming, or conflating): leave it where it is
        local.remove(sub)
        sub.fmt, sub.push = fmt, push
        sub.target = push if target is None else target
        local.add_live(sub)
        return True

    def reformat(self, session: Session, channel: str, fmt: WireFormat, push: Push) -> bool:
        """Like :meth:`retarget`, also for a subscription that waits to go live (ahead of the
        channel, or conflating): it goes live in the new format. ``False`` while it resumes."""
        if self.retarget(session, channel, fmt, push):
            return True
        sub = session.subscriptions.get(channel)
        local = self.local.get(channel)
        if sub is None or local is None or (sub not in local.ahead and sub not in local.conflating):
            return False
        sub.fmt, sub.push, sub.target = fmt, push, push
        return True

    def delivered_position(self, session: Session, channel: str) -> StreamPosition | None:
        """The position of the last publication of ``channel`` pushed to ``session``."""
        sub = session.subscriptions.get(channel)
        local = self.local.get(channel)
        if sub is None or local is None or sub in local.pending:
            return None
        return local.ahead.get(sub) or local.position

    async def unsubscribe(self, session: Session, channel: str) -> bool:
        sub = session.subscriptions.pop(channel, None)
        if sub is None:
            return False
        self._detach(sub)
        if not session.subscriptions:
            session.idle_since = time.monotonic()
        if self._reports_lifecycle(session):
            self.emit("unsubscribe", {**self._session_info(session), "channel": channel})
        await self._leave(session, channel)
        return True

    def _detach(self, sub: Subscription) -> None:
        local = self.local.get(sub.channel)
        if local is not None and local.remove(sub):
            self._release(local)

    def _release(self, local: LocalChannel) -> None:
        if len(local) == 0 and local.ready is None and self.local.get(local.name) is local:
            del self.local[local.name]
            self.spawn(self._engine_unsubscribe(local.name))

    async def _engine_unsubscribe(self, channel: str) -> None:
        if channel not in self.local:
            await self.engine.unsubscribe(channel)

    def _presence_entry(self, session: Session) -> PresenceEntry:
        return PresenceEntry(
            session.id,
            session.user,
            session.credentials.info,
            session.transport.kind,
            session.client_ip,
        )

    async def _join(self, session: Session, channel: str) -> None:
        try:
            await self._join_now(session, channel)
        except ClarionError as exc:  # e.g. the engine is unreachable: the session goes on
            log.warning("presence join on %s failed: %s", channel, exc.message)

    async def _join_now(self, session: Session, channel: str) -> None:
        entry = self._presence_entry(session)
        await self.engine.presence_add(channel, entry)
        if self.lifecycle_listeners:
            self.emit("join", {"channel": channel, **entry.to_dict()})
        options = self.options(channel)
        mode = options.join_leave_mode
        if mode == "client":
            shown = entry.to_dict(info=options.presence_info)
            await self.engine.broadcast_event(channel, "join", {"channel": channel, **shown})
        elif mode == "user" and session.user is not None:
            pending = self._retiring.pop((channel, session.user), None)
            if pending is not None:
                pending.cancel()  # back within the grace: the leave check is moot
            if await self.engine.presence_announce(channel, session.user):
                event = self._user_event(channel, session, options)
                await self.engine.broadcast_event(channel, "join", event)
        if session.closed or channel not in session.subscriptions:
            await self._leave(session, channel)

    async def _leave(self, session: Session, channel: str) -> None:
        # A long poll subscribes only while it waits: in presence it would join and leave on
        # every poll, so it never joins.
        if not self.options(channel).presence or session.transport.kind == "poll":
            return
        await self.engine.presence_remove(channel, session.id)
        if self.lifecycle_listeners:
            self.emit("leave", {"channel": channel, **self._session_info(session)})
        options = self.options(channel)
        mode = options.join_leave_mode
        if mode == "client":
            shown = self._presence_entry(session).to_dict(info=options.presence_info)
            await self.engine.broadcast_event(channel, "leave", {"channel": channel, **shown})
        elif mode == "user" and session.user is not None and not self.closing:
            # The user leaves once none of its clients is back within the grace, on any node:
            # a reload or a reconnect storm sends neither leave nor join.
            key = (channel, session.user)
            pending = self._retiring.pop(key, None)
            if pending is not None:
                pending.cancel()
            event = self._user_event(channel, session, options)
            self._retiring[key] = self.spawn(
                self._retire_later(key, event, options.presence_grace), name="clarion-retire"
            )

    def _user_event(
        self, channel: str, session: Session, options: NamespaceOptions
    ) -> dict[str, Any]:
        event: dict[str, Any] = {"channel": channel, "user": session.user}
        if options.presence_info and session.credentials.info is not None:
            event["info"] = session.credentials.info
        return event

    async def _retire_later(
        self, key: tuple[str, str], event: dict[str, Any], grace: float
    ) -> None:
        channel, user = key
        try:
            await asyncio.sleep(grace)
            if self._retiring.get(key) is asyncio.current_task():
                del self._retiring[key]
            if await self.engine.presence_retire(channel, user):
                await self.engine.broadcast_event(channel, "leave", event)
        except ClarionError as exc:  # e.g. the engine is unreachable: no leave is sent
            log.warning("presence leave on %s failed: %s", channel, exc.message)

    async def _leave_all(self, session: Session, channels: list[str]) -> None:
        for channel in channels:
            try:
                await self._leave(session, channel)
            except ClarionError as exc:  # e.g. the engine is unreachable: entries expire
                log.warning("presence cleanup failed for %s: %s", channel, exc.message)
            except Exception:
                log.warning("presence cleanup failed for %s", channel, exc_info=True)

    # ---- timers -----------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.stats.roll(time.monotonic())
                self.tick(time.monotonic())
            except Exception:
                log.exception("session sweep failed")

    def tick(self, now: float) -> None:
        """Heartbeats, idle sessions and expired tokens, for every session at once."""
        limits = self.settings.limits
        wall = time.time()
        for session in list(self.sessions.values()):
            transport = session.transport
            if session.conflating and isinstance(transport, Backlogged):
                self._end_conflation(session, transport)
            silent = now - transport.last_activity
            if silent > limits.ping_interval + limits.pong_timeout:
                self.close_session(session, CloseCode.NO_PONG)
                continue
            if silent > limits.ping_interval and (
                session.pinged_at is None or now - session.pinged_at > limits.ping_interval
            ):
                session.pinged_at = now
                transport.ping()
            if (
                self.auth.enabled
                and session.user is None
                and not session.subscriptions
                and now - session.connected_at > limits.handshake_timeout
            ):
                self.close_session(session, CloseCode.HANDSHAKE_TIMEOUT)
                continue
            if session.idle_since is not None and now - session.idle_since > limits.idle_timeout:
                self.close_session(session, CloseCode.IDLE)
                continue
            expires = session.credentials.expires_at
            if expires is not None and wall > expires:
                self.close_session(session, CloseCode.TOKEN_EXPIRED)

    def metrics(self) -> bytes:
        return render(self.metrics_registry)

    def cursor_of(self, pub: Publication) -> str:
        return publication_cursor(pub)
