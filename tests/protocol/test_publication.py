"""The publication object: what it memoises, and that it never holds itself."""

from __future__ import annotations

import gc
import tracemalloc

from clarion.protocol.jsonkeep import dumps_to_keep
from clarion.protocol.publication import Publication
from clarion.protocol.stomp.message import message_body


def test_encodings_are_memoised_once_per_key() -> None:
    pub = Publication("chat:1", 1, "e", {"text": "hi"}, 0)
    calls: list[str] = []

    def encode(p: Publication) -> bytes:
        calls.append(p.channel)
        return b"frame"

    assert pub.encoded("ws", encode) == b"frame"
    assert pub.encoded("ws", encode) == b"frame"
    assert calls == ["chat:1"]
    # A second and a third format have theirs, and the first keeps its own.
    assert pub.encoded("sse", lambda p: b"event") == b"event"
    assert pub.encoded("stomp", lambda p: b"MESSAGE") == b"MESSAGE"
    assert pub.encoded("sse", encode) == b"event"
    assert pub.encoded("stomp", encode) == b"MESSAGE"
    assert pub.encoded("ws", encode) == b"frame"
    assert calls == ["chat:1"]


def test_an_encoding_that_is_the_publication_leaves_no_cycle() -> None:
    """A format whose encoding is the publication itself (STOMP's several subscriptions of one
    connection to a channel) must not memoise it: the publication would hold itself, and each
    would be freed only by the collector's walk over every live object."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        pub = Publication("chat:1", 1, "e", {"text": "hi"}, 0)
        assert pub.encoded("stomp/shared", lambda p: p) is pub
        assert pub.encoded("stomp/shared", lambda p: p) is pub
        del pub
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, Publication)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_what_a_publication_keeps_holds_its_length_not_orjsons_buffer() -> None:
    """orjson's bytes hold the buffer they were written into, 4 KiB at least: a publication's
    JSON and its STOMP body, kept as long as it stays in history, are copies of their length."""
    pubs = [Publication("chat:1", n, "e", {"text": "hi"}, 0) for n in range(500)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [
            (pub.json(), message_body(pub), dumps_to_keep({"n": n})) for n, pub in enumerate(pubs)
        ]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(pubs)
    finally:
        tracemalloc.stop()
    assert kept[0] == (
        b'{"channel":"chat:1","offset":0,"epoch":"e","data":{"text":"hi"},"time":0}',
        b'{"text":"hi"}',
        b'{"n":0}',
    )
    assert held < 600, f"{held:.0f} bytes held per publication"


def test_a_packed_publication_keeps_each_encoding_once_and_counts_it() -> None:
    """Packed, a publication keeps its JSON and its encodings, not its data's objects; one
    made later is kept too (every reader in that format gets it, not an encoding each) and its
    bytes told to the engine's meter; a repeat's copy is counted by nobody."""
    pub = Publication("c:a", 1, "e", {"x": [1, 2]}, 0)
    first = pub.encoded("frame", lambda p: b"frame:" + p.json())
    told: list[tuple[Publication, int]] = []
    held = pub.pack(lambda p, n: told.append((p, n)))
    assert held == pub.held == len(pub.json()) + len(first) and pub.packed
    assert pub.data == {"x": [1, 2]}  # read back from the JSON
    calls = []

    def event(p: Publication) -> bytes:
        calls.append(p)
        return b"event"

    assert pub.encoded("event", event) == b"event" == pub.encoded("event", event)
    assert len(calls) == 1 and told == [(pub, 5)] and pub.held == held + 5
    pub.encoded("object", lambda p: object())
    pub.encoded("object", lambda p: object())
    assert len(told) == 1  # not kept: made again each time rather than held uncounted
    repeat = pub.as_repeat()
    assert repeat.encoded("other", lambda p: b"other") == b"other" and len(told) == 1
    assert repeat.data == {"x": [1, 2]} and repeat.repeated
