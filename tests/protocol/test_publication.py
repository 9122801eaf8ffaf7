"""The publication object: what it memoises, and that it never holds itself."""

from __future__ import annotations

import gc

from clarion.protocol.publication import Publication


def test_encodings_are_memoised_once_per_key() -> None:
    pub = Publication("chat:1", 1, "e", {"text": "hi"}, 0)
    calls: list[str] = []

    def encode(p: Publication) -> bytes:
        calls.append(p.channel)
        return b"frame"

    assert pub.encoded("ws", encode) == b"frame"
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
