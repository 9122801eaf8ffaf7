"""Rate and count limits, and revocations: the small state machines behind ``[limits]``."""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from clarion.errors import LimitExceeded
from clarion.protocol.errors import ErrorCode


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` is O(1) and allocation-free."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def principal(user: str | None, ip_key: str | None) -> str:
    """Whom budgets kept across connections and requests count a client as: its user, or its
    address (as the caps count it) without one."""
    return f"user:{user}" if user is not None else f"ip:{ip_key}"


MAX_HOLDERS = 65536  # users and addresses whose allowance is remembered at once


class Allowances:
    """A token bucket per holder — a user, or an address without one — for budgets that span a
    client's connections and requests (``rate`` a second, up to ``burst``).

    A budget per connection comes back full with each new connection: a client that reconnects
    escapes it. The hub's budgets per user or address all live in tables of this one kind (the
    subscriptions a client starts, the bytes of history it is sent, the client API's rates).
    Only a holder that spent something has an entry (a full bucket is none), and at most
    ``holders`` are kept: past that the one unused longest goes, and comes back full. So the
    table is bounded, and only a client with that many identities at once could refill its own
    bucket early — each of which has a budget of its own anyway.
    """

    __slots__ = ("_buckets", "burst", "holders", "rate")

    def __init__(self, rate: float, burst: float, holders: int = MAX_HOLDERS) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.holders = holders
        # who -> [tokens, stamp]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def left(self, who: str) -> float:
        """The tokens ``who`` has now."""
        bucket = self._buckets.get(who)
        return self.burst if bucket is None else self._refill(bucket)

    def take(self, who: str, count: float = 1.0) -> bool:
        """``count`` tokens at once, or none (``False``)."""
        if self.left(who) < count:
            return False
        self.spend(who, count)
        return True

    def spend(self, who: str, count: float) -> None:
        """Take ``count`` tokens, or all there are: the bucket never goes below empty."""
        if count <= 0:
            return
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= self.holders:  # bounded: the least recent one goes
                self._buckets.popitem(last=False)
            bucket = self._buckets[who] = [self.burst, time.monotonic()]
        else:
            self._buckets.move_to_end(who)
            self._refill(bucket)
        bucket[0] = max(bucket[0] - count, 0.0)

    def give_back(self, who: str, count: float) -> None:
        """Tokens taken for something that did not use them."""
        bucket = self._buckets.get(who)
        if count > 0 and bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + count)

    def wait(self, who: str, count: float = 1.0) -> float:
        """Seconds until ``who`` has ``count`` tokens (0: it has them now)."""
        return max(count - self.left(who), 0.0) / self.rate

    def require(self, who: str, count: float, refused: str) -> None:
        """:meth:`take`, or ``rate_limited`` saying ``refused`` and in how many whole seconds
        ``who`` has them (``retry_after``; ``Retry-After`` over HTTP)."""
        if not self.take(who, count):
            wait = max(math.ceil(self.wait(who, count)), 1)
            raise LimitExceeded(
                f"{refused}: retry in {wait} s", code=ErrorCode.RATE_LIMITED, retry_after=wait
            )

    def _refill(self, bucket: list[float]) -> float:
        now = time.monotonic()
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        return bucket[0]


class AddressCount:
    """Connections counted per client address (its caps key) and in total, against two caps.

    What it counts is the caller's choice: clarion's server counts connections that carry no
    session yet (a request head or body on its way, an idle keep-alive), the STOMP endpoint
    its sockets before ``CONNECT``. A ``None`` key counts towards the total only (a trusted
    proxy, whose clients are counted once their address is known).
    """

    __slots__ = ("by_key", "per_key", "refusals", "total", "total_cap")

    def __init__(self, per_key: int, total: int, refusals: Refusals | None = None) -> None:
        self.per_key = per_key
        self.total_cap = total
        self.by_key: dict[str, int] = {}
        self.total = 0
        self.refusals = refusals

    def admit(self, key: str | None) -> bool:
        """Count one more for ``key`` unless a cap is reached (then say so, rate-limited)."""
        if self.total >= self.total_cap:
            if self.refusals is not None:
                self.refusals.refused("node", key, self.total_cap)
            return False
        if key is not None and self.by_key.get(key, 0) >= self.per_key:
            if self.refusals is not None:
                self.refusals.refused("address", key, self.per_key)
            return False
        self.hold(key)
        return True

    def hold(self, key: str | None) -> None:
        """Count one more for ``key`` whatever the caps (a connection that is there already)."""
        self.total += 1
        if key is not None:
            self.by_key[key] = self.by_key.get(key, 0) + 1

    def release(self, key: str | None) -> None:
        self.total -= 1
        if key is not None:
            left = self.by_key.get(key, 1) - 1
            if left > 0:
                self.by_key[key] = left
            else:
                self.by_key.pop(key, None)


class Refusals:
    """Connections refused by a cap, logged at most once per ``every`` seconds per cap.

    A flood refuses thousands of connections a second: one line per refusal would be a second
    attack, on the logs; none at all leaves an operator blind. Each line says how many were
    refused since the last one.
    """

    __slots__ = ("_counts", "_last", "every", "logger", "what")

    def __init__(self, logger: logging.Logger, what: str, every: float = 10.0) -> None:
        self.logger = logger
        self.what = what
        self.every = every
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def refused(self, cap: str, key: str | None, limit: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._counts[cap] = self._counts.get(cap, 0) + 1
        last = self._last.get(cap)
        if last is not None and now - last < self.every:
            return
        count = self._counts.pop(cap)
        self._last[cap] = now
        if cap == "address":
            reason = f"the last from {key}, which holds {limit} (its cap)"
        elif cap == "node":
            reason = f"this node holds {limit} (its cap)"
        else:  # descriptors
            reason = f"the process is near its file descriptor limit ({limit} connections)"
        self.logger.warning("refused %d %s since the last report: %s", count, self.what, reason)


def excerpt(text: object, limit: int = 80) -> str:
    """A peer's text as a log line may show it: its first ``limit`` characters, repr-escaped
    (no newline or control character of its own reaches the log), with its length when cut."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    elif not isinstance(text, str):
        text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class LogLimit:
    """Lines of one kind that peers can cause, at most one per ``every`` seconds per key (an
    address, an origin) and ``keys`` keys per window in all.

    The hub's one rule for such lines: a client that repeats a request (or sends endless
    distinct keys) neither floods the log nor grows this table, and the first line after a
    window in which lines were held back says how many.
    """

    __slots__ = ("every", "held", "keys", "logged", "logger", "started")

    def __init__(self, logger: logging.Logger, every: float = 60.0, keys: int = 20) -> None:
        self.logger = logger
        self.every = every
        self.keys = keys
        self.started = -every
        self.logged: set[str] = set()
        self.held = 0

    def log(
        self,
        level: int,
        key: str,
        msg: str,
        *args: object,
        exc_info: BaseException | bool | None = None,
        now: float | None = None,
    ) -> bool:
        """Log ``msg % args`` unless the limit holds it back (then count it); ``True`` when
        logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = time.monotonic() if now is None else now
        held = 0
        if now - self.started >= self.every:
            held, self.held = self.held, 0
            self.started = now
            self.logged.clear()
        if key in self.logged or len(self.logged) >= self.keys:
            self.held += 1
            return False
        self.logged.add(key)
        if held:
            msg += " (and %d more like it since the last such line, not logged)"
            args = (*args, held)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True


class Abuse:
    """Counts refusals; persistent abuse is ``strikes`` refusals within ``window`` seconds."""

    __slots__ = ("count", "start", "strikes", "window")

    def __init__(self, strikes: int = 50, window: float = 10.0) -> None:
        self.strikes = strikes
        self.window = window
        self.count = 0
        self.start = 0.0

    def strike(self, now: float | None = None) -> bool:
        """Record one refusal; ``True`` when the client should be disconnected."""
        now = time.monotonic() if now is None else now
        if now - self.start > self.window:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count >= self.strikes


@dataclass
class Revocations:
    """Users and token ids refused until a wall-clock time (``POST /api/disconnect``).

    There may be one per logout of the last day: lapsed ones leave through a heap, never by a
    walk over all of them."""

    users: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    # (until, a user's?, key): a heap, the next to lapse first.
    _lapse: list[tuple[float, bool, str]] = field(default_factory=list, init=False, repr=False)

    def revoke(self, *, user: str | None, token_id: str | None, until: float) -> None:
        if user is not None:
            self.add("user", user, until)
        if token_id is not None:
            self.add("jti", token_id, until)

    def add(self, kind: str, key: str, until: float) -> bool:
        """One ``(kind, key, until)`` entry as engines list them (``kind`` ``user``/``jti``);
        ``True`` when it was not known here yet."""
        table = self.users if kind == "user" else self.tokens if kind == "jti" else None
        if table is None or table.get(key, 0.0) >= until:
            return False
        table[key] = until
        heapq.heappush(self._lapse, (until, table is self.users, key))
        return True

    def refused(self, user: str | None, token_id: str | None, now: float | None = None) -> bool:
        """Two lookups, whatever the number of revocations (checked on every connection)."""
        now = time.time() if now is None else now
        return (user is not None and self.users.get(user, 0.0) > now) or (
            token_id is not None and self.tokens.get(token_id, 0.0) > now
        )

    def expire(self, now: float | None = None) -> None:
        """Forget lapsed revocations (the hub does it between reads of the engine's)."""
        now = time.time() if now is None else now
        lapse = self._lapse
        while lapse and lapse[0][0] <= now:
            until, of_user, key = heapq.heappop(lapse)
            table = self.users if of_user else self.tokens
            if table.get(key) == until:  # not extended since
                del table[key]
