"""The resume algorithm on its own: history and buffered publications in, what to send out.

``test_resume.py`` drives the same algorithm through a hub and an engine; here each case is
one call to the pure function, so a failure names the rule that broke.
"""

from __future__ import annotations

import pytest

from clarion.core.pages import CURSOR_BYTES, fitting
from clarion.core.resume import Reset, history_reset, plan_resume, position_for, waits_ahead
from clarion.engines.base import History
from clarion.errors import BadCursor
from clarion.protocol.cursor import encode_single
from clarion.protocol.publication import Publication, StreamPosition

EPOCH = "e1"


def pub(offset: int, epoch: str = EPOCH) -> Publication:
    return Publication("c", offset, epoch, {"n": offset}, 0)


def held(first: int, top: int, *, since: int | None = None, epoch: str = EPOCH) -> History:
    """A history read of a stream holding ``first``..``top``, after ``since`` when given."""
    start = first if since is None else max(first, since + 1)
    pubs = [pub(n, epoch) for n in range(start, top + 1)] if since is not None else []
    return History(pubs, StreamPosition(epoch, top), first)


def offsets(sends: list[Publication | Reset]) -> list[int | str]:
    return [s.offset if isinstance(s, Publication) else f"reset:{s.reason}" for s in sends]


def test_no_cursor_starts_at_the_top_and_sends_only_what_came_after() -> None:
    plan = plan_resume("c", held(1, 5), None, False, [pub(5), pub(6), pub(7)])
    assert plan.recovered and plan.reset is None
    assert offsets(plan.sends) == [6, 7]  # 5 was in the stream before the subscription
    assert plan.start == StreamPosition(EPOCH, 5)
    assert plan.last == StreamPosition(EPOCH, 7)


def test_latest_sends_the_newest_stored_then_the_buffer() -> None:
    history = History([pub(5)], StreamPosition(EPOCH, 5), 1)
    plan = plan_resume("c", history, None, True, [pub(5), pub(6)])
    assert offsets(plan.sends) == [5, 6]
    assert plan.start == StreamPosition(EPOCH, 4)  # before the newest, which is sent


def test_a_covered_cursor_gets_the_gap_then_the_buffer_without_repeats() -> None:
    since = StreamPosition(EPOCH, 2)
    plan = plan_resume("c", held(1, 5, since=2), since, False, [pub(4), pub(5), pub(6)])
    assert plan.recovered
    assert offsets(plan.sends) == [3, 4, 5, 6]
    assert plan.start == since
    assert plan.last == StreamPosition(EPOCH, 6)


def test_a_cursor_at_the_top_gets_only_live_publications() -> None:
    since = StreamPosition(EPOCH, 5)
    plan = plan_resume("c", held(1, 5, since=5), since, False, [pub(6)])
    assert plan.recovered and offsets(plan.sends) == [6]


@pytest.mark.parametrize(
    ("since", "reason"),
    [
        (StreamPosition(EPOCH, 1), "trimmed"),  # 2 is gone: the stream holds 3..5
        (StreamPosition(EPOCH, 9), "position"),  # never reached
        (StreamPosition("old", 4), "epoch"),  # another stream
    ],
)
def test_an_uncovered_cursor_is_reset_to_the_top_first(since: StreamPosition, reason: str) -> None:
    history = History([], StreamPosition(EPOCH, 5), 3)
    plan = plan_resume("c", history, since, False, [pub(6)])
    assert plan.reset == reason and not plan.recovered
    assert plan.sends[0] == Reset(reason, encode_single("c", EPOCH, 5))
    assert offsets(plan.sends) == [f"reset:{reason}", 6]


def test_a_buffered_publication_of_a_new_epoch_comes_after_an_epoch_reset() -> None:
    since = StreamPosition(EPOCH, 5)
    plan = plan_resume("c", held(1, 5, since=5), since, False, [pub(1, "e2"), pub(2, "e2")])
    assert plan.sends[0] == Reset("epoch", encode_single("c", "e2", 0))
    assert offsets(plan.sends) == ["reset:epoch", 1, 2]
    assert plan.last == StreamPosition("e2", 2)


def test_waits_ahead_only_when_the_channel_is_behind_in_the_same_epoch() -> None:
    assert waits_ahead(StreamPosition(EPOCH, 3), StreamPosition(EPOCH, 5))
    assert not waits_ahead(StreamPosition(EPOCH, 5), StreamPosition(EPOCH, 5))
    assert not waits_ahead(StreamPosition(EPOCH, 6), StreamPosition(EPOCH, 5))
    assert not waits_ahead(StreamPosition("e0", 3), StreamPosition(EPOCH, 5))
    assert not waits_ahead(None, StreamPosition(EPOCH, 5))


def test_history_reset_reading_backwards_knows_no_trimming() -> None:
    history = History([], StreamPosition(EPOCH, 5), 3)
    assert history_reset(history, StreamPosition(EPOCH, 1), reverse=True) is None
    assert history_reset(history, StreamPosition(EPOCH, 1), reverse=False) == "trimmed"
    assert history_reset(history, StreamPosition(EPOCH, 6), reverse=True) is None
    assert history_reset(history, StreamPosition(EPOCH, 7), reverse=True) == "position"
    assert history_reset(history, StreamPosition("old", 2), reverse=True) == "epoch"
    assert history_reset(history, None, reverse=False) is None


def test_position_for_reads_the_channels_position_from_a_cursor() -> None:
    token = encode_single("c", EPOCH, 4)
    assert position_for("c", token) == StreamPosition(EPOCH, 4)
    with pytest.raises(BadCursor):
        position_for("other", token)


def test_a_replay_over_its_budget_stops_there_and_sends_nothing_buffered() -> None:
    size = len(pub(1).json()) + CURSOR_BYTES
    plan = plan_resume("c", held(1, 10, since=0), StreamPosition(EPOCH, 0), False,
                       [pub(10), pub(11)], budget=3 * size)  # fmt: skip
    assert plan.cut and plan.recovered
    assert offsets(plan.sends) == [1, 2, 3]
    assert plan.last == StreamPosition(EPOCH, 3)  # where the client resumes from


def test_a_replay_within_its_budget_goes_live() -> None:
    plan = plan_resume("c", held(1, 3, since=0), StreamPosition(EPOCH, 0), False, [pub(4)],
                       budget=1 << 20)  # fmt: skip
    assert not plan.cut
    assert offsets(plan.sends) == [1, 2, 3, 4]


def test_a_page_short_of_the_top_is_cut_where_it_ends_and_one_reaching_it_goes_live() -> None:
    """A page (a reader over its allowance) holds what fits, not all that is stored: where
    it ends before the top, the rest is still to come from the next resume."""
    since = StreamPosition(EPOCH, 0)
    page = History([pub(1), pub(2)], StreamPosition(EPOCH, 10), 1)
    plan = plan_resume("c", page, since, False, [pub(10), pub(11)], paged=True)
    assert plan.cut and offsets(plan.sends) == [1, 2]
    assert plan.last == StreamPosition(EPOCH, 2)
    whole = History([pub(9), pub(10)], StreamPosition(EPOCH, 10), 1)
    plan = plan_resume("c", whole, StreamPosition(EPOCH, 8), False, [pub(10), pub(11)], paged=True)
    assert not plan.cut and offsets(plan.sends) == [9, 10, 11]


def test_a_page_always_holds_one_publication_and_never_encodes_far_past_its_budget() -> None:
    pubs = [pub(n) for n in range(10, 100)]  # of one size: two-digit offsets
    assert fitting(pubs, 1) == 1
    size = len(pubs[0].json()) + CURSOR_BYTES
    assert fitting(pubs, 10 * size) == 10
    assert all(p._json is None for p in pubs[11:])  # past the cut: never encoded
    assert fitting(pubs, 1 << 30) == 90
