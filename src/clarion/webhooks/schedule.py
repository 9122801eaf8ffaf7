"""The retry schedule: exponential backoff with full jitter, a cap, and a total window.

After the ``n``-th failed attempt of a delivery (``n`` from 1) the next attempt waits a uniformly
random time in ``[0, min(cap, base * 2 ** (n - 1))]`` ("full jitter": retries of many failing
deliveries spread out instead of arriving together). A delivery whose first failure is more than
``window`` seconds old is given up: it goes to the dead-letter list and the endpoint moves on.
The last attempt is placed at the window's end rather than past it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    base: float = 5.0
    cap: float = 3600.0
    window: float = 86400.0

    def ceiling(self, attempts: int) -> float:
        """The largest wait after ``attempts`` failed attempts."""
        exponent = min(max(attempts - 1, 0), 62)  # 2**62 * base is past any cap
        return float(min(self.cap, self.base * (2**exponent)))

    def next_attempt(
        self,
        attempts: int,
        first_failure: float,
        now: float,
        rng: random.Random | None = None,
    ) -> float | None:
        """When to try again after ``attempts`` failures, or ``None`` when it is time to give up.

        Times are wall-clock seconds, so a schedule survives a restart of the hub.
        """
        deadline = first_failure + self.window
        if now >= deadline:
            return None
        wait = (rng or random).uniform(0.0, self.ceiling(attempts))
        return min(now + wait, deadline)
