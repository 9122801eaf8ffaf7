"""The figures' arithmetic: latency buckets and percentile, rates per channel and namespace."""

from __future__ import annotations

from clarion.core.rates import Activity, LatencyHistogram


def test_histogram_buckets_are_cumulative_and_p99_is_per_interval() -> None:
    histogram = LatencyHistogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.005, 0.05, 0.5, -1.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.001", 3), ("0.01", 4), ("0.1", 5), ("+Inf", 6)]
    assert histogram.count == 6 and abs(histogram.sum - 0.5565) < 1e-9
    assert histogram.take_p99() == 0.5
    assert histogram.take_p99() is None  # the interval was taken
    for n in range(100):
        histogram.observe(n / 1000)
    assert histogram.take_p99() == 0.099


def test_activity_rolls_into_rates_and_namespace_totals() -> None:
    activity = Activity({"chat"})
    for _ in range(4):
        activity.count("chat:a", 10)
    activity.count("plain", 3)
    activity.count("user7:inbox", 1)  # no such namespace configured: the default's
    activity.roll(2.0)
    assert activity.channel_rates == {
        "chat:a": (2.0, 20.0),
        "plain": (0.5, 1.5),
        "user7:inbox": (0.5, 0.5),
    }
    assert activity.publications == {"chat": 4, "default": 2}
    assert activity.deliveries == {"chat": 40, "default": 4}
    activity.roll(1.0)  # a quiet second: no channel is busy, the totals stay
    assert activity.channel_rates == {} and activity.publications["chat"] == 4
