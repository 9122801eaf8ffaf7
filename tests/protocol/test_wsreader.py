"""The inbound WebSocket frame reader: byte tables, and properties over random streams."""

from __future__ import annotations

import os
import random
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clarion.protocol.wsreader import (
    FRAMES_PER_CALL,
    INFLATED_PER_CALL,
    LATE_FRAMES,
    Closed,
    Event,
    FrameReader,
    Pong,
    _apply_mask_py,
    apply_mask,
    close_frame,
)

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# Mask keys from a seeded generator: the tables below are built at collection and their bytes
# are the tests' ids, which every pytest-xdist worker must collect alike.
MASK_KEYS = random.Random(6455)


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """A client frame (masked unless told otherwise)."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 1 << 16:
        head = bytes((first, (0x80 if mask else 0) | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, (0x80 if mask else 0) | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = MASK_KEYS.randbytes(4)
    return head + key + _apply_mask_py(payload, key)


def read(data: bytes, max_size: int = 1 << 20) -> list[Event]:
    return FrameReader(max_size).receive_data(data)


def failure(events: list[Event]) -> tuple[int, bytes | None]:
    last = events[-1]
    assert isinstance(last, Closed) and last.failed
    return last.code, last.frame


# ---- byte tables ---------------------------------------------------------------------------


def test_messages_whole_and_fragmented() -> None:
    data = (
        frame(TEXT, "héllo".encode())
        + frame(BINARY, b"\x00\xff")
        + frame(TEXT, b"frag", fin=False)
        + frame(CONT, b"men", fin=False)
        + frame(CONT, b"t")
        + frame(BINARY, b"a", fin=False)
        + frame(CONT, b"b")
        + frame(TEXT, b"")
    )
    assert read(data) == ["héllo", b"\x00\xff", "fragment", b"ab", ""]


def test_lengths_of_16_and_64_bits() -> None:
    assert read(frame(BINARY, b"x" * 300)) == [b"x" * 300]
    assert read(frame(BINARY, b"y" * 70000)) == [b"y" * 70000]


def test_ping_is_answered_pong_ignored_even_between_fragments() -> None:
    data = frame(TEXT, b"a", fin=False) + frame(PING, b"hi") + frame(PONG, b"x") + frame(CONT, b"b")
    assert read(data) == [Pong(b"\x8a\x02hi"), "ab"]


@pytest.mark.parametrize(
    ("payload", "code", "reason", "echo"),
    [
        (b"", 1005, "", b"\x88\x00"),
        (b"\x03\xe8", 1000, "", b"\x88\x02\x03\xe8"),
        (b"\x0f\xa0bye", 4000, "bye", b"\x88\x05\x0f\xa0bye"),
    ],
)
def test_the_peers_close_is_echoed(payload: bytes, code: int, reason: str, echo: bytes) -> None:
    reader = FrameReader(100)
    assert reader.receive_data(frame(CLOSE, payload) + frame(TEXT, b"late")) == [
        Closed(code, reason, echo)
    ]
    assert reader.receive_data(frame(TEXT, b"later")) == []  # over: nothing more is read


def test_the_answer_to_our_close_is_not_echoed() -> None:
    reader = FrameReader(100)
    assert reader.send_close(1001, "away") == b"\x88\x06\x03\xe9away"
    # Messages still come until the peer's close.
    assert reader.receive_data(frame(TEXT, b"x") + frame(CLOSE, b"\x03\xe9")) == [
        "x",
        Closed(1001, "", None),
    ]


def test_a_close_between_fragments_is_a_normal_close() -> None:
    # RFC 6455 §5.4: control frames may come between fragments (Autobahn case 7.1.5).
    data = frame(TEXT, b"frag", fin=False) + frame(CLOSE, b"\x03\xe8") + frame(CONT, b"ment")
    assert read(data) == [Closed(1000, "", b"\x88\x02\x03\xe8")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(TEXT, b"x", mask=False), 1002),  # clients must mask
        (frame(TEXT, b"x", rsv=0x40), 1002),  # no extension negotiated
        (frame(TEXT, b"x", rsv=0x10), 1002),
        (frame(0x3, b"x"), 1002),  # reserved data opcode
        (frame(0xB, b""), 1002),  # reserved control opcode
        (frame(PING, b"x", fin=False), 1002),  # fragmented control frame
        (frame(PING, b"x" * 126), 1002),  # control frame too long
        (frame(CONT, b"x"), 1002),  # nothing to continue
        (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),  # expected a continuation
        (frame(CLOSE, b"\x03"), 1002),  # a one-byte close payload
        (frame(CLOSE, b"\x03\xed"), 1002),  # 1005 is never sent
        (frame(CLOSE, b"\x00\x00"), 1002),
        (frame(CLOSE, b"\x13\x88"), 1002),  # 5000
        (frame(CLOSE, b"\x03\xe8\xff"), 1007),  # reason not UTF-8
        (frame(TEXT, b"\xff"), 1007),
        (frame(TEXT, b"ok", fin=False) + frame(CONT, b"\xc3\x28", fin=False), 1007),
        (b"\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00", 1002),  # 64-bit length over 2**63
    ],
)
def test_protocol_errors_fail_the_connection(data: bytes, code: int) -> None:
    events = read(data)
    got, close = failure(events)
    assert got == code
    assert close is not None and close[:4] == b"\x88" + bytes((close[1],)) + code.to_bytes(2, "big")


def test_invalid_utf8_fails_at_the_first_bad_fragment() -> None:
    reader = FrameReader(100)
    events = reader.receive_data(frame(TEXT, b"\xce", fin=False))  # could still be valid
    assert events == []
    events = reader.receive_data(frame(CONT, b"\xff", fin=False))  # cannot: fail now
    assert failure(events)[0] == 1007


def test_a_message_over_max_size_fails_before_its_payload_arrives() -> None:
    reader = FrameReader(1000)
    head = frame(BINARY, b"z" * 5000)[:14]  # the header (and mask) alone
    assert failure(reader.receive_data(head))[0] == 1009
    reader = FrameReader(1000)
    reader.receive_data(frame(BINARY, b"z" * 600, fin=False))
    assert failure(reader.receive_data(frame(CONT, b"z" * 600)))[0] == 1009
    assert read(frame(BINARY, b"z" * 1000), max_size=1000) == [b"z" * 1000]


def test_after_our_close_a_failure_sends_no_second_close_frame() -> None:
    reader = FrameReader(100)
    reader.send_close(1000)
    assert reader.receive_data(frame(TEXT, b"\xff")) == [
        Closed(1007, "invalid start byte at position 0", None, failed=True)
    ]


def test_close_codes_and_frames() -> None:
    reader = FrameReader(10)
    with pytest.raises(ValueError):
        reader.send_close(1005)
    with pytest.raises(ValueError):
        close_frame(1000, "x" * 124)
    assert close_frame(None) == b"\x88\x00"


def test_eof_drops_what_is_unfinished() -> None:
    reader = FrameReader(100)
    assert reader.receive_data(frame(TEXT, b"abc")[:4]) == []
    reader.receive_eof()
    assert reader.receive_data(b"") == []


def test_the_c_mask_and_the_python_one_agree() -> None:
    for n in range(40):
        data, key = os.urandom(n), os.urandom(4)
        expected = bytes(b ^ key[i % 4] for i, b in enumerate(data))
        assert apply_mask(data, key) == _apply_mask_py(data, key) == expected


# ---- properties ----------------------------------------------------------------------------

messages = st.lists(
    st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=1, max_size=8
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """Random messages cut into random fragments with pings between them: bytes, events."""
    data = bytearray()
    expected: list[Event] = []
    for message in draw(messages):
        raw = message.encode() if isinstance(message, str) else message
        opcode = TEXT if isinstance(message, str) else BINARY
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            data += frame(opcode if i == 0 else CONT, piece, fin=last)
            if last:
                expected.append(message)
            if draw(st.booleans()):
                ping = draw(st.binary(max_size=10))
                data += frame(PING, ping)
                expected.append(Pong(bytes((0x8A, len(ping))) + ping))
    return bytes(data), expected


@settings(max_examples=200)
@given(streams(), st.lists(st.integers(1, 64), max_size=30))
def test_any_fragmentation_and_any_chunking_give_the_same_messages(
    stream: tuple[bytes, list[Event]], sizes: list[int]
) -> None:
    data, expected = stream
    reader = FrameReader(1 << 20)
    events: list[Event] = []
    pos = 0
    for size in sizes:
        events += reader.receive_data(data[pos : pos + size])
        pos += size
    events += reader.receive_data(data[pos:])
    assert events == expected


@settings(max_examples=500)
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=10))
def test_any_bytes_give_events_and_at_most_one_close_last(data: bytes, sizes: list[int]) -> None:
    # The fuzz oracle: never an exception, at most one Closed and nothing after it, and the
    # same events however the bytes are cut.
    whole = FrameReader(200).receive_data(data)
    reader = FrameReader(200)
    events: list[Event] = []
    pos = 0
    for size in [*sizes, len(data)]:
        events += reader.receive_data(data[pos : pos + size])
        pos += size
    assert events == whole
    closes = [i for i, event in enumerate(events) if isinstance(event, Closed)]
    assert closes in ([], [len(events) - 1])
    for event in events:
        assert isinstance(event, str | bytes | Pong | Closed)


# ---- permessage-deflate ----------------------------------------------------------------------


def deflated(data: bytes) -> bytes:
    """``data`` as a permessage-deflate message body (RFC 7692 §7.2.1: the trailer removed)."""
    z = zlib.compressobj(wbits=-15)
    body = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(b"\x00\x00\xff\xff")
    return body[:-4]


def test_compressed_messages_whole_and_fragmented() -> None:
    text = "compressed ünïcode " * 20
    body = deflated(text.encode())
    data = (
        frame(TEXT, body, rsv=0x40)
        + frame(BINARY, body[:5], fin=False, rsv=0x40)
        + frame(PING, b"p")
        + frame(CONT, body[5:])
        + frame(TEXT, b"plain")  # uncompressed messages stay allowed
    )
    events = FrameReader(1 << 16, inflate=True).receive_data(data)
    assert events == [text, Pong(b"\x8a\x01p"), text.encode(), "plain"]


@pytest.mark.parametrize(
    ("data", "inflate", "code"),
    [
        (frame(TEXT, deflated(b"x"), rsv=0x40), False, 1002),  # not negotiated
        (frame(TEXT, b"a", fin=False) + frame(CONT, deflated(b"b"), rsv=0x40), True, 1002),
        (frame(PING, b"", rsv=0x40), True, 1002),
        (frame(TEXT, deflated(b"x"), rsv=0x60), True, 1002),
        (frame(TEXT, b"\xff\xff\xff", rsv=0x40), True, 1002),  # not deflate data
        (frame(TEXT, deflated(b"\xff"), rsv=0x40), True, 1007),
        (frame(BINARY, deflated(b"\x00" * 5000), rsv=0x40), True, 1009),  # a small bomb
    ],
)
def test_compressed_protocol_errors(data: bytes, inflate: bool, code: int) -> None:
    assert failure(FrameReader(1000, inflate=inflate).receive_data(data))[0] == code


# ---- the budget of one call ----------------------------------------------------------------


def drained(reader: FrameReader, data: bytes) -> tuple[list[int], list[Event]]:
    """Events per call: the bytes, then ``b""`` while the reader has a backlog."""
    per_call = []
    events = reader.receive_data(data)
    per_call.append(len(events))
    while reader.backlog:
        more = reader.receive_data(b"")
        per_call.append(len(more))
        events += more
    return per_call, events


def test_a_call_parses_at_most_its_budget_of_frames_and_the_rest_waits() -> None:
    pings = frame(PING, b"") * 150
    last = frame(TEXT, b"last")
    reader = FrameReader(100)
    per_call, events = drained(reader, pings + last[:3])
    assert per_call == [FRAMES_PER_CALL, FRAMES_PER_CALL, 150 - 2 * FRAMES_PER_CALL]
    assert events == [Pong(b"\x8a\x00")] * 150
    # The unfinished frame stays buffered; new bytes after a backlog go on from where it was.
    assert reader.receive_data(last[3:]) == ["last"]
    reader = FrameReader(100)
    assert len(reader.receive_data(pings)) == FRAMES_PER_CALL
    late = reader.receive_data(frame(TEXT, b"late"))
    assert len(late) == FRAMES_PER_CALL and reader.backlog
    assert drained(reader, b"")[1][-1] == "late"


def test_a_call_stops_after_its_budget_of_inflated_bytes() -> None:
    big = frame(TEXT, deflated(b"a" * 60000), rsv=0x40)
    reader = FrameReader(1 << 16, inflate=True)
    per_call, events = drained(reader, big * 20)
    assert events == ["a" * 60000] * 20
    assert max(per_call) <= INFLATED_PER_CALL // 60000 + 1 < 20


def test_empty_fragments_are_bounded_in_number() -> None:
    reader = FrameReader(64 * 100)
    assert reader.max_fragments == 100
    data = frame(TEXT, b"x", fin=False) + frame(CONT, b"", fin=False) * 98
    assert drained(reader, data + frame(CONT, b"y"))[1] == ["xy"]  # 100 fragments
    reader = FrameReader(64 * 100)
    _, events = drained(reader, data + frame(CONT, b"", fin=False) * 2)
    assert failure(events)[0] == 1009


def test_a_compressed_message_is_bounded_on_the_wire_whatever_it_inflates_to() -> None:
    """Empty stored blocks inflate to nothing: fragments of them would add no byte to the
    message's inflated size, but each costs its bytes on the wire."""
    reader = FrameReader(max_size=65536, inflate=True)
    empty_blocks = b"\x00\x00\x00\xff\xff" * 12_000  # 60,000 bytes, inflating to nothing
    events = reader.receive_data(frame(0x1, empty_blocks, fin=False, rsv=0x40))
    assert events == []
    events = reader.receive_data(frame(0x0, empty_blocks, fin=False))
    assert isinstance(events[-1], Closed), events
    assert events[-1].code == 1009, events


def test_bytes_after_a_compressed_message_s_end_fail_the_connection() -> None:
    reader = FrameReader(max_size=65536, inflate=True)
    assert reader.receive_data(frame(0x1, b"\x03\x00", fin=False, rsv=0x40)) == []
    events = reader.receive_data(frame(0x0, b" " * 1000, fin=False))
    assert isinstance(events[-1], Closed), events
    assert events[-1].code == 1002, events


def test_after_our_close_the_peer_s_data_frames_are_skipped_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a peer sent before it saw the hub's close is still handled; past that, its data
    frames until its own close are skipped, not parsed, decoded or handed on: a peer that keeps
    sending makes the hub do no more work for a connection it ended."""
    handled: list[int] = []
    frame_of = FrameReader._frame

    def counting(self: FrameReader, events: list[Event], fin: int, opcode: int, *rest: Any) -> bool:
        handled.append(opcode)
        return frame_of(self, events, fin, opcode, *rest)

    monkeypatch.setattr(FrameReader, "_frame", counting)
    reader = FrameReader(max_size=1000, inflate=True)
    reader.send_close(4505, "slow down")
    text = frame(0x1, b'{"op":"subscribe","channel":"a"}')
    events: list[Event] = []
    for _ in range(LATE_FRAMES):
        events += reader.receive_data(text)
    assert events == ['{"op":"subscribe","channel":"a"}'] * LATE_FRAMES
    handled.clear()
    invalid = frame(0x1, b"\xff\xfe")  # not UTF-8: it would fail the connection if read
    fragments = frame(0x1, b"x", fin=False) + frame(0x0, b"y")
    for _ in range(10):
        assert reader.receive_data(text + invalid + fragments) == []
    assert handled == []
    # Its close still ends the connection.
    events = reader.receive_data(frame(0x8, (1000).to_bytes(2, "big")))
    assert isinstance(events[-1], Closed) and events[-1].code == 1000
    assert handled == [0x8]


def test_after_our_close_a_frame_over_the_limit_still_fails_the_connection() -> None:
    reader = FrameReader(max_size=1000)
    reader.send_close(4505, "slow down")
    for _ in range(LATE_FRAMES):
        reader.receive_data(frame(0x1, b"{}"))
    events = reader.receive_data(bytes((0x81, 0x80 | 127)) + (1 << 40).to_bytes(8, "big"))
    assert isinstance(events[-1], Closed) and events[-1].code == 1009
