"""Engine URLs: ``redis://``, ``rediss://``, ``unix://`` and ``redis+sentinel://``.

Query parameters that belong to clarion (``prefix``, ``check_interval``, ``presence_ttl``) are
taken out; the rest go to redis-py unchanged (``socket_timeout``, ``ssl_ca_certs``…).

Sentinel: ``redis+sentinel://[user:password@]host1:26379,host2:26379/<service>[/<db>]``; the
password, when given, is the data nodes' password, not the sentinels'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from clarion.errors import ConfigError

DEFAULT_PREFIX = "clarion"
DEFAULT_CHECK_INTERVAL = 2.0  # seconds between position checks and pub/sub heartbeats
DEFAULT_PRESENCE_TTL = 30.0  # seconds a node's presence entries outlive the node

_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    # No hidden retries: a failed command surfaces at once (as EngineUnavailable), and a
    # publish is never sent twice behind the caller's back. Stale pooled connections are
    # replaced by the pool's own check before use.
    "retry": Retry(NoBackoff(), 0),
    # RESP2 on every redis-py version: pub/sub messages are plain replies on our own
    # connection, not push frames routed elsewhere.
    "protocol": 2,
}


@dataclass(frozen=True)
class RedisTarget:
    """Where the engine connects, and clarion's own options from the URL."""

    url: str
    description: str  # for logs and errors: no password
    prefix: str
    check_interval: float
    presence_ttl: float
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""

    def client(self) -> Redis:
        if self.sentinels:
            return self._sentinel_client()
        return Redis.from_url(self.url, **_DEFAULTS)

    def _sentinel_client(self) -> Redis:
        parts = urlsplit(self.url)
        kwargs: dict[str, Any] = dict(_DEFAULTS)
        kwargs.update(_typed(dict(parse_qsl(parts.query))))
        if parts.username:
            kwargs["username"] = unquote(parts.username)
        if parts.password:
            kwargs["password"] = unquote(parts.password)
        db = parts.path.strip("/").split("/")[1:2]
        if db:
            kwargs["db"] = int(db[0])
        sentinel_kwargs = {
            k: kwargs[k] for k in ("socket_connect_timeout", "socket_timeout") if k in kwargs
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(self.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        client: Redis = sentinel.master_for(self.service, redis_class=Redis, **kwargs)
        return client


def _typed(query: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in query.items():
        if key.endswith("timeout"):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _positive(query: dict[str, str], name: str, default: float) -> float:
    raw = query.pop(name, None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"engine URL: {name} must be a positive number of seconds, not {raw!r}")
    return value


def parse_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = query.pop("prefix", DEFAULT_PREFIX)
    if not prefix or any(c in prefix for c in "{} "):
        raise ConfigError(f"engine URL: invalid prefix {prefix!r}")
    check_interval = _positive(query, "check_interval", DEFAULT_CHECK_INTERVAL)
    presence_ttl = _positive(query, "presence_ttl", DEFAULT_PRESENCE_TTL)
    rest = urlunsplit(parts._replace(query=urlencode(query)))
    host = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    service = ""
    if parts.scheme == "redis+sentinel":
        for item in host.split(","):
            name, _, port = item.rpartition(":")
            if not name or not port.isdigit():
                raise ConfigError(f"engine URL: sentinel address {item!r} is not host:port")
            sentinels.append((name, int(port)))
        service = parts.path.strip("/").split("/")[0]
        if not service:
            raise ConfigError("engine URL: redis+sentinel:// needs a service name as its path")
    elif parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"engine URL: unsupported scheme {parts.scheme!r}")
    return RedisTarget(
        rest,
        description=f"{parts.scheme}://{host}{parts.path}",
        prefix=prefix,
        check_interval=check_interval,
        presence_ttl=presence_ttl,
        sentinels=tuple(sentinels),
        service=service,
    )
