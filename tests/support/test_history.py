"""The history checker finds each kind of anomaly in logs made bad on purpose, and nothing in
good ones."""

from __future__ import annotations

import pytest

from .history import ClientLog, PublisherLog, assert_no_findings, check


def good_client(name: str = "c") -> ClientLog:
    log = ClientLog(name)
    log.subscribed("ch", "e1", 0)
    for offset in (1, 2, 3):
        log.publication("ch", "e1", offset)
    return log


def publisher(*positions: tuple[str, int]) -> PublisherLog:
    pub = PublisherLog()
    for epoch, offset in positions:
        pub.ack("ch", epoch, offset, {"n": offset, "e": epoch})
    return pub


def kinds(clients: list[ClientLog], publishers: list[PublisherLog] | None = None) -> list:
    return [(f.client, f.kind, f.at) for f in check(clients, publishers or [])]


def test_a_clean_history_has_no_findings() -> None:
    resumed = good_client("resumed")
    resumed.subscribed("ch", "e1", 3)  # reconnected from its cursor: continues at 4
    resumed.publication("ch", "e1", 4)
    acked = publisher(("e1", 1), ("e1", 2), ("e1", 3), ("e1", 4))
    late = ClientLog("late")
    late.subscribed("ch", "e1", 2)  # started after 1 and 2: owes only what came later
    late.publication("ch", "e1", 3)
    late.publication("ch", "e1", 4)
    assert kinds([resumed, late], [acked]) == []
    assert_no_findings([resumed, late], [acked])


def test_a_real_reset_is_no_finding() -> None:
    trimmed = good_client("trimmed")
    trimmed.reset("ch", "e1", 7, "trimmed")  # 4..7 are gone: announced
    trimmed.publication("ch", "e1", 8)
    lost_epoch = good_client("epoch")
    lost_epoch.reset("ch", "e2", 0, "epoch")
    lost_epoch.publication("ch", "e2", 1)
    acked = publisher(*[("e1", n) for n in range(1, 9)], ("e2", 1))
    assert kinds([trimmed, lost_epoch], [acked]) == []


def test_a_silent_gap_is_found_at_its_first_offset() -> None:
    log = good_client()
    log.publication("ch", "e1", 6)
    log.publication("ch", "e1", 7)
    log.publication("ch", "e1", 9)
    assert kinds([log]) == [("c", "gap", ("e1", 6)), ("c", "gap", ("e1", 9))]
    with pytest.raises(AssertionError, match=r"c ch gap at \('e1', 6\)"):
        assert_no_findings([log])


def test_a_silent_epoch_change_is_found() -> None:
    log = good_client()
    log.publication("ch", "e2", 1)
    assert kinds([log]) == [("c", "silent_epoch", ("e2", 1))]


def test_a_duplicate_is_found() -> None:
    log = good_client()
    log.publication("ch", "e1", 2)
    log.publication("ch", "e1", 4)
    assert kinds([log]) == [("c", "duplicate", ("e1", 2))]


def test_reordering_is_found() -> None:
    log = ClientLog("c")
    log.subscribed("ch", "e1", 0)
    log.publication("ch", "e1", 1)
    log.publication("ch", "e1", 3)  # a gap at first sight...
    log.publication("ch", "e1", 2)  # ...then the missing one, late
    assert kinds([log]) == [("c", "gap", ("e1", 3)), ("c", "reordered", ("e1", 2))]


def test_a_reset_where_nothing_was_missed_is_found() -> None:
    nowhere = good_client("nowhere")
    nowhere.reset("ch", "e1", 3, "trimmed")
    continued = good_client("continued")
    continued.reset("ch", "e1", 5, "trimmed")
    continued.publication("ch", "e1", 4)  # the reset said 4 and 5 were gone: they were not
    assert ("nowhere", "needless_reset", ("e1", 3)) in kinds([nowhere])
    assert ("continued", "needless_reset", ("e1", 5)) in kinds([continued])


def test_a_lost_acknowledged_publication_is_found() -> None:
    tail = good_client("tail")  # never got 4 nor 5, with no gap to show for it
    acked = publisher(("e1", 1), ("e1", 2), ("e1", 3), ("e1", 4), ("e1", 5))
    assert kinds([tail], [acked]) == [("tail", "lost", ("e1", 4))]
    finding = check([tail], [acked])[0]
    assert "2 acknowledged" in finding.detail


def test_an_epoch_left_without_reset_loses_what_was_acknowledged_in_it() -> None:
    log = good_client()
    log.publication("ch", "e2", 1)  # silently moved on; e1's 4 was acknowledged
    acked = publisher(("e1", 4), ("e2", 1))
    assert kinds([log], [acked]) == [
        ("c", "silent_epoch", ("e2", 1)),
        ("c", "lost", ("e1", 4)),
    ]


def test_one_position_acknowledged_twice_is_a_conflict() -> None:
    first, second = PublisherLog("a"), PublisherLog("b")
    first.ack("ch", "e1", 1, "x")
    second.ack("ch", "e1", 1, "y")
    assert kinds([], [first, second]) == [("publishers", "conflict", ("e1", 1))]


def test_findings_are_per_client_and_channel() -> None:
    a, b = good_client("a"), good_client("b")
    b.subscribed("other", "e9", 0)
    b.publication("other", "e9", 2)
    assert kinds([a, b]) == [("b", "gap", ("e9", 2))]
