"""Engine URLs: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``, ``redis+cluster://``.

Query parameters that belong to clarion (``prefix``, ``check_interval``, ``presence_ttl``,
``pool_size``, ``pool_timeout``, ``wait_replicas``, ``wait_timeout``) are taken out; the rest go
to redis-py unchanged (``socket_timeout``, ``ssl_ca_certs``…).

``wait_replicas=N``: a publication is answered only once N replicas of the primary that ran it
acknowledged its write (Redis ``WAIT``, on the connection that wrote); otherwise, after
``wait_timeout`` seconds, it fails as any Redis error does. See batch.py.

Commands share a bounded, *blocking* pool of ``pool_size`` connections; the engine's batched
commands (``batch.py``) use at most two of them at once and queue behind those, so a burst of
calls (a thousand clients connecting at once) waits instead of failing, and a call that waited
``pool_timeout`` seconds fails on its own, as any Redis error does.

Sentinel: ``redis+sentinel://[user:password@]host1:26379,host2:26379/<service>[/<db>]``; the
password, when given, is the data nodes' password, not the sentinels'.

Cluster: ``redis+cluster://[user:password@]host1:6379[,host2:6379…]``: any reachable nodes of
the cluster; the client learns the rest (and every later change of topology) from them.
Commands go to each key's slot owner (``MOVED``/``ASK`` followed); at most two batches (and
never more than ``pool_size``) are under way at once (the others wait, ``pool_timeout`` at most).
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from difflib import get_close_matches
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from clarion.errors import ConfigError, EngineUnavailable
from clarion.protocol.numbers import ascii_int

DEFAULT_PREFIX = "clarion"
DEFAULT_CHECK_INTERVAL = 2.0  # seconds between position checks and pub/sub heartbeats
DEFAULT_PRESENCE_TTL = 30.0  # seconds a node's presence entries outlive the node
# Redis runs one command at a time: more connections than commands in flight add nothing, and
# every node's connections count against Redis' maxclients. 32 keeps a node's round trips
# overlapping; bursts queue behind them (in call order) rather than open more.
DEFAULT_POOL_SIZE = 32
# Longer than a command's own timeout (socket_timeout, 5 s), so that a call fails for a queue
# only when Redis has stopped answering, not because a burst is being worked through.
DEFAULT_POOL_TIMEOUT = 10.0
# A replica on a LAN acknowledges within a round trip or two (Redis asks it at once); a second
# means it is gone or far behind, and the publisher should hear so well within its own timeout.
DEFAULT_WAIT_TIMEOUT = 1.0

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
    pool_size: int = DEFAULT_POOL_SIZE
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    cluster: tuple[tuple[str, int], ...] = ()  # startup nodes of a Redis Cluster
    wait_replicas: int = 0  # replicas that must acknowledge a publication (0: none asked)
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT

    def client(self) -> Any:
        """A client whose commands share one bounded blocking pool (see the module's doc)."""
        if self.sentinels:
            return self._sentinel_client()
        if self.cluster:
            return self._cluster_client()
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=self.pool_size, timeout=self.pool_timeout, **_DEFAULTS
        )
        return Redis.from_pool(pool)

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
        sentinel_kwargs: dict[str, Any] = {
            k: kwargs[k] for k in ("socket_connect_timeout", "socket_timeout") if k in kwargs
        }
        # Typed from redis-py 8 on, untyped before: both are supported.
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(self.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        client: Redis = sentinel.master_for(
            self.service,
            redis_class=Redis,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=self.pool_size,
            timeout=self.pool_timeout,
            **kwargs,
        )
        return client

    def _cluster_client(self) -> RedisCluster:
        kwargs = self._cluster_kwargs()
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.cluster],
            # Batches wait for one of pool_size slots (batch.py); the rest is headroom for
            # the few calls made outside them.
            max_connections=2 * self.pool_size,
            # Topology is re-read after a failed command (a failover, a moved slot) rather
            # than retried: a publish is never sent twice behind the caller's back.
            reinitialize_steps=1,
            **kwargs,
        )

    def _cluster_kwargs(self) -> dict[str, Any]:
        parts = urlsplit(self.url)
        kwargs: dict[str, Any] = dict(_DEFAULTS)
        kwargs.update(_typed(dict(parse_qsl(parts.query))))
        if parts.username:
            kwargs["username"] = unquote(parts.username)
        if parts.password:
            kwargs["password"] = unquote(parts.password)
        return kwargs

    def connection(self, host: str, port: int) -> Connection:
        """A connection of its own to one node of a cluster (sharded pub/sub, health checks)."""
        kwargs = self._cluster_kwargs()
        kwargs.pop("retry", None)
        return Connection(host=host, port=port, **kwargs)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's address from the Sentinels, the waiting of the blocking pool."""


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


OWN_PARAMETERS = (
    "prefix",
    "check_interval",
    "presence_ttl",
    "pool_size",
    "pool_timeout",
    "wait_replicas",
    "wait_timeout",
)


@cache
def redis_parameters(cluster: bool = False) -> frozenset[str]:
    """The query parameters redis-py's connections take, and on a cluster its cluster client's
    too (a name none takes fails only at the first connection, in redis-py's words)."""
    names: set[str] = set()
    kinds: list[Any] = [AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection]
    if cluster:
        kinds.append(RedisCluster)
    for kind in kinds:
        names.update(inspect.signature(kind.__init__).parameters)
    return frozenset(names - {"self", "kwargs"})


def _check_known(query: dict[str, str], *, cluster: bool) -> None:
    known = redis_parameters(cluster)
    for name in sorted(query):
        if name not in known:
            close = get_close_matches(name, (*OWN_PARAMETERS, *known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"engine URL: unknown parameter {name!r}{hint}; clarion's own are "
                f"{', '.join(OWN_PARAMETERS)}, the others are redis-py's connection options"
            )


def parse_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = query.pop("prefix", DEFAULT_PREFIX)
    if not prefix or any(c in prefix for c in "{} "):
        raise ConfigError(f"engine URL: invalid prefix {prefix!r}")
    check_interval = _positive(query, "check_interval", DEFAULT_CHECK_INTERVAL)
    presence_ttl = _positive(query, "presence_ttl", DEFAULT_PRESENCE_TTL)
    pool_timeout = _positive(query, "pool_timeout", DEFAULT_POOL_TIMEOUT)
    for theirs, ours in (("max_connections", "pool_size"), ("timeout", "pool_timeout")):
        if theirs in query:
            raise ConfigError(f"engine URL: the pool is set with {ours}, not {theirs}")
    raw_size = query.pop("pool_size", str(DEFAULT_POOL_SIZE))
    pool_size = ascii_int(raw_size, max_digits=9)
    if pool_size is None or pool_size < 1:
        raise ConfigError(f"engine URL: pool_size must be a whole number >= 1, not {raw_size!r}")
    raw_wait = query.pop("wait_replicas", "0")
    wait_replicas = ascii_int(raw_wait, max_digits=9)
    if wait_replicas is None:
        raise ConfigError(
            f"engine URL: wait_replicas must be a whole number >= 0, not {raw_wait!r}"
        )
    wait_timeout = _positive(query, "wait_timeout", DEFAULT_WAIT_TIMEOUT)
    try:
        socket_timeout = float(query.get("socket_timeout", _DEFAULTS["socket_timeout"]))
    except ValueError:  # redis-py's to refuse, at the first connection
        socket_timeout = float("inf")
    if wait_replicas and wait_timeout >= socket_timeout:
        # WAIT's reply comes after up to wait_timeout: the read must outlast it, or every
        # unacknowledged write would surface as a dropped connection instead.
        raise ConfigError(
            f"engine URL: wait_timeout ({wait_timeout:g} s) must be shorter than "
            f"socket_timeout ({socket_timeout:g} s)"
        )
    _check_known(query, cluster=parts.scheme == "redis+cluster")
    rest = urlunsplit(parts._replace(query=urlencode(query)))
    host = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    nodes: list[tuple[str, int]] = []
    service = ""
    if parts.scheme == "redis+sentinel":
        for item in host.split(","):
            name, _, port = item.rpartition(":")
            number = ascii_int(port, max_digits=5)
            if not name or number is None:
                raise ConfigError(f"engine URL: sentinel address {item!r} is not host:port")
            sentinels.append((name, number))
        service = parts.path.strip("/").split("/")[0]
        if not service:
            raise ConfigError("engine URL: redis+sentinel:// needs a service name as its path")
    elif parts.scheme == "redis+cluster":
        for item in host.split(","):
            name, _, port = item.rpartition(":")
            number = ascii_int(port, max_digits=5)
            if not name or number is None:
                raise ConfigError(f"engine URL: cluster node address {item!r} is not host:port")
            nodes.append((name, number))
        if parts.path.strip("/") not in ("", "0"):
            raise ConfigError("engine URL: a Redis Cluster has one database: no /db path")
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
        pool_size=pool_size,
        pool_timeout=pool_timeout,
        cluster=tuple(nodes),
        wait_replicas=wait_replicas,
        wait_timeout=wait_timeout,
    )


# What Redis answers the SELECT of a connection to a database it does not have.
_NO_SUCH_DB = "DB index is out of range"
PROBE_TIMEOUT = 2.0  # seconds to count a server's databases for that error's message


async def no_such_database(exc: BaseException, client: Any, where: str) -> ConfigError | None:
    """The error to raise when ``exc`` says the server has no database of the URL's number
    (Redis was reached: the URL is wrong); None when it says something else."""
    if not isinstance(exc, ResponseError) or _NO_SUCH_DB not in str(exc):
        return None
    pool = client.connection_pool
    db = pool.connection_kwargs.get("db", 0)
    count = await _database_count(pool, int(db))
    has = f"it has {count}, 0 to {count - 1}" if count else "its `databases` setting says how many"
    return ConfigError(
        f"Redis at {where} has no database {db} ({has}): change the engine URL's /db"
    )


async def _database_count(pool: Any, db: int) -> int | None:
    """How many databases the server has (more than 0, at most ``db``): the highest that SELECT
    takes, found by bisection on a connection to database 0. SELECT writes nothing, and is
    allowed where CONFIG GET is often not (managed Redis, ACLs). None when it cannot be told."""
    try:
        connection = pool.connection_class(**{**pool.connection_kwargs, "db": 0})
    except Exception:  # a pool of another kind (Sentinel's): the message goes without
        return None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await connection.connect()
            have, lack = 0, db  # database 0 always exists; database ``db`` does not
            while lack - have > 1:
                middle = (have + lack) // 2
                await connection.send_command("SELECT", middle)
                try:
                    await connection.read_response()
                    have = middle
                except ResponseError:
                    lack = middle
            return have + 1
    except (RedisError, OSError, TimeoutError):
        return None
    finally:
        await connection.disconnect()


def unavailable(exc: BaseException, doing: str) -> EngineUnavailable:
    """What a Redis failure while ``doing`` something raises to the hub, and tells clients.

    An error reply names the script and its line: clients are told its kind only (the
    engine's outage log line has it whole)."""
    why: object = exc or "timeout"
    if isinstance(exc, ResponseError):
        full = isinstance(exc, OutOfMemoryError) or "maxmemory" in str(exc)
        why = "Redis is over its maxmemory" if full else "Redis refused the command"
    return EngineUnavailable(f"Redis unavailable while {doing}: {why}")
