"""The figures' arithmetic: latency buckets and percentile, rates per channel and namespace."""

from __future__ import annotations

from clarion.core.fanout import LocalChannel
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


def test_activity_counts_each_configured_namespace_from_the_start() -> None:
    activity = Activity({"chat", "quiet"})
    assert activity.publications == activity.deliveries == {"chat": 0, "quiet": 0, "default": 0}


def test_activity_folds_channels_into_rates_and_namespace_totals() -> None:
    activity = Activity({"chat"})
    # No such namespace as "user7" configured: it counts under the default one.
    channels = [LocalChannel(c, activity.namespace(c)) for c in ("chat:a", "plain", "user7:inbox")]
    chat, plain, inbox = channels
    for local, pubs, each in ((chat, 4, 10), (plain, 1, 3), (inbox, 1, 1)):
        local.published += pubs
        local.delivered += pubs * each
    for local in channels:
        activity.fold(local, 2.0)
    assert [c.rate for c in channels] == [2.0, 0.5, 0.5]
    assert activity.publications == {"chat": 4, "default": 2}
    assert activity.deliveries == {"chat": 40, "default": 4}
    for local in channels:  # a quiet pass: no channel is busy, the totals stay
        activity.fold(local, 1.0)
    assert [c.rate for c in channels] == [0.0, 0.0, 0.0]
    assert activity.publications["chat"] == 4
    # A channel that goes keeps what it counted since the last pass.
    chat.published += 1
    chat.delivered += 10
    activity.retire(chat)
    assert activity.publications["chat"] == 5 and activity.deliveries["chat"] == 50
