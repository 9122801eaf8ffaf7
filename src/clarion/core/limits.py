"""Rate and count limits, and revocations: the small state machines behind ``[limits]``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


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
    """Users and token ids refused until a wall-clock time (``POST /api/disconnect``)."""

    users: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)

    def revoke(self, *, user: str | None, token_id: str | None, until: float) -> None:
        if user is not None:
            self.users[user] = max(until, self.users.get(user, 0.0))
        if token_id is not None:
            self.tokens[token_id] = max(until, self.tokens.get(token_id, 0.0))

    def add(self, kind: str, key: str, until: float) -> bool:
        """One ``(kind, key, until)`` entry as engines list them (``kind`` ``user``/``jti``);
        ``True`` when it was not known here yet."""
        table = self.users if kind == "user" else self.tokens if kind == "jti" else None
        if table is None or table.get(key, 0.0) >= until:
            return False
        table[key] = until
        return True

    def refused(self, user: str | None, token_id: str | None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        self._expire(now)
        return (user is not None and self.users.get(user, 0.0) > now) or (
            token_id is not None and self.tokens.get(token_id, 0.0) > now
        )

    def _expire(self, now: float) -> None:
        for table in (self.users, self.tokens):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
