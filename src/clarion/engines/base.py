"""The engine interface every engine implements, and the values it trades in.

An engine owns the truth about channels: it assigns ``(epoch, offset)`` atomically with the
history write, answers history reads, keeps presence, and hands every publication of a channel
this node subscribed to back to the hub through :class:`EngineSink` — including the node's own
publications, so a single code path delivers everything.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from clarion.protocol.publication import Publication, StreamPosition
from clarion.settings import NamespaceOptions, Settings

if TYPE_CHECKING:
    from clarion.webhooks.outbox import Outbox

# Where a node's last read of the engine's revocations left off: opaque to the hub. It names
# the engine's set of revocations too, so a set that was lost and started again is read whole.
RevocationMark = str

# Seconds an engine keeps the epoch of a channel that was read but never published to. Reading
# costs nothing and names are free, so such state must not last the day a written channel's
# meta does (``history_meta_ttl``); a publication within it continues the epoch its readers
# were given, one after it starts a new epoch (a reset for them, never a silent loss).
UNWRITTEN_TTL = 120.0


class Hold(enum.IntEnum):
    """What :meth:`Engine.presence_hold` did."""

    RENEWED = 0  # the entry was there: its lease runs from now
    ADDED = 1  # it was not, and is now: its join is due
    ABSENT = 2  # it was not, and ``create`` was false: nothing changed
    TAKEN = 3  # the client id names another user's entry, or a connection's: nothing changed


@dataclass(frozen=True, slots=True)
class History:
    """A history read: ``publications`` after the requested position, oldest first.

    ``position`` is the channel's latest position; ``earliest`` the lowest offset still held
    (``position.offset + 1`` when nothing is held). A reader at offset ``n`` of this epoch can
    resume without a gap exactly when ``n >= earliest - 1``.
    """

    publications: list[Publication]
    position: StreamPosition
    earliest: int

    def covers(self, since: StreamPosition) -> bool:
        return (
            since.epoch == self.position.epoch
            and self.earliest - 1 <= since.offset <= self.position.offset
        )


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    client: str
    user: str | None
    info: dict[str, Any] | None = field(default=None)
    transport: str = "ws"
    # The client's network address (behind trusted proxies, the real client's): shown to the
    # server API only, never to other clients.
    address: str | None = field(default=None)

    def to_dict(self, *, address: bool = False, info: bool = True) -> dict[str, Any]:
        """The entry as the server API sees it; ``address=True`` adds the address, ``info=False``
        leaves out the token's ``info`` (for clients, unless the namespace shares it)."""
        out: dict[str, Any] = {
            "client": self.client,
            "user": self.user,
            "transport": self.transport,
        }
        if info and self.info is not None:
            out["info"] = self.info
        if address and self.address is not None:
            out["address"] = self.address
        return out


def presence_body(
    entries: list[PresenceEntry], *, info: bool, address: bool = False, limit: int | None = None
) -> dict[str, Any]:
    """A presence reply: ``clients``, one entry per client, and ``users``, one per user with its
    clients (tabs, devices) and the union of their ``info`` (when ``info``); clients without a
    user are listed under ``clients`` only, and counted in ``anonymous``.

    ``limit``: at most that many clients, and the users and anonymous ones among them, with
    ``"truncated": true`` when there were more. A client's reply is bounded so (a channel of
    ten thousand clients made each reply half a megabyte of a client's asking); the server
    API's is not."""
    truncated = limit is not None and len(entries) > limit
    if truncated:
        entries = entries[:limit]
    users: dict[str, dict[str, Any]] = {}
    anonymous = 0
    for entry in entries:
        if entry.user is None:
            anonymous += 1
            continue
        user = users.get(entry.user)
        if user is None:
            user = users[entry.user] = {"user": entry.user, "clients": []}
        user["clients"].append(entry.client)
        if info and entry.info is not None:
            user.setdefault("info", {}).update(entry.info)
    body = {
        "clients": [e.to_dict(address=address, info=info) for e in entries],
        "users": list(users.values()),
        "anonymous": anonymous,
    }
    if truncated:
        body["truncated"] = True
    return body


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """How many clients are present on a channel, and how many distinct users they are
    (clients without a user count as clients only)."""

    clients: int
    users: int

    def to_dict(self) -> dict[str, int]:
        return {"clients": self.clients, "users": self.users}


class EngineSink(Protocol):
    """The hub's side: called by the engine, on the event loop, never concurrently."""

    def on_publication(self, pub: Publication) -> None: ...

    def on_ephemeral(self, pub: Publication) -> None:
        """An ephemeral publication (:meth:`Engine.publish_ephemeral`) for this node."""

    def on_event(self, channel: str, kind: str, event: dict[str, Any]) -> None:
        """A non-history event for a channel (presence ``join``/``leave``)."""

    def on_control(self, command: str, payload: dict[str, Any]) -> None:
        """A node-wide command from another node (e.g. disconnect a user)."""

    def on_presence_restored(self, channel: str, client: str) -> None:
        """This node's presence entry of ``client`` on ``channel`` was missing from the engine
        (lost, or taken out as lapsed, its leave sent) and was added again."""


class Engine(Protocol):
    name: str

    async def start(self, sink: EngineSink) -> None: ...

    async def close(self) -> None: ...

    async def publish(
        self,
        channel: str,
        data: Any,
        options: NamespaceOptions,
        *,
        idempotency_key: str | None = None,
        info: dict[str, Any] | None = None,
        idempotency_scope: str | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> Publication:
        """Append to the channel's history and deliver to every subscribed node.

        With an ``idempotency_key`` seen on this channel within the namespace's window, nothing
        is published and the earlier publication is returned, marked ``repeated``. Keys live in
        separate spaces: ``idempotency_scope`` ``None`` is the backend's, any other value one
        client's (see :attr:`Session.idempotency_scope`); a key never answers for another space.
        ``attrs`` are the publication's attributes
        (:data:`~clarion.protocol.publication.ATTRIBUTES`), kept with it in history.
        """

    async def publish_ephemeral(self, pub: Publication) -> None:
        """Hand the ephemeral publication ``pub`` to every node subscribed to its channel (this
        one included): nothing is stored and no offset is taken. At most once, like the live
        delivery it is."""

    async def history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> History:
        """Publications after ``since`` (all held ones when ``None``), at most ``limit``.

        ``reverse``: newest first, and ``since`` is where to page back from — the publications
        older than it (offsets below ``since.offset``; from the newest when ``None``; none of
        another epoch), the ``limit`` newest of them.
        """

    async def standing(self, positions: Mapping[str, StreamPosition]) -> set[str]:
        """The channels of ``positions`` where a client's read from its position would find
        nothing and no reset due — what :meth:`history` would say, for all of a wide poll's
        channels at once: comparisons in process, one round trip on Redis. A channel left out
        may still have nothing: its caller reads it."""

    async def subscribe(self, channel: str) -> StreamPosition | None:
        """Start receiving the channel's publications on this node; the channel's position
        once subscribed, where subscribing read it (``None``: the caller reads it)."""

    async def unsubscribe(self, channel: str) -> None: ...

    async def broadcast_event(self, channel: str, kind: str, event: dict[str, Any]) -> None: ...

    async def broadcast_control(self, command: str, payload: dict[str, Any]) -> None: ...

    async def presence_add(self, channel: str, entry: PresenceEntry) -> None: ...

    async def presence_remove(self, channel: str, client: str) -> None: ...

    async def presence(self, channel: str, limit: int | None = None) -> list[PresenceEntry]:
        """The channel's entries, at most ``limit`` (``None``: all). A bounded read costs the
        engine no more than the entries it returns: a client's reply is cut to a limit, and a
        channel of tens of thousands must not cost each such read all of them."""

    async def presence_stats(self, channel: str) -> PresenceStats:
        """The counts of :meth:`presence` without listing anyone: O(1) or one round trip."""

    async def presence_hold(
        self, channel: str, entry: PresenceEntry, lease: float, *, create: bool
    ) -> Hold:
        """Hold ``entry`` for ``lease`` seconds from now: the entry of a client that keeps no
        connection (a long-poll client), which ends when its lease does unless held again, on
        any node. Renews it when it is there; adds it when not, if ``create``. Never takes over
        an entry of another user's (without a user: one held from another address, as
        :meth:`presence_release`), or one a connection holds."""

    async def presence_release(self, channel: str, entry: PresenceEntry) -> PresenceEntry | None:
        """Take out the entry a long-poll client's polls hold under ``entry.client``, at the
        client's word that it left: only when it is ``entry.user``'s (never another user's, nor
        a connection's), and, without a user, held from ``entry.address`` (ids are shown in
        presence). The entry taken out, to one caller only; ``None`` when there was none."""

    async def presence_lapsed(self, channel: str) -> list[PresenceEntry]:
        """Take out the entries of ``channel`` whose lease has ended; each entry is returned
        to one caller only, on any node (its ``leave`` is sent once)."""

    async def presence_orphaned(self) -> list[tuple[str, list[PresenceEntry]]]:
        """Take out the ended entries of channels where no lease lives any more, however few
        nodes subscribe to them (those that held the entries stopped without removing them):
        per channel, those taken out, each returned to one caller only. Empty for an engine
        whose entries end with their node (``node_leases`` false)."""

    # Whether a connection's entry outlives a node that stops without removing it, until its
    # lease ends (Redis): then the nodes with subscribers on a channel look for ended leases
    # there. Otherwise only long-poll clients' entries lapse, and the node that held one last
    # looks for it.
    node_leases: bool

    @property
    def lapse_interval(self) -> float:
        """Seconds between two calls of :meth:`presence_lapsed` per channel."""

    async def presence_announce(self, channel: str, user: str) -> bool:
        """Mark ``user`` as announced on ``channel``; ``True`` when it was not (a ``join`` is
        due), on whichever node asks first."""

    async def presence_retire(self, channel: str, user: str) -> bool:
        """Unmark ``user`` when none of its clients is present any more; ``True`` when this
        call did (a ``leave`` is due), on whichever node asks first."""

    async def revoke(self, kind: str, key: str, until: float) -> None:
        """Refuse the user (``kind`` ``"user"``) or token id (``"jti"``) ``key`` until ``until``
        (Unix time) on every node, including nodes started later; kept past a restart."""

    async def revocations(
        self, since: RevocationMark | None = None
    ) -> tuple[RevocationMark, list[tuple[str, str, float]]]:
        """The revocations still in force, ``(kind, key, until)``, that were made or extended
        after the mark ``since`` — every one without a mark, or when the engine's revocations
        were lost or replaced since — and the mark to pass next time."""

    async def healthy(self) -> bool: ...


@runtime_checkable
class SharedLimits(Protocol):
    """Counts shared by every node (an engine's ``limits`` attribute, when it has one)."""

    async def acquire_connection(self, kind: str, key: str, member: str, limit: int) -> bool:
        """Count ``member`` under ``kind``/``key`` unless ``limit`` is reached."""

    async def release_connection(self, kind: str, key: str, member: str) -> None: ...

    async def take_token(self, key: str, rate: float, burst: int) -> bool:
        """One token from the shared bucket ``key``."""


@runtime_checkable
class WebhookStorage(Protocol):
    """An engine that keeps the webhook outbox of its hubs (the memory engine in ``data_dir``,
    the Redis engine in Redis, shared by every node)."""

    def webhook_outbox(self, settings: Settings) -> Outbox:
        """A new, unopened outbox for a hub with these settings."""


# Each node announces itself once a second; a record this old means the node stopped (killed,
# or its machine lost) rather than running late.
ANNOUNCE_INTERVAL = 1.0
GONE_AFTER = 3 * ANNOUNCE_INTERVAL + 2.0


@runtime_checkable
class NodeDirectory(Protocol):
    """Where the hub nodes sharing an engine announce themselves (``GET /api/info``).

    A record is a JSON object of the node's figures; the directory keeps each node's last one
    with the time it was announced, and forgets a node some minutes after it went quiet, so that
    a node that stopped announcing can be shown as gone a while.
    """

    node: str  # this node's id

    async def announce(self, record: dict[str, Any]) -> None:
        """Store this node's record (under :attr:`node`), seen now."""

    async def withdraw(self) -> None:
        """Forget this node at once (it is stopping)."""

    async def nodes(self) -> list[tuple[dict[str, Any], float]]:
        """Every node's last record, with when it was announced (Unix time)."""

    async def close(self) -> None: ...


@runtime_checkable
class NodeDirectoryStorage(Protocol):
    """An engine whose nodes can find each other (the memory engine's node is alone)."""

    def node_directory(self) -> NodeDirectory:
        """A new directory for this engine's node; it connects on first use."""
