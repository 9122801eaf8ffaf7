"""Sessions: one client connection on any transport, with its identity and subscriptions."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from clarion.core.auth import Credentials
from clarion.core.fanout import Push, Subscription, WireFormat
from clarion.core.limits import Abuse, TokenBucket
from clarion.errors import LimitExceeded
from clarion.protocol.codes import CloseCode
from clarion.protocol.proxies import address_key
from clarion.protocol.publication import StreamPosition

if TYPE_CHECKING:
    from clarion.core.hub import Hub


class Transport(Protocol):
    """What an adapter provides for each connection. All calls are synchronous and cheap."""

    kind: str  # "ws", "sse", "poll", "stomp": the metrics label

    @property
    def last_activity(self) -> float:
        """``time.monotonic()`` of the last sign of life from the peer."""

    def ping(self) -> None:
        """Ask the peer for a sign of life (a WebSocket ping, a STOMP heart-beat...)."""

    def send_reset(self, channel: str, reason: str, cursor: str) -> None:
        """Tell the client it missed publications on ``channel`` that cannot be recovered."""

    def send_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        """A presence ``join``/``leave`` event."""

    def send_unsubscribe(self, channel: str, reason: str) -> None:
        """The hub ended the subscription to ``channel`` (it is already detached)."""

    async def hub_subscribe(
        self, session: Session, channel: str, since: StreamPosition | None, *, server: bool
    ) -> None:
        """Subscribe ``session`` to ``channel`` on the hub's initiative (the backend's
        ``POST /api/subscribe``, or the token's ``subs`` claim) in this transport's format, and
        push ``subscribe`` to the client once it is ready. The one coroutine of a transport."""

    def close(self, code: int, reason: str) -> None:
        """End the connection with a documented code; must be idempotent."""


@runtime_checkable
class Backlogged(Protocol):
    """A transport that can report its backlog, needed by the ``conflate`` slow-consumer policy."""

    def backlog(self) -> int:
        """Bytes queued for the peer and not yet written."""

    def watch_overflow(self) -> None:
        """Report the next overflow again (after a conflation ended)."""


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    channel: str
    position: StreamPosition
    cursor: str
    recovered: bool
    reset: str | None = None  # the reset reason when the history could not cover the gap

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channel": self.channel,
            "epoch": self.position.epoch,
            "offset": self.position.offset,
            "cursor": self.cursor,
            "recovered": self.recovered,
        }
        if self.reset is not None:
            out["reset"] = self.reset
        return out


def new_session_id() -> str:
    return os.urandom(9).hex()


class Session:
    """A connected client. Created by :meth:`Hub.open_session`, ended by :meth:`close`."""

    __slots__ = (
        "abuse",
        "client_ip",
        "closed",
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
        "subscriptions",
        "transport",
    )

    def __init__(
        self, hub: Hub, transport: Transport, credentials: Credentials, client_ip: str | None
    ) -> None:
        self.hub = hub
        self.id = new_session_id()
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
        self.pinged_at: float | None = None
        limits = hub.settings.limits
        self.publish_bucket = TokenBucket(limits.client_publish_rate, limits.client_publish_burst)
        # channel -> the bucket of its ephemeral publishes (made on the first one).
        self.signal_buckets: dict[str, TokenBucket] = {}
        self.abuse = Abuse()
        self.conflating = False

    @property
    def user(self) -> str | None:
        return self.credentials.user

    async def subscribe(
        self,
        channel: str,
        fmt: WireFormat,
        push: Push,
        *,
        since: str | StreamPosition | None = None,
        latest: bool = False,
        on_ready: Any = None,
        target: Any = None,
        server: bool = False,
        checked: bool = False,
    ) -> SubscribeResult | None:
        """Subscribe, resuming from ``since`` (a cursor token or position) when given.

        ``on_ready(result)`` runs after the subscription is attached and before the first
        publication is pushed, so an adapter can send its reply first. ``target`` is what the
        format's ``deliver`` loop gets for this subscriber (default: ``push``). Returns ``None``
        when the session closed or unsubscribed meanwhile. ``server``: the backend made this
        subscription, which its permissions decided (see :meth:`Hub.subscribe`). ``latest``:
        the newest stored publication first, unless ``since`` is given.
        """
        return await self.hub.subscribe(
            self,
            channel,
            fmt,
            push,
            since=since,
            latest=latest,
            on_ready=on_ready,
            target=target,
            server=server,
            checked=checked,
        )

    async def unsubscribe(self, channel: str) -> bool:
        return await self.hub.unsubscribe(self, channel)

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
        self.hub.auth.check_publish(self.credentials, channel)
        ephemeral = ephemeral or self.hub.options(channel).ephemeral
        if ephemeral:
            if not self.take_signal(channel):
                if self.abuse.strike():
                    self.close(CloseCode.ABUSE)
                raise LimitExceeded(
                    "sending live signals to this channel faster than limits.client_ephemeral_rate",
                    code="ephemeral_rate_limited",
                )
        elif not self.publish_bucket.take() or not await self.hub.admission.check_user_rate(self):
            if self.abuse.strike():
                self.close(CloseCode.ABUSE)
            raise LimitExceeded(
                "publishing faster than this connection's or user's rate", code="rate_limited"
            )
        hooks = self.hub.hooks
        if hooks is not None:
            amended = await hooks.publish(
                self.credentials, channel, data, self.id, self.transport.kind
            )
            if amended is not data and attrs and "encoding" in attrs:
                # The backend answered with data of its own: a JSON value, no longer the body.
                attrs = {k: v for k, v in attrs.items() if k not in ("encoding", "content_type")}
            data = amended
        return await self.hub.publish(
            channel,
            data,
            idempotency_key=idempotency_key,
            info=self.publisher_info(),
            idempotency_scope=self.idempotency_scope,
            attrs=attrs,
            ephemeral=ephemeral,
            key=key,
        )

    def take_signal(self, channel: str) -> bool:
        """One token of this connection's ephemeral budget for ``channel``."""
        bucket = self.signal_buckets.get(channel)
        if bucket is None:
            limits = self.hub.settings.limits
            buckets = self.signal_buckets
            if len(buckets) >= limits.max_subscriptions_per_connection:
                # Bounded like the subscriptions: the bucket unused longest goes first (a
                # second unused fills it again, so forgetting it gives little away).
                del buckets[min(buckets, key=lambda c: buckets[c].stamp)]
            bucket = buckets[channel] = TokenBucket(
                limits.client_ephemeral_rate, limits.client_ephemeral_burst
            )
        return bucket.take()

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

    def close(self, code: int, reason: str | None = None) -> None:
        self.hub.close_session(self, code, reason)

    def __repr__(self) -> str:
        return f"Session({self.id}, user={self.user!r}, {self.transport.kind})"
