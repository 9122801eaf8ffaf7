"""Reconnect delays: full jitter within an exponentially growing, capped window."""

from __future__ import annotations

import random
from typing import Any

import pytest

from clarion.client import Backoff


def test_window_doubles_from_base_up_to_cap() -> None:
    backoff = Backoff(base=0.5, cap=20.0)
    assert [backoff.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 20, 20]
    assert backoff.ceiling(10_000) == 20.0  # no overflow after a very long outage


def test_delays_stay_within_the_window_and_spread_over_it() -> None:
    backoff = Backoff(base=0.5, cap=20.0, rng=random.Random(7).random)
    for attempt in range(12):
        window = backoff.ceiling(attempt)
        samples = [backoff.delay(attempt) for _ in range(2000)]
        assert all(0 <= d <= window for d in samples)
        # Full jitter: the whole window is used, not just its top edge.
        assert min(samples) < 0.05 * window
        assert max(samples) > 0.95 * window
        assert 0.45 * window < sum(samples) / len(samples) < 0.55 * window


def test_rng_sets_the_point_in_the_window() -> None:
    assert Backoff(base=1, cap=8, rng=lambda: 0.0).delay(3) == 0.0
    assert Backoff(base=1, cap=8, rng=lambda: 1.0).delay(2) == 4.0
    assert Backoff(base=1, cap=8, factor=3, rng=lambda: 0.5).delay(1) == 1.5


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"base": -1}, {"base": 2, "cap": 1}, {"factor": 0.5}, {"cap": float("inf")}],
)
def test_nonsense_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff().delay(-1)
