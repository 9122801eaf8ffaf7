"""One settings model: defaults, then ``clarion.toml``, then ``CLARION_*`` environment variables.

Nested keys join with ``__`` in the environment, e.g. ``CLARION_LIMITS__MAX_CONNECTIONS_PER_IP``
(:mod:`clarion.settings_sources` reads both and words the errors). Every field is documented in
``docs/configuration.md`` (a test keeps the two in step).

Long on purpose: every setting, its default, bounds and meaning, in the one model it is read into.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from clarion.errors import ClarionError
from clarion.protocol.channels import DEFAULT_NAMESPACE
from clarion.protocol.origins import Origin, OriginRule, parse_origin
from clarion.protocol.proxies import parse_network

# What ``engine`` may start with besides "memory": the Redis engine's URLs.
REDIS_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "redis+cluster://",
)


def _checked_secret(value: str | None) -> str | None:
    """A ``whsec_`` secret, refused when the file is read (naming it) rather than at start."""
    if value is not None:
        from clarion.webhooks.signing import MAKE_SECRET, secret_key  # light: base64 and hmac

        try:
            secret_key(value)
        except ClarionError as exc:
            raise ValueError(f"{exc.message}; {MAKE_SECRET}") from None
    return value


def url_host(host: str) -> str:
    """``host`` as a URL holds it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


class NamespaceOptions(BaseModel):
    """Options for the channels of one namespace (the part of a channel name before ``:``)."""

    model_config = ConfigDict(extra="forbid")

    history_size: int = Field(100, ge=0, le=1_000_000, description="publications kept per channel")
    history_ttl: float = Field(600, gt=0, description="seconds a publication stays in history")
    history_meta_ttl: float = Field(
        86400,
        gt=0,
        description="seconds an idle channel's epoch and offset are remembered after its last "
        "publication (on the memory engine, less once the channels holding nothing else fill "
        "half of `limits.max_history_bytes`); after that its next publication starts a new "
        "epoch. A channel read but "
        "never published to is remembered 120 s only, whatever this says",
    )
    anonymous: bool = Field(False, description="allow subscribe without a token")
    client_publish: bool = Field(True, description="allow clients (not only the API) to publish")
    presence: bool = Field(True, description="track who is subscribed and push join/leave")
    join_leave: bool | Literal["user", "client"] = Field(
        False,
        description='push join/leave events to subscribers (needs presence): "user" = when a '
        "user's first client arrives and after its last one leaves (`presence_grace` later); "
        '"client" (or true) = for every client',
    )
    presence_grace: float = Field(
        5,
        ge=0,
        description='seconds a user\'s leave waits with `join_leave = "user"`, its last '
        "client's presence entry with it: a reload or a reconnect within it sends neither leave "
        "nor join, and a subscriber arriving meanwhile finds the user in presence",
    )
    presence_read: Literal["subscribers", "anyone", "token"] = Field(
        "subscribers",
        description='who may read presence (the presence op, join/leave events): "subscribers" '
        '= sessions with a token subscribed to the channel; "anyone" = whoever may subscribe, '
        'anonymous included; "token" = only tokens whose `presence` claim matches (that claim '
        "grants it under every setting)",
    )
    presence_info: bool = Field(
        False,
        description="show the token's `info` to clients in presence and join/leave events "
        "(the server API always sees it)",
    )
    slow_consumer: Literal["disconnect", "conflate"] = Field(
        "disconnect", description="what happens when a session's send queue overflows"
    )
    idempotency_window: float = Field(
        300, ge=0, description="seconds within which a repeated publish `id` is not published again"
    )
    ephemeral: bool = Field(
        False,
        description="every publication is a live signal: delivered to live subscribers, never "
        "stored, no offset (as `publish` with `ephemeral: true`)",
    )

    @property
    def join_leave_mode(self) -> str | None:
        """``"user"``, ``"client"`` or ``None`` (no join/leave events)."""
        if self.join_leave is True:
            return "client"
        return self.join_leave or None


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_connections: int = Field(100_000, ge=1, description="connections per node")
    max_connections_per_ip: int = Field(
        1000, ge=1, description="connections per client IP (IPv6: per `ipv6_prefix` network)"
    )
    ipv6_prefix: int = Field(
        64,
        ge=16,
        le=128,
        description="IPv6 clients count against per-IP caps per network of "
        "this prefix length (one subscriber usually holds a whole /64)",
    )
    max_connections_per_user: int = Field(100, ge=1, description="connections per user (sub)")
    max_subscriptions_per_connection: int = Field(
        128, ge=1, description="channels one connection may subscribe to"
    )
    max_message_bytes: int = Field(
        65536, ge=256, description="largest inbound frame and largest publish API body"
    )
    client_publish_rate: float = Field(20, gt=0, description="publications per second per session")
    client_publish_rate_per_user: float | None = Field(
        None,
        gt=0,
        description="publications per second per user across all their connections (and all "
        "nodes with the redis engine); unset = no per-user limit",
    )
    client_publish_burst: int = Field(40, ge=1, description="token-bucket size for client publish")
    client_ephemeral_rate: float = Field(
        60,
        gt=0,
        description="ephemeral publications per second per session and channel (their own "
        "budget: cursor moves come at 30-60 Hz); all of a session's channels together: 4 times",
    )
    client_ephemeral_burst: int = Field(
        60, ge=1, description="token-bucket size for client ephemeral publish"
    )
    client_command_rate: float = Field(
        20,
        gt=0,
        description="subscribe, history, presence, connect and refresh ops per second per "
        "session (STOMP: SUBSCRIBE); over it, `rate_limited` (an unsubscribe is never refused). "
        "The reads and token ops also per user (per address without one) across its "
        "connections and client API requests",
    )
    client_command_burst: int = Field(
        300,
        ge=1,
        description="token-bucket size for those ops; never less than twice "
        "max_subscriptions_per_connection plus 20, so that a reconnect resubscribing every "
        "channel (and reading each one's history or presence) passes",
    )
    client_subscribe_rate: float = Field(
        20,
        gt=0,
        description="subscriptions started per second by each user (each address, without a "
        "user), across its connections and transports to this node: subscribe ops, STOMP "
        "SUBSCRIBE, each channel of an /sse stream, each channel a long-poll client joins the "
        "presence of; over it, `rate_limited` (/sse: 429 with Retry-After)",
    )
    client_subscribe_burst: int = Field(
        1024,
        ge=1,
        description="bucket size of client_subscribe_rate: a user's tabs resubscribing "
        "everything at once after a hub restart or a network blip; never less than "
        "max_subscriptions_per_connection",
    )
    client_history_rate: float = Field(
        4 * 1_048_576,
        gt=0,
        description="bytes of stored publications sent per second to each user (to each "
        "address, without a user), across its connections and requests to this node: history "
        "reads, the replay a resume starts with, poll replies read from history; past it each "
        "such page holds one publication",
    )
    client_history_burst: int = Field(
        64 * 1_048_576,
        ge=1,
        description="bucket size of client_history_rate, in bytes: what a reader may be sent "
        "at once (a reconnect resuming every channel it reads after a long absence)",
    )
    client_poll_check_rate: float = Field(
        12_800,
        gt=0,
        description="channels that `/poll` requests may name per second, per user (per "
        "address, without a user), across its polls to this node: each poll spends one per "
        "channel it names, whether it answers at once or waits; over it, `429 rate_limited` "
        "with `Retry-After`. A long-poll client polls once per reply: 100 polls a second of "
        "128 channels",
    )
    client_poll_check_burst: int = Field(
        51_200,
        ge=1,
        description="bucket size of client_poll_check_rate, in channels; never less than "
        "max_subscriptions_per_connection, so that any poll passes once the bucket is full",
    )
    send_queue_bytes: int = Field(
        1_048_576,
        ge=4096,
        description=(
            "bytes queued to one session before its slow-consumer policy; also the bytes of "
            "one history reply and of the replay a resume starts with"
        ),
    )
    ping_interval: float = Field(25, gt=0, description="seconds between server pings")
    pong_timeout: float = Field(10, gt=0, description="seconds to wait for a pong")
    stomp_min_heart_beat: float = Field(
        1,
        gt=0,
        description="shortest period of the STOMP heart-beats the hub sends, in seconds; a "
        "client asking for less gets this (independent of `ping_interval`)",
    )
    idle_timeout: float = Field(300, gt=0, description="seconds a session may hold no subscription")
    handshake_timeout: float = Field(10, gt=0, description="seconds to finish the HTTP handshake")
    body_timeout: float = Field(
        30,
        gt=0,
        description="seconds a request body may take to arrive once its head is in "
        "(408, or closed if already answered)",
    )
    send_timeout: float = Field(
        60,
        gt=0,
        description="seconds an HTTP response may wait on a client that reads none of it "
        "(then the connection is reset)",
    )
    keepalive_timeout: float = Field(
        5,
        gt=0,
        description="seconds an idle keep-alive HTTP connection stays open; clients and "
        "proxies should reuse one for less (the Python client lets go of it after 4 s)",
    )
    max_pending_connections: int = Field(
        10_000,
        ge=1,
        description="HTTP connections per node that wait on their client (a request on its "
        "way, idle keep-alive) and WebSocket sockets without a session yet (STOMP before "
        "CONNECT, /ws during a connect hook); beyond, refused (503 / 4503)",
    )
    max_pending_connections_per_ip: int = Field(
        1000,
        ge=1,
        description="the same, per client IP (IPv6: per `ipv6_prefix` network)",
    )
    max_history_batch: int = Field(
        1000, ge=1, description="publications per history/poll reply (bytes: `send_queue_bytes`)"
    )
    max_presence_clients: int = Field(
        1000,
        ge=1,
        description="clients a client's presence reply lists; a channel with more lists that "
        "many, with `truncated` (`presence_stats` counts them all; the server API lists all)",
    )
    max_history_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1_048_576,
        description="bytes of history the memory engine keeps across all channels: each "
        "publication counts its JSON, its wire encodings and 512 bytes; an idempotency key "
        "that outlives its publication 512 bytes and its characters; each channel published "
        "to 2,048 bytes and its name's characters, while it is remembered "
        "(`history_meta_ttl`). Past it the oldest publications go first, and a reader "
        "resuming from before one gets a `trimmed` reset, as after `history_size`. Channels "
        "holding nothing but their position take at most half of it: past that, the one "
        "written longest ago is forgotten, and its next publication starts a new epoch (its "
        "readers get an `epoch` reset). (Redis holds the redis engine's history: its "
        "`maxmemory`.)",
    )

    @property
    def subscribe_burst(self) -> int:
        """The subscribe bucket's size: one connection subscribing all it may hold fits in it."""
        return max(self.client_subscribe_burst, self.max_subscriptions_per_connection)

    @property
    def poll_check_burst(self) -> int:
        """The poll budget's bucket: the widest poll a connection may make must fit in it."""
        return max(self.client_poll_check_burst, self.max_subscriptions_per_connection)

    @property
    def command_burst(self) -> int:
        """The command bucket's size: a client resubscribing all it may hold must fit in it."""
        return max(self.client_command_burst, 2 * self.max_subscriptions_per_connection + 20)


class SseOptions(BaseModel):
    """The ``[sse]`` section: Server-Sent Events streams at ``/sse``."""

    model_config = ConfigDict(extra="forbid")

    retry_ms: int = Field(
        3000, ge=0, le=3_600_000, description="reconnect delay sent as `retry:` first on a stream"
    )
    heartbeat: float = Field(
        15, gt=0, description="seconds of silence after which a stream gets a comment line"
    )


class PollOptions(BaseModel):
    """The ``[poll]`` section: long polling and polling at ``/poll``."""

    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(25, ge=0, description="seconds a poll waits when it gives no `timeout`")
    timeout_max: float = Field(60, ge=0, description="largest `timeout` a poll may ask for")
    presence_timeout: float = Field(
        10,
        gt=0,
        le=3600,
        description="seconds a long-poll client stays in presence after its poll's wait, "
        "unless it polls again (polls that name `client`)",
    )


class WebhookEndpointConfig(BaseModel):
    """One ``[[webhooks]]`` entry: a receiver configured in the file rather than via the API."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL the deliveries are POSTed to")
    channels: list[str] = Field(default_factory=list, description="channel patterns to deliver")
    secret: str | None = Field(
        None, description="whsec_ signing secret; generated and kept in data_dir when unset"
    )
    events: list[str] = Field(
        default_factory=list,
        description="lifecycle events to deliver: connect, disconnect, subscribe, unsubscribe, "
        "join, leave",
    )
    id: str | None = Field(
        None,
        # It appears in paths (/api/webhooks/{id}), which are routed as sent: nothing to escape.
        pattern=r"^[A-Za-z0-9_.~-]{1,64}$",
        description="stable endpoint id (1 to 64 letters, digits, _ . ~ -); "
        "derived from the URL when unset",
    )

    @field_validator("secret")
    @classmethod
    def _secret_is_one(cls, value: str | None) -> str | None:
        return _checked_secret(value)


class WebhookDelivery(BaseModel):
    """The ``[webhook_delivery]`` section: how webhook deliveries are sent and retried."""

    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(10, gt=0, description="seconds one attempt may take, all included")
    concurrency: int = Field(32, ge=1, description="attempts in flight at once, all endpoints")
    retry_base: float = Field(5, gt=0, description="seconds: ceiling of the first retry's wait")
    retry_cap: float = Field(3600, gt=0, description="seconds: largest wait between attempts")
    retry_window: float = Field(
        86400, gt=0, description="seconds after a delivery's first failure before dead-lettering"
    )
    max_response_bytes: int = Field(65536, ge=0, description="response bytes read per attempt")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest payload sent")
    max_backlog: int = Field(
        100_000, ge=1, description="pending deliveries per endpoint; beyond, new ones dead-letter"
    )
    max_backlog_bytes: int = Field(
        268_435_456,
        ge=1,
        description="bytes of pending deliveries' payloads per endpoint (on Redis, as stored); "
        "beyond, new ones dead-letter",
    )
    max_dead_letters: int = Field(
        10_000, ge=1, description="dead letters kept per endpoint; the oldest go first"
    )
    max_dead_letter_bytes: int = Field(
        268_435_456,
        ge=1,
        description="bytes of dead letters kept per endpoint (payloads; on Redis, as stored); "
        "the oldest go first, the newest is kept whatever its size",
    )
    fsync: bool = Field(
        False, description="fsync every outbox commit (survives power loss, costs latency)"
    )


class HooksOptions(BaseModel):
    """The ``[hooks]`` section: ask the application's backend before connect, subscribe, publish."""

    model_config = ConfigDict(extra="forbid")

    connect_url: str | None = Field(
        None,
        description="URL POSTed before a session opens: allow, deny, or amend info/channels/subs",
    )
    subscribe_url: str | None = Field(
        None, description="URL POSTed before a client subscribes (not the backend's own subscribe)"
    )
    publish_url: str | None = Field(
        None, description="URL POSTed before a client publishes: allow, deny, or replace the data"
    )
    secret: str | None = Field(
        None,
        description="whsec_ secret signing the requests (Standard Webhooks); required with a URL",
    )
    timeout: float = Field(3, gt=0, le=60, description="seconds the backend has to answer")
    cache_ttl: float = Field(
        30,
        ge=0,
        description="seconds a connect or subscribe answer is reused for the same user and "
        "channel (publish answers never are); 0 = never",
    )
    cache_size: int = Field(10_000, ge=0, description="answers kept in the cache, at most")
    on_failure: Literal["deny", "allow"] = Field(
        "deny",
        description="when the backend errs, times out or is down: refuse (hook_unavailable) "
        "or allow",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.connect_url or self.subscribe_url or self.publish_url)

    @model_validator(mode="after")
    def _signed(self) -> HooksOptions:
        if self.enabled and self.secret is None:
            from clarion.webhooks.signing import MAKE_SECRET

            raise ValueError(
                f"[hooks] needs a secret (whsec_...) to sign its requests; {MAKE_SECRET}"
            )
        return self

    @field_validator("connect_url", "subscribe_url", "publish_url")
    @classmethod
    def _is_http_url(cls, value: str | None) -> str | None:
        # Checked here, naming the file, not at each client's first request.
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secret")
    @classmethod
    def _secret_is_one(cls, value: str | None) -> str | None:
        return _checked_secret(value)


class Settings(BaseModel):
    """Everything clarion can be told; see ``docs/configuration.md``."""

    # Defaults are validated too, as values given are.
    model_config = ConfigDict(extra="forbid", validate_default=True)

    if not TYPE_CHECKING:  # type checkers see the fields as keyword arguments, as pydantic makes

        def __init__(self, **values: Any) -> None:
            # ``Settings(...)`` reads the environment the way ``Settings.load`` does; the values
            # given win, key by key in tables. (pydantic's validation calls this too, so
            # ``model_validate`` reads it as well.) Not pydantic-settings: importing it cost every
            # command that reads settings ~0.05 s of CPU, and asyncio, for this alone.
            from clarion.settings_sources import BUILT, Sourced, explain, read_environment

            sourced = Sourced()
            read_environment(type(self), os.environ, sourced)
            for name, value in values.items():
                sourced.set((name,), value, BUILT)
            try:
                super().__init__(**sourced.values)
            except ValidationError as exc:
                # A variable at fault is named as ``Settings.load`` names it; a value given in
                # code stays the model's own error, as for any pydantic model.
                blamed = (sourced.origin_of(tuple(e["loc"]))[0] for e in exc.errors())
                if any(origin.kind == "variable" for origin in blamed):
                    raise explain(exc, type(self), sourced) from None
                raise

    host: str = Field("127.0.0.1", description="address `clarion serve` binds")
    port: int = Field(8000, ge=0, le=65535, description="port `clarion serve` binds")
    engine: str = Field(
        "memory",
        description='"memory", or a Redis URL: "redis://host:port/db", '
        '"redis+sentinel://…", "redis+cluster://…" (docs/redis.md)',
    )
    api_key: str | list[str] | None = Field(
        None,
        description="server API key(s); several allow rotation. Unset: the server API is "
        "off, or open in development mode (no token key either)",
    )
    admin: bool = Field(
        False,
        description="serve the admin page at /admin (it logs in with the API key) and "
        "publish the hub's figures every second on its channel `_clarion:metrics`",
    )
    token_secret: str | None = Field(None, description="HS256 secret for connection JWTs")
    token_public_key_file: str | None = Field(
        None, description="PEM public key or JWKS file for RS256/ES256 tokens"
    )
    token_algorithm: str = Field("HS256", description="the only JWT algorithm accepted")
    token_audience: str | None = Field(None, description="required `aud` claim, if set")
    token_issuer: str | None = Field(None, description="required `iss` claim, if set")
    revocation_ttl: float = Field(
        86400,
        gt=0,
        description="seconds a token (`jti`) revocation without `until` or `exp` is kept; at "
        "least your longest token lifetime",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="browser origins allowed to connect: `scheme://host[:port]`, or patterns "
        '`https://*.example.com` (sub-domains) and `http://localhost:*` (any port); ["*"] '
        "allows any. Empty = only `public_url`'s origin; in development mode with neither, "
        "pages on loopback hosts (localhost, 127.0.0.1, [::1]) over the hub's own scheme",
    )
    public_url: str | None = Field(
        None,
        description="the hub's public URL, e.g. `https://rt.example.com`; its origin is allowed "
        "(pages the hub's host serves)",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDR blocks of reverse proxies whose `forwarded_header` and "
        "`X-Forwarded-Proto` are believed; see docs/deployment.md",
    )
    forwarded_header: Literal["x-forwarded-for", "forwarded", "x-real-ip"] = Field(
        "x-forwarded-for",
        description="the one header trusted proxies give the client address in (the others "
        "are ignored: a proxy passes a client's copy of them through)",
    )
    allow_no_origin: bool = Field(True, description="accept requests without an Origin header")
    insecure: bool = Field(
        False,
        description="allow a non-loopback bind without api_key and token secret (and, in a "
        "hub mounted in another server, requests from other machines)",
    )
    data_dir: str = Field("./clarion-data", description="durable local state of the memory engine")
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description="hosts webhooks may reach even on loopback or private addresses",
    )
    webhooks: list[WebhookEndpointConfig] = Field(
        default_factory=list, description="webhook endpoints configured here ([[webhooks]])"
    )
    webhook_delivery: WebhookDelivery = Field(default_factory=WebhookDelivery)
    hooks: HooksOptions = Field(default_factory=HooksOptions)
    flush_interval: float = Field(
        0.0,
        ge=0,
        le=0.05,
        description="seconds WebSocket frames may wait to share one write per connection "
        "(0 = end of the event-loop iteration; answers to POST /api/publish wait with them); "
        "trades latency for fewer syscalls",
    )
    compiled: bool = Field(
        True,
        description="run the fan-out's append and flush loops, and the reader of whole "
        "POST /api/publish requests, compiled when clarion was built with them (false: in "
        "Python and httptools, the fallback when no C compiler was at hand)",
    )
    io_uring: bool = Field(
        True,
        description="with the compiled loops on Linux, send an event-loop iteration's frames to "
        "the connections with one frame each in one system call (io_uring) where the kernel "
        "allows it (false: one send each)",
    )
    permessage_deflate: bool = Field(
        True,
        description="compress WebSocket messages (/ws, /stomp) for clients that offer it; "
        "each publication is compressed once for all its subscribers (docs/compression.md)",
    )
    shutdown_timeout: float = Field(10, ge=0, description="seconds to drain on SIGTERM")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error"
    )
    limits: Limits = Field(default_factory=Limits)
    sse: SseOptions = Field(default_factory=SseOptions)
    poll: PollOptions = Field(default_factory=PollOptions)
    namespaces: dict[str, NamespaceOptions] = Field(default_factory=dict)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry != "*":
                OriginRule(entry)  # raises ValueError naming the entry
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and public_origin(value) is None:
            raise ValueError(f"public_url must be an http(s) URL, not {value!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                parse_network(entry)
            except ValueError:
                raise ValueError(f"not an address or CIDR block: {entry!r}") from None
        return value

    @field_validator("api_key", "token_secret")
    @classmethod
    def _no_empty_secret(cls, value: str | list[str] | None) -> str | list[str] | None:
        # An empty value is neither "unset" (development mode) nor a usable secret: refuse it
        # rather than guess which one was meant.
        values = [value] if isinstance(value, str) else value
        if values is not None and (not values or any(not v.strip() for v in values)):
            raise ValueError("must not be empty: remove the setting to leave it unset")
        return value

    @field_validator("namespaces")
    @classmethod
    def _namespace_names(cls, value: dict[str, NamespaceOptions]) -> dict[str, NamespaceOptions]:
        for name in value:
            if not name or ":" in name:
                raise ValueError(f"invalid namespace name {name!r}")
        return value

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value == "memory":
            return value
        if not value.startswith(REDIS_URL_SCHEMES):
            schemes = ", ".join(REDIS_URL_SCHEMES)
            raise ValueError(f'must be "memory" or a Redis URL ({schemes})')
        if "," in value:
            return value  # several sentinels: the engine parses those
        try:
            urlsplit(value).port  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Read ``config_file`` (TOML) and the environment; ``overrides`` win over both.

        Any problem is a :class:`~clarion.errors.ConfigError` naming the file or variable.
        """
        from clarion.settings_sources import load

        return load(cls, config_file, overrides)[0]

    # ---- derived values -------------------------------------------------------------------

    def namespace(self, name: str) -> NamespaceOptions:
        opts = self.namespaces.get(name)
        if opts is None:
            opts = self.namespaces.get(DEFAULT_NAMESPACE)
            if opts is None:
                opts = NamespaceOptions()
                self.namespaces[DEFAULT_NAMESPACE] = opts
        return opts

    @property
    def api_keys(self) -> list[str]:
        if self.api_key is None:
            return []
        return [self.api_key] if isinstance(self.api_key, str) else list(self.api_key)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.token_secret or self.token_public_key_file)

    @property
    def development_mode(self) -> bool:
        return not self.api_keys and not self.auth_enabled

    @property
    def public_origin(self) -> Origin | None:
        return public_origin(self.public_url) if self.public_url else None

    def local_url(self) -> str | None:
        """The URL of the hub's own server seen from this machine; None on port 0 (any free
        port, known only once it listens)."""
        if self.port == 0:
            return None
        host = self.host
        if host in ("", "0.0.0.0"):  # every interface: loopback is one of them
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://{url_host(host)}:{self.port}"

    def binds_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:  # "" (every interface) and host names are not loopback
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def public_origin(url: str) -> Origin | None:
    """The origin of an http(s) URL (its path is the hub's mount point, not part of it)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    authority = rest.split("/", 1)[0]
    return parse_origin(f"{scheme}://{authority}")
