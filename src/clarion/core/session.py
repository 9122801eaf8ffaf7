"""Sessions: one client connection on any transport, with its identity and subscriptions.

A :class:`Session` owns what a client does — subscribe (with resume), unsubscribe, publish,
take a new token, close —; the hub's parts it calls hold what sessions share (the channels,
presence, the registry of sessions and its caps).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clarion.core.auth import Credentials
from clarion.core.fanout import Push, Subscription, WireFormat
from clarion.core.limits import Abuse, LogLimit, TokenBucket, principal
from clarion.core.pages import read_start, replay_budget
from clarion.core.resume import Reset, SubscribeResult, plan_resume, position_for
from clarion.core.transport import Transport
from clarion.errors import BadRequest, ClarionError, LimitExceeded
from clarion.protocol.channels import validate_channel
from clarion.protocol.codes import CloseCode, disconnect_for
from clarion.protocol.cursor import encode_single
from clarion.protocol.errors import ErrorCode
from clarion.protocol.proxies import address_key
from clarion.protocol.publication import Publication, StreamPosition

if TYPE_CHECKING:
    from clarion.core.hub import Hub

# A connection's live signals to all its channels together: as many as this many channels
# at the full rate of each (a cursor on a few boards at once). Without a total, a connection
# could send to any number of channels, and get a fresh burst on one by making the hub forget
# its bucket among a hundred others.
SIGNAL_CHANNELS = 4

log = logging.getLogger("clarion.hub")
# Failures a session's peer may cause once per session: one per kind a minute.
_failures = LogLimit(log)


def _failed(what: str, session: Session, exc: Exception) -> None:
    _failures.log(
        logging.ERROR,
        f"{what} {type(exc).__name__}",
        "%s failed for %r",
        what,
        session,
        exc_info=exc,
    )


class Session:
    """A connected client. Created by :meth:`Hub.open_session`, ended by :meth:`close`."""

    __slots__ = (
        "abuse",
        "began",
        "client_ip",
        "closed",
        "command_bucket",
        "conflating",
        "connected_at",
        "credentials",
        "hub",
        "id",
        "idle_since",
        "ip_key",
        "pinged_at",
        "publish_bucket",
        "signal_buckets",
        "signal_total",
        "subscriptions",
        "sweep_at",
        "transport",
    )

    def __init__(
        self, hub: Hub, transport: Transport, credentials: Credentials, client_ip: str | None
    ) -> None:
        self.hub = hub
        self.id = os.urandom(9).hex()
        self.transport = transport
        self.credentials = credentials
        self.client_ip = client_ip
        # What per-IP caps count this session as (an IPv6 client counts as its network).
        self.ip_key = (
            None if client_ip is None else address_key(client_ip, hub.settings.limits.ipv6_prefix)
        )
        self.subscriptions: dict[str, Subscription] = {}
        self.closed = False
        self.connected_at = time.monotonic()
        self.idle_since: float | None = self.connected_at
        # It subscribed once: past the handshake, whatever it holds now (idle_timeout then
        # decides about a session that holds nothing).
        self.began = False
        self.pinged_at: float | None = None
        limits = hub.settings.limits
        self.publish_bucket = TokenBucket(limits.client_publish_rate, limits.client_publish_burst)
        # Every op that costs the hub more than its reply (a subscription with its presence
        # join and leave, a history or presence read, a token check) spends from one budget:
        # without it, subscribe/unsubscribe churn floods every presence reader of a channel.
        self.command_bucket = TokenBucket(limits.client_command_rate, limits.command_burst)
        # channel -> the bucket of its ephemeral publishes, made when first needed: most
        # sessions never send a signal or get refused.
        self.signal_buckets: dict[str, TokenBucket] | None = None
        self.signal_total: TokenBucket | None = None  # all its channels together
        self.abuse: Abuse | None = None
        self.conflating = False
        self.sweep_at = math.inf  # when the hub's sweep looks at this session next

    @property
    def user(self) -> str | None:
        return self.credentials.user

    @property
    def rate_key(self) -> str:
        """Whom budgets kept across connections and requests count this session as: its
        user, or its address without one."""
        return principal(self.credentials.user, self.ip_key)

    def info(self) -> dict[str, Any]:
        """The session as lifecycle events describe it."""
        return {"client": self.id, "user": self.user, "transport": self.transport.kind}

    def reports_lifecycle(self) -> bool:
        # A poll is a session per request: reporting each as connect/subscribe/disconnect
        # would flood lifecycle listeners (webhooks) with noise.
        return bool(self.hub.lifecycle_listeners) and self.transport.kind != "poll"

    # ---- subscriptions ----------------------------------------------------------------------

    async def subscribe(
        self,
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
        prepaid: bool = False,
    ) -> SubscribeResult | None:
        """Subscribe, resuming from ``since`` (a cursor token or position) when given.

        ``on_ready(result)`` runs after the subscription is attached and before the first
        publication is pushed, so an adapter can send its reply first. ``target`` is what the
        format's ``deliver`` loop gets for this subscriber (default: ``push``). Returns ``None``
        when the session closed or unsubscribed meanwhile.

        ``latest`` (without ``since``, which wins): the newest stored publication is pushed
        right after ``on_ready``, before live ones. ``server``: the backend asked for it
        (``POST /api/subscribe``), so the token's permissions are not checked, and a later
        token does not end it. ``checked``: the adapter already authorized this read for the
        same request (:meth:`Hub.authorize_read`). ``prepaid``: the adapter took it from the
        client's allowance with its request's others (:meth:`take_subscriptions`).
        """
        hub = self.hub
        validate_channel(channel)
        if not server:
            hub.auth.check_subscribe(self.credentials, channel)
        since_pos = position_for(channel, since)
        self._check_room(channel)
        # Not a long poll's: a read for one request (its joins count in Roster.hold_poll).
        if not server and not prepaid and self.transport.kind != "poll":
            self.take_subscriptions(1)
        if not server and not checked and hub.hooks is not None:
            await hub.hooks.subscribe(self.credentials, channel, self.id, self.transport.kind)
            if self.closed:
                return None
            self._check_room(channel)  # the same channel may have come meanwhile
        if self.closed:  # e.g. the second channel of a request, closed during the first's
            return None
        options = hub.options(channel)
        channels = hub.local_channels
        sub = Subscription(self, channel, fmt, push, target, server=server)
        self._hold(channel, sub)
        self.idle_since = None
        self.began = True
        try:
            local = await channels.acquire(channel)
        except BaseException:
            self._let_go(channel)
            raise
        if self.subscriptions.get(channel) is not sub:  # closed or unsubscribed meanwhile
            channels.release(local)
            return None
        # Buffer live publications before reading history, so none falls between the two.
        buffer: list[Publication] = []
        local.pending[sub] = buffer
        full = replay_budget(hub.settings.limits.send_queue_bytes, 0)
        allowance = hub.reads.budget(self.rate_key, full) if since_pos is not None else full
        try:
            # A long poll subscribes after finding nothing: on Redis a look costs less than a read.
            looked = self.transport.kind == "poll" and not hub.publishes_inline
            history, paged = await read_start(
                hub.engine, channel, options, since_pos, latest, allowance, full, looked
            )
        except BaseException:
            if self.subscriptions.get(channel) is sub:
                self._let_go(channel)
            local.remove(sub)
            channels.release(local)
            raise
        if local.pending.get(sub) is not buffer:  # detached meanwhile
            return None
        channels.confirm(local, history.position)
        # From here to go_live nothing awaits: history, buffered and live stay in order.
        # The replay takes what the send budget has left: a forged cursor at offset 0 must
        # not queue the whole history for a peer that does not read.
        # A transport that reports its backlog (Backlogged), found without isinstance: that
        # costs microseconds against a runtime-checkable protocol, on every subscribe.
        backlog = getattr(self.transport, "backlog", None)
        queued: int = backlog() if backlog is not None else 0
        budget = replay_budget(hub.settings.limits.send_queue_bytes, queued)
        overhead = getattr(self.transport, "frame_overhead", 0)  # (an SSE stream's id lines)
        if history.publications:  # and the client's own allowance, across its connections
            budget = hub.reads.budget(self.rate_key, budget)
        plan = plan_resume(channel, history, since_pos, latest, buffer, budget, overhead, paged)
        if plan.replayed:
            hub.reads.spend(self.rate_key, plan.replayed)
        top = history.position
        result = SubscribeResult(
            channel,
            top,
            encode_single(channel, top.epoch, top.offset),
            recovered=plan.recovered,
            reset=plan.reset,
            start=plan.start,
        )
        if on_ready is not None:
            on_ready(result)
        for item in plan.sends:
            if isinstance(item, Reset):
                hub.stats.resets[item.reason] += 1
                self.transport.send_reset(channel, item.reason, item.cursor)
            else:
                push(item.encoded(fmt, fmt.encode))
        if plan.cut:
            # More than the budget is missed: what fits goes out, then the slow-consumer
            # close; the client resumes from the last publication it got, a page further on.
            # The transports keep a queue within budget for this close.
            hub.stats.slow_disconnects += 1
            self.close(CloseCode.SLOW)
            return None
        del local.pending[sub]
        channels.go_live(local, sub, plan.last)
        if self.reports_lifecycle():
            hub.emit("subscribe", {**self.info(), "channel": channel})
        if options.presence and self.transport.kind != "poll":
            # Awaited, not spawned: the connection's next command waits for it, so subscribe
            # churn cannot pile up presence work.
            await hub.roster.join(self, sub)
        return result

    def _hold(self, channel: str, sub: Subscription) -> None:
        """``sub`` is this session's subscription to ``channel`` (counted for the metrics)."""
        self.subscriptions[channel] = sub
        self.hub.registry.subscriptions[self.transport.kind] += 1

    def _let_go(self, channel: str) -> Subscription | None:
        """This session no longer holds its subscription to ``channel``; returns it, if any."""
        sub = self.subscriptions.pop(channel, None)
        if sub is not None:
            self.hub.registry.subscriptions[self.transport.kind] -= 1
        return sub

    def _check_room(self, channel: str) -> None:
        if channel in self.subscriptions:
            raise BadRequest(
                f"already subscribed to {channel!r}", code=ErrorCode.ALREADY_SUBSCRIBED
            )
        if len(self.subscriptions) >= self.hub.settings.limits.max_subscriptions_per_connection:
            raise LimitExceeded(
                "too many subscriptions on this connection", code=ErrorCode.TOO_MANY_SUBSCRIPTIONS
            )

    async def unsubscribe(self, channel: str) -> bool:
        """The client ends its subscription to ``channel``; ``False`` if it had none."""
        sub = self._end(channel)
        if sub is None:
            return False
        await self.hub.roster.leave(self, sub)
        return True

    def drop(self, channel: str, reason: str) -> bool:
        """End one subscription from the hub's side and tell the client why."""
        sub = self._end(channel, reason)
        if sub is None:
            return False
        self.hub.spawn(self.hub.roster.leave_all(self, [sub]))
        return True

    def _end(self, channel: str, reason: str | None = None) -> Subscription | None:
        sub = self._let_go(channel)
        if sub is None:
            return None
        self.hub.local_channels.detach(sub)
        if not self.subscriptions:
            self.idle_since = time.monotonic()
            self.hub.sweeper.watch(self)  # idle (or unauthenticated) from now: perhaps sooner
        if reason is not None:
            try:
                self.transport.send_unsubscribe(channel, reason)
            except Exception as exc:
                _failed("unsubscribe push", self, exc)
        if self.reports_lifecycle():
            self.hub.emit("unsubscribe", {**self.info(), "channel": channel})
        return sub

    def set_credentials(self, credentials: Credentials) -> None:
        """Take a new identity (the ``connect``/``refresh`` ops)."""
        self.hub.registry.rename(self, credentials)
        self.hub.sweeper.watch(self, token=True)
        self.recheck()

    def recheck(self) -> list[str]:
        """End the subscriptions the credentials no longer allow; returns them.

        Synchronous: once a new token is applied, nothing more of a channel it does not allow
        is delivered. Subscriptions the backend made are its own grant and are kept.
        """
        dropped = []
        for channel, sub in list(self.subscriptions.items()):
            if sub.server:
                continue
            try:
                self.hub.auth.check_subscribe(self.credentials, channel)
            except ClarionError:
                self.drop(channel, "forbidden")
                dropped.append(channel)
        return dropped

    # ---- publishing -------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        idempotency_key: str | None = None,
        attrs: dict[str, Any] | None = None,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> Any:
        hub = self.hub
        hub.auth.check_publish(self.credentials, channel)
        ephemeral = ephemeral or hub.options(channel).ephemeral
        if ephemeral:
            if not self.take_signal(channel):
                self._strike()
                raise LimitExceeded(
                    "sending live signals to this channel faster than limits.client_ephemeral_rate",
                    code=ErrorCode.EPHEMERAL_RATE_LIMITED,
                )
        elif not self.publish_bucket.take() or not await hub.admission.check_user_rate(self):
            self._strike()
            raise LimitExceeded(
                "publishing faster than this connection's or user's rate",
                code=ErrorCode.RATE_LIMITED,
            )
        hooks = hub.hooks
        if hooks is not None:
            amended = await hooks.publish(
                self.credentials, channel, data, self.id, self.transport.kind
            )
            if amended is not data and attrs and "encoding" in attrs:
                # The backend answered with data of its own: a JSON value, no longer the body.
                attrs = {k: v for k, v in attrs.items() if k not in ("encoding", "content_type")}
            data = amended
        return await hub.publish(
            channel,
            data,
            idempotency_key=idempotency_key,
            info=self.publisher_info(),
            idempotency_scope=self.idempotency_scope,
            attrs=attrs,
            ephemeral=ephemeral,
            key=key,
            publisher=self.idempotency_scope,  # a signal's key is its user's (session's)
        )

    def take_command(self, op: str) -> None:
        """One token of this connection's command budget for ``op``, or ``rate_limited``
        (counted as a refusal towards closing the session with 4505, as publish floods are).

        A read or token op (history, presence, refresh, a further connect) also takes one of
        its user's (address's), across its connections and client API requests, without a
        strike: each new connection has a full budget of its own. Subscriptions have their
        own allowance (:meth:`take_subscriptions`); a first ``connect`` is the connection's.
        """
        if op not in ("subscribe", "SUBSCRIBE") and (op != "connect" or self.user is not None):
            why = f"{op} refused: this user's (address's) ops are over limits.client_command_rate"
            self.hub.commands.require(self.rate_key, 1, why)
        if not self.command_bucket.take():
            self._strike()
            raise LimitExceeded(
                f"{op} refused: sending subscribe, history, presence or token ops "
                "faster than limits.client_command_rate",
                code=ErrorCode.RATE_LIMITED,
            )

    def take_subscriptions(self, count: int) -> None:
        """``count`` subscriptions from what this session's user (address) may start on this
        node, across its connections, or ``rate_limited`` with ``retry_after`` (whole seconds).

        Each may be a presence join and leave pushed to every reader of the channel, one
        user's other connections among them; a connection's own budget comes back with each
        new one. No strike towards 4505: tabs resubscribing after a restart are no abuse.
        """
        self.hub.subscribes.require(self.rate_key, count, "over limits.client_subscribe_rate")

    def _strike(self) -> None:
        """One refusal; persistent abuse closes the session."""
        abuse = self.abuse
        if abuse is None:
            abuse = self.abuse = Abuse()
        if abuse.strike():
            self.close(CloseCode.ABUSE)

    def take_signal(self, channel: str) -> bool:
        """One token of this connection's ephemeral budget for ``channel``."""
        buckets = self.signal_buckets
        if buckets is None:
            buckets = self.signal_buckets = {}
            limits = self.hub.settings.limits
            self.signal_total = TokenBucket(
                limits.client_ephemeral_rate * SIGNAL_CHANNELS,
                limits.client_ephemeral_burst * SIGNAL_CHANNELS,
            )
        bucket = buckets.get(channel)
        if bucket is None:
            limits = self.hub.settings.limits
            if len(buckets) >= limits.max_subscriptions_per_connection:
                # Bounded like the subscriptions: the bucket unused longest goes first. It
                # comes back full, which the total below keeps from being a way round the rate.
                del buckets[min(buckets, key=lambda c: buckets[c].stamp)]
            bucket = buckets[channel] = TokenBucket(
                limits.client_ephemeral_rate, limits.client_ephemeral_burst
            )
        total = self.signal_total
        assert total is not None
        return bucket.take() and total.take()

    @property
    def idempotency_scope(self) -> str:
        """Where this session's publish keys live: its user's space (every connection of the
        user, on every node, shares it), or its own for a session without a user."""
        user = self.credentials.user
        return f"user:{user}" if user is not None else f"session:{self.id}"

    def publisher_info(self) -> dict[str, Any] | None:
        if self.credentials.user is None and self.credentials.info is None:
            return None
        info: dict[str, Any] = {"client": self.id}
        if self.credentials.user is not None:
            info["user"] = self.credentials.user
        if self.credentials.info is not None:
            info["info"] = self.credentials.info
        return info

    # ---- the end --------------------------------------------------------------------------

    def close(self, code: int, reason: str | None = None) -> None:
        """End the session: stop deliveries now, tell the client, clean up presence later."""
        if self.closed:
            return
        self.closed = True
        hub = self.hub
        hub.registry.forget(self)
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        hub.registry.subscriptions[self.transport.kind] -= len(subs)
        detach = hub.local_channels.detach
        for sub in subs:
            detach(sub)
        if reason is None:
            reason = disconnect_for(code).reason
        try:
            self.transport.close(code, reason)
        except Exception as exc:
            _failed("transport close", self, exc)
        if hub.admission.holds(self.id):
            hub.spawn(hub.admission.release(self.id))
        if self.reports_lifecycle():
            for sub in subs:
                hub.emit("unsubscribe", {**self.info(), "channel": sub.channel})
            hub.emit("disconnect", {**self.info(), "code": code})
        if subs:
            hub.spawn(hub.roster.leave_all(self, subs))

    def __repr__(self) -> str:
        return f"Session({self.id}, user={self.user!r}, {self.transport.kind})"
