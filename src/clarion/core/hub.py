"""The hub: the one object an application or adapter talks to.

:class:`Hub` is a façade over the core's parts, each in its own module:

- :mod:`~clarion.core.registry`: this node's sessions, the caps on them, revocations;
- :mod:`~clarion.core.session`: one client, and what it does (subscribe and resume, publish…);
- :mod:`~clarion.core.channels`: this node's channels, live delivery, gap recovery, conflation;
- :mod:`~clarion.core.resume`: the resume algorithm, pure;
- :mod:`~clarion.core.presence`: joins, leaves, the per-user grace;
- :mod:`~clarion.core.control`: node-wide commands and the subscriptions the hub makes;
- :mod:`~clarion.core.sweeper`: the timers (heartbeats, idle, expiry, revocation reads).

The hub itself holds what they share (settings, engine, auth, hooks, listeners, background
tasks), publishes, and reads history and presence.

Long on purpose: most methods are a façade's few lines handing over to the part that holds the
rule; the façade is what applications and adapters read, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from clarion.core import extension as ext
from clarion.core.admission import Admission
from clarion.core.auth import Authenticator, Credentials, auth_notes
from clarion.core.channels import LocalChannels
from clarion.core.control import Control
from clarion.core.fanout import Push, WireFormat, publication_cursor
from clarion.core.hooks import Hooks
from clarion.core.limits import Allowances, LogLimit
from clarion.core.metrics import Stats, make_registry, render
from clarion.core.nodes import NodeCollector, NodeReporter
from clarion.core.operator import OperatorAuth
from clarion.core.pages import ReadAllowance, page_budget, page_bytes, read_page
from clarion.core.presence import Roster
from clarion.core.registry import SessionRegistry
from clarion.core.resume import history_reset, position_for
from clarion.core.session import Session
from clarion.core.sweeper import Sweeper
from clarion.core.transport import Transport
from clarion.engines.base import Engine, History, PresenceEntry, PresenceStats, SharedLimits
from clarion.errors import BadRequest, ClarionError, NotFound, NotStarted, TooLarge
from clarion.protocol.channels import namespace_of, validate_channel
from clarion.protocol.codes import CloseCode
from clarion.protocol.publication import (
    MAX_KEY_CHARS,
    Publication,
    StreamPosition,
    payload_size,
)
from clarion.settings import NamespaceOptions, Settings

log = logging.getLogger("clarion.hub")
# Listeners run per publication and lifecycle event: a failing one logs once a minute per kind.
_listener_failures = LogLimit(log)


def _listener_failed(kind: str, exc: Exception) -> None:
    _listener_failures.log(
        logging.ERROR, f"{kind} {type(exc).__name__}", "%s listener failed", kind, exc_info=exc
    )


E = TypeVar("E")
MAX_UNSETTLED = 4096  # publications remembered for a repeat to settle (oldest forgotten)


class Hub:
    """A clarion hub, ready to serve or to mount inside a host application::

        hub = Hub(Settings())
        app = Starlette(lifespan=hub.lifespan)
        app.mount("/rt", hub.asgi_app())
        ...
        await hub.publish("chat:lobby", {"text": "hi"})

    ``extensions``: what to attach instead of the standard webhooks and HTTP hooks
    (:mod:`clarion.core.extension`); ``()`` makes a hub of the core alone.
    """

    # The engine's sink for publications: the channels' own methods, bound in ``__init__`` so
    # that the hot path has no call in between.
    on_publication: Callable[[Publication], None]
    on_ephemeral: Callable[[Publication], None]

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        engine: Engine | None = None,
        extensions: Iterable[ext.ExtensionFactory] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.engine: Engine = engine if engine is not None else ext.make_engine(self.settings)
        # Read on every publication: a settings field costs several plain attributes' reads.
        self.max_message_bytes = self.settings.limits.max_message_bytes
        # With the admin page, the API key also opens an operator session (its metrics channel).
        self.auth = (
            OperatorAuth(self.settings) if self.settings.admin else Authenticator(self.settings)
        )
        self.stats = Stats(self.settings.namespaces)
        limits = self.settings.limits
        # The bytes of stored publications each client is sent (history, resumes, polls).
        self.reads = ReadAllowance(limits.client_history_rate, limits.client_history_burst)
        # The subscriptions each client starts, across its connections and transports: each
        # may be a presence join and leave pushed to every reader of the channel's presence.
        self.subscribes = Allowances(limits.client_subscribe_rate, limits.subscribe_burst)
        # Each client's reads and token ops (history, presence, refresh) across its
        # connections and client API requests, besides each connection's own budget.
        self.commands = Allowances(limits.client_command_rate, limits.command_burst)
        # The channels each client's polls make the hub check (``GET /poll``).
        self.poll_checks = Allowances(limits.client_poll_check_rate, limits.poll_check_burst)
        # Set by the application layer when ``[hooks]`` are configured.
        self.hooks: Hooks | None = None
        self.admission = Admission(self)
        self.registry = SessionRegistry(self)
        self.local_channels = LocalChannels(self)
        self.roster = Roster(self)
        self.control = Control(self)
        self.sweeper = Sweeper(self)
        # The parts' shared state, under the names adapters and metrics read.
        self.sessions: dict[str, Session] = self.registry.sessions
        self.by_user = self.registry.by_user
        self.pending = self.registry.pending
        self.revocations = self.registry.revocations
        self.local = self.local_channels.local
        self.on_publication = self.local_channels.on_publication
        self.on_ephemeral = self.local_channels.on_ephemeral
        self.metrics_registry = make_registry(self)
        # This node's figures, announced to the others (``GET /api/info``, the admin page).
        self.nodes = NodeReporter(self, metrics_channel=self.settings.admin)
        self.metrics_registry.register(NodeCollector(self.nodes))
        self._app: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self.closing = False
        # Set by an extension while this hub must take no work (another process serves its
        # port with a hub of its own): every request and publish is refused with it.
        self.refusal: ClarionError | None = None
        # Called with every publication this node made (webhooks' outbox, for one); what a
        # listener returns, when awaitable, is awaited before the publish call answers.
        self.publish_listeners: list[Callable[[Publication], Awaitable[object] | None]] = []
        # Publications a listener refused to settle (the outbox could not store them): the
        # publisher was answered an error, and a repeat with the same id runs them again (on
        # the repeat's answer, which carries the data also once history let it go).
        self._unsettled: OrderedDict[tuple[str, str, int], bool] = OrderedDict()
        # Called with session lifecycle events: connect, disconnect, subscribe, unsubscribe.
        self.lifecycle_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        # Whether a listener wants the ``leave`` events of a channel: where they do, the nodes
        # look for the ended leases of clients whose node stopped without removing them.
        self.leaves_wanted: list[Callable[[str], bool]] = []
        factories = ext.standard() if extensions is None else extensions
        self.extensions: list[ext.Extension] = [make(self) for make in factories]

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
        await self.registry.sync_revocations()
        self.sweeper.start()
        self.roster.start()
        try:
            for extension in self.extensions:
                await extension.start()
        except BaseException:
            await self.close()
            raise
        self.nodes.start()
        log.info("hub started (engine=%s)", self.engine.name)
        for note in auth_notes(self.settings):  # embedded hubs say it too, not only the CLI
            log.warning(note)

    async def close(self, code: int = CloseCode.SHUTDOWN) -> None:
        """Close every session with ``code`` (default: reconnect elsewhere) and the engine."""
        # This node leaves the directory first: the others see it go at once.
        await self.nodes.close()
        if self._started:
            self.closing = True
            for session in list(self.sessions.values()):
                session.close(code)
            self.roster.stop()
            await self.sweeper.stop()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2.0)
            await self.roster.drain(timeout=2.0)  # the leaves those tasks queued
            self.local_channels.close()
            await self.engine.close()
            self._started = False
            log.info("hub closed")
        # After the sessions: their disconnect events still reach the webhook outbox.
        for extension in reversed(self.extensions):
            try:
                await extension.close()
            except Exception:  # the others still close (the webhook outbox among them)
                log.exception("closing %s failed", type(extension).__name__)

    def extension(self, kind: type[E]) -> E:
        """The hub's extension of type ``kind`` (e.g. its
        :class:`~clarion.webhooks.WebhookService`); :class:`NotFound` without one."""
        for extension in self.extensions:
            if isinstance(extension, kind):
                return extension
        raise NotFound(f"this hub has no {kind.__name__}")

    def check_started(self) -> None:
        """Refuse work for a hub never started, or one an extension stood down (``refusal``):
        it would be taken and never delivered live."""
        if not self._started and not self.closing:
            raise NotStarted()
        if self.refusal is not None:
            raise self.refusal

    def asgi_app(self) -> Any:
        """The ASGI application: HTTP API, ``/ws`` and the other transports (built once)."""
        if self._app is None:
            self._app = ext.load(ext.APP_BUILDER)(self)
        return self._app

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

    @property
    def publishes_inline(self) -> bool:
        """Whether the engine publishes without suspending (the memory engine): a publish call
        then completes in the caller's step unless a listener (the webhook outbox) makes it
        wait. Engines say so with a ``publishes_inline = True`` attribute."""
        return getattr(self.engine, "publishes_inline", False) is True

    async def standing(self, positions: Mapping[str, StreamPosition]) -> set[str]:
        """The channels whose read from their position would find nothing and no gap: a
        comparison each in process, one round trip for them all on Redis; read the others."""
        if not positions:
            return set()
        for channel in positions:
            validate_channel(channel)
        return await self.engine.standing(positions)

    def options(self, channel: str) -> NamespaceOptions:
        return self.settings.namespace(namespace_of(channel))

    # ---- publishing -------------------------------------------------------------------------

    def check_data(self, data: Any, attrs: dict[str, Any] | None = None) -> None:
        try:
            size = payload_size(data, attrs)
        except TypeError as exc:
            raise BadRequest(f"data is not JSON-serialisable: {exc}") from None
        if size > self.max_message_bytes:
            raise TooLarge(
                f"data is {size} bytes, over max_message_bytes ({self.max_message_bytes})",
                limit=self.max_message_bytes,  # what a client may cut its data to
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
        publisher: str | None = None,
    ) -> Publication:
        """Publish ``data`` to ``channel``; every subscriber on every node receives it.

        ``idempotency_scope`` is ``None`` for the backend (API and app code); client publishes
        pass their session's scope, so that no client can take a key the backend will use.
        ``ephemeral`` (or the namespace's ``ephemeral`` option): a live signal, see
        :meth:`publish_ephemeral`; ``key`` is an ephemeral publication's key, ``publisher``
        whose key it is (client publishes pass their session's scope; ``None``: the backend's).
        """
        if not self._started or self.refusal is not None:
            self.check_started()
        validate_channel(channel)
        self.check_data(data, attrs)
        options = self.options(channel)
        if ephemeral or options.ephemeral:
            if idempotency_key is not None:
                raise BadRequest("an ephemeral publication takes no id: it is never stored")
            return await self.publish_ephemeral(
                channel, data, info=info, attrs=attrs, key=key, publisher=publisher
            )
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
        # A repeat published nothing: listeners saw it the first time, unless they failed.
        if pub.repeated and not self._unsettled.pop((pub.channel, pub.epoch, pub.offset), False):
            return pub
        if self.publish_listeners:  # none: no coroutine to make and await per publication
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
        publisher: str | None = None,
    ) -> Publication:
        """A live signal: delivered to the channel's live subscribers on every node, never
        stored, no offset, no cursor, not sent to webhooks. When a subscriber's send queue has
        a backlog, only the latest signal per ``publisher`` and ``key`` waits in it."""
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_KEY_CHARS):
            raise BadRequest(f"key must be a string of 1 to {MAX_KEY_CHARS} characters")
        pub = Publication.signal(
            channel, data, int(time.time() * 1000), info, attrs, key, publisher
        )
        await self.engine.publish_ephemeral(pub)
        return pub

    async def _published(self, pub: Publication) -> None:
        """Tell the listeners; those that return an awaitable (a durable write: the webhook
        outbox) are waited for, so the publish call answers once they are done. One that
        fails with a :class:`ClarionError` (the outbox could not store) fails the call: the
        publisher must not be told a publication is safe when its webhooks are not."""
        waits = []
        refusal: ClarionError | None = None
        for listener in self.publish_listeners:
            try:
                result = listener(pub)
            except Exception as exc:
                _listener_failed("publish", exc)
            else:
                if result is not None:
                    waits.append(result)
        for wait in waits:
            try:
                await wait
            except ClarionError as exc:
                refusal = refusal or exc
            except Exception as exc:
                _listener_failed("publish", exc)
        if refusal is not None:
            self._unsettled[(pub.channel, pub.epoch, pub.offset)] = True
            while len(self._unsettled) > MAX_UNSETTLED:
                self._unsettled.popitem(last=False)
            raise refusal

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        """Report a lifecycle event to the listeners (never raises)."""
        for listener in self.lifecycle_listeners:
            try:
                listener(kind, payload)
            except Exception as exc:
                _listener_failed("lifecycle", exc)

    async def broadcast(self, channels: list[str], data: Any) -> list[Publication]:
        self.check_started()
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
        reader: Session | None = None,
        budget: int | None = None,
    ) -> tuple[History, str | None]:
        """A history read; also returns a reset reason when ``since`` cannot be covered.

        ``reverse``: newest first, older than ``since`` (see :meth:`Engine.history`); the
        reset reasons are then ``epoch`` and ``position`` only — reaching the oldest
        publication held is the end of the pages, not a gap. A page also stops at
        ``limits.send_queue_bytes`` (:mod:`~clarion.core.pages`): ``more`` and ``cursor`` say
        where the next one starts. A client's read (``reader``) stops at what its allowance
        has left, too (:class:`~clarion.core.pages.ReadAllowance`); ``budget``, at that
        many bytes (a part of a reply that its caller counts)."""
        validate_channel(channel)
        position = position_for(channel, since)
        cap = self.settings.limits.max_history_batch
        limit = cap if limit is None else min(limit, cap)
        page = page_budget(self.settings.limits.send_queue_bytes)
        budget = page if budget is None else min(budget, page)
        if reader is not None:
            budget = self.reads.reserve(reader.rate_key, budget)
        history = await read_page(
            self.engine,
            channel,
            self.options(channel),
            since=position,
            limit=limit,
            reverse=reverse,
            budget=budget,
            remote=not self.publishes_inline,
        )
        if reader is not None:
            self.reads.give_back(reader.rate_key, budget - page_bytes(history.publications))
        reason = history_reset(history, position, reverse)
        if reason is not None:
            self.stats.resets[reason] += 1
        return history, reason

    async def presence(self, channel: str, limit: int | None = None) -> list[PresenceEntry]:
        """At most ``limit`` entries (``None``: all, the server API's)."""
        validate_channel(channel)
        return await self.engine.presence(channel, limit)

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients and distinct users are present, without listing them."""
        validate_channel(channel)
        return await self.engine.presence_stats(channel)

    def channels(self) -> dict[str, int]:
        """Channels with subscribers on this node, with their subscriber counts."""
        return {name: len(local) for name, local in self.local_channels.local.items()}

    # ---- engine sink (``on_publication``, ``on_ephemeral``: bound in ``__init__``) ---------

    def on_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        self.roster.on_event(channel, kind, event)

    def on_presence_restored(self, channel: str, client: str) -> None:
        self.roster.restored(channel, client)

    def on_control(self, command: str, payload: dict[str, Any]) -> None:
        self.control.on_control(command, payload)

    # ---- sessions ---------------------------------------------------------------------------

    def open_session(
        self, transport: Transport, credentials: Credentials, client_ip: str | None = None
    ) -> Session:
        """Register a new connection. Raises :class:`LimitExceeded` when a cap is reached."""
        return self.registry.open(transport, credentials, client_ip)

    def pending_key(self, client_ip: str | None) -> str | None:
        """What caps count a client address as (IPv6: its ``ipv6_prefix`` network)."""
        return self.registry.pending_key(client_ip)

    async def authenticate(self, credentials: Credentials, transport: str) -> Credentials:
        """The credentials a new session (or a new token) gets: the connect hook's say."""
        if self.hooks is None:
            return credentials
        return await self.hooks.connect(credentials, transport)

    async def authorize_read(
        self,
        credentials: Credentials,
        channel: str,
        transport: str,
        client: str | None = None,
        *,
        act: str = "subscribe to",
    ) -> None:
        """May these credentials read ``channel`` (subscribe, history, presence)? ``act`` names
        the read in a refusal."""
        self.auth.check_subscribe(credentials, channel, act=act)
        if self.hooks is not None:
            await self.hooks.subscribe(credentials, channel, client, transport)

    def overflow(self, session: Session) -> None:
        """``session``'s send queue is full: conflate it, or close it with 4001 "slow"."""
        self.local_channels.overflow(session)

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
        await self.registry.disconnect_user(user, code, token_id=token_id, until=until, exp=exp)

    # ---- subscriptions ----------------------------------------------------------------------

    def retarget(
        self, session: Session, channel: str, fmt: WireFormat, push: Push, target: Any = None
    ) -> bool:
        """Move a live subscription to another wire format (e.g. a faster path that became
        available once a response started). Synchronous: no publication falls in between."""
        return self.local_channels.retarget(session, channel, fmt, push, target)

    def reformat(self, session: Session, channel: str, fmt: WireFormat, push: Push) -> bool:
        """Like :meth:`retarget`, also for a subscription that waits to go live (ahead of the
        channel, or conflating): it goes live in the new format. ``False`` while it resumes."""
        return self.local_channels.reformat(session, channel, fmt, push)

    def delivered_position(self, session: Session, channel: str) -> StreamPosition | None:
        """The position of the last publication of ``channel`` pushed to ``session``."""
        return self.local_channels.delivered_position(session, channel)

    def subscribe_claimed(self, session: Session) -> None:
        """Subscribe what the token's ``subs`` claim lists (adapters call it once the
        connection can carry pushes)."""
        self.control.subscribe_claimed(session)

    async def server_subscribe(
        self, channel: str, *, user: str | None, client: str | None, since: str | None = None
    ) -> None:
        """``POST /api/subscribe``: every live session of ``user`` (or the session ``client``),
        on every node, starts receiving ``channel`` (resuming from ``since`` if given)."""
        await self.control.server_subscribe(channel, user=user, client=client, since=since)

    async def server_unsubscribe(
        self, channel: str, *, user: str | None, client: str | None
    ) -> None:
        """``POST /api/unsubscribe``: those sessions stop receiving ``channel`` (reason
        ``server``), whoever subscribed it."""
        await self.control.server_unsubscribe(channel, user=user, client=client)

    # ---- metrics ----------------------------------------------------------------------------

    def metrics(self) -> bytes:
        return render(self.metrics_registry)

    def cursor_of(self, pub: Publication) -> str:
        return publication_cursor(pub)
