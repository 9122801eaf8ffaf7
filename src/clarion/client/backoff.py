"""Reconnect delays: exponential backoff with full jitter."""

from __future__ import annotations

import math
import random
from collections.abc import Callable


def retry_after_delay(wait: float, rng: Callable[[], float] = random.random) -> float:
    """What to wait after a rate limit asked for ``wait`` seconds: at least that, and up to
    half as long again, so that the clients (or subscriptions) it refused together do not all
    come back together."""
    return wait * (1 + rng() / 2)


class Backoff:
    """Attempt ``n`` (from 0) waits a uniformly random time in ``[0, min(cap, base * factor**n)]``.

    Full jitter spreads the reconnects of many clients cut off at once (a hub restart) over the
    whole window instead of bunching them at its edge. ``rng`` returns a float in ``[0, 1)``;
    pass a seeded ``random.Random().random`` for reproducible delays.
    """

    __slots__ = ("base", "cap", "factor", "rng")

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 20.0,
        factor: float = 2.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not base > 0 or not math.isfinite(base):
            raise ValueError("base must be a positive number of seconds")
        if not cap >= base or not math.isfinite(cap):
            raise ValueError("cap must be a finite number of seconds, at least base")
        if not factor >= 1 or not math.isfinite(factor):
            raise ValueError("factor must be at least 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.rng = rng

    def ceiling(self, attempt: int) -> float:
        """The longest delay attempt ``attempt`` may wait."""
        if attempt < 0:
            raise ValueError("attempt must not be negative")
        try:
            window = self.base * self.factor**attempt
        except OverflowError:  # a client that has been retrying for a very long time
            return self.cap
        return min(self.cap, window)

    def delay(self, attempt: int) -> float:
        return self.rng() * self.ceiling(attempt)

    def __repr__(self) -> str:
        return f"Backoff(base={self.base}, cap={self.cap}, factor={self.factor})"
