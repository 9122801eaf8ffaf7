"""The STOMP frame codec: byte tables for escaping, serialising and parsing, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clarion.errors import ClarionError
from clarion.protocol.stomp import (
    Frame,
    FrameParser,
    LocalProtocolError,
    RemoteProtocolError,
    escape,
    serialise,
    unescape,
)


def parse_all(data: bytes, *, escaped: bool = True, **limits: int) -> list[Frame]:
    parser = FrameParser(escaped=escaped, **limits)
    parser.feed(data)
    frames = []
    while (got := parser.next_frame()) is not None:
        frames.append(got)
    return frames


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("chat:lobby", "chat\\clobby"),
        ("a\\b", "a\\\\b"),
        ("line\nbreak", "line\\nbreak"),
        ("cr\rhere", "cr\\rhere"),
        ("\\c", "\\\\c"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_escape_table(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped
    assert unescape(escaped) == raw


@pytest.mark.parametrize("bad", ["\\t", "a\\", "\\x41", "\\C"])
def test_undefined_escapes_are_errors(bad: str) -> None:
    with pytest.raises(RemoteProtocolError, match="undefined escape sequence"):
        unescape(bad)


@pytest.mark.parametrize(
    ("frame", "escaped", "wire"),
    [
        (Frame("RECEIPT", (("receipt-id", "r:1"),)), True, b"RECEIPT\nreceipt-id:r\\c1\n\n\0"),
        (Frame("RECEIPT", (("receipt-id", "r:1"),)), False, b"RECEIPT\nreceipt-id:r:1\n\n\0"),
        (Frame("DISCONNECT"), True, b"DISCONNECT\n\n\0"),
        (
            Frame("ERROR", (("message", "bad"),), b"oops"),
            True,
            b"ERROR\nmessage:bad\ncontent-length:4\n\noops\0",
        ),
        (
            Frame("SEND", (("content-length", "2"),), b"{}"),
            True,
            b"SEND\ncontent-length:2\n\n{}\0",
        ),
    ],
)
def test_serialise_table(frame: Frame, escaped: bool, wire: bytes) -> None:
    assert serialise(frame, escaped=escaped) == wire


def test_serialise_refuses_what_cannot_be_written() -> None:
    with pytest.raises(LocalProtocolError):
        serialise(Frame("ERROR", (("message", "two\nlines"),)), escaped=False)
    with pytest.raises(LocalProtocolError):
        serialise(Frame("ERROR", (("message", "nul\0"),)), escaped=True)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        # LF and CRLF line ends, heart-beats between frames.
        (
            b"SEND\ndestination:/topic/a\n\nhi\0",
            [Frame("SEND", (("destination", "/topic/a"),), b"hi")],
        ),
        (
            b"SEND\r\ndestination:/topic/a\r\n\r\nhi\0",
            [Frame("SEND", (("destination", "/topic/a"),), b"hi")],
        ),
        (b"\n\r\n\nACK\nid:1\n\n\0\n\n", [Frame("ACK", (("id", "1"),))]),
        # Escaped colon, repeated header (first wins through Frame.get), empty value.
        (
            b"SUBSCRIBE\ndestination:/topic/chat\\clobby\nid:x\nid:y\nreceipt:\n\n\0",
            [
                Frame(
                    "SUBSCRIBE",
                    (
                        ("destination", "/topic/chat:lobby"),
                        ("id", "x"),
                        ("id", "y"),
                        ("receipt", ""),
                    ),
                )
            ],
        ),
        # content-length lets the body hold NUL octets.
        (b"SEND\ncontent-length:3\n\na\0b\0", [Frame("SEND", (("content-length", "3"),), b"a\0b")]),
        # Two frames in one message.
        (b"BEGIN\n\n\0COMMIT\n\n\0", [Frame("BEGIN"), Frame("COMMIT")]),
    ],
)
def test_parse_table(wire: bytes, expected: list[Frame]) -> None:
    assert parse_all(wire) == expected


def test_unescaped_mode_keeps_colons_and_backslashes() -> None:
    (got,) = parse_all(b"CONNECT\npasscode:a:b\\c\n\n\0", escaped=False)
    assert got.get("passcode") == "a:b\\c"


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (
            b"SEND\ndestination /topic/a\n\n\0",
            "header line without a colon: 'destination /topic/a'",
        ),
        (b"SEND\n:x\n\n\0", "header with an empty name"),
        (b"send\n\n\0", "not a STOMP command: 'send'"),
        (b"SEND\ncontent-length:x\n\n\0", "invalid content-length 'x'"),
        (b"SEND\ncontent-length:-1\n\n\0", "invalid content-length '-1'"),
        (
            b"SEND\ncontent-length:2\n\nabc\0",
            "frame body is not followed by NUL after content-length octets",
        ),
        (
            b"SEND\ndestination:/topic/a\0",
            "a frame ended (NUL) before the blank line after its headers",
        ),
        (b"SEND\nx:\\t\n\n\0", "undefined escape sequence '\\\\t' in a header"),
        (b"SEND\nx:\xff\n\n\0", "frame headers are not valid UTF-8"),
        (b"\rSEND\n\n\0", "a CR octet not followed by LF"),
        (b"SEND\nreceipt:a\rb\n\n\0", "a CR octet not followed by LF"),
    ],
)
def test_parse_errors(wire: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_all(wire)
    assert info.value.message == message
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize(
    ("wire", "limits", "message"),
    [
        (b"SEND\n" + b"h:v\n" * 5 + b"\n\0", {"max_headers": 4}, "frame has over 4 headers"),
        (
            b"SEND\nh:" + b"v" * 100 + b"\n\n\0",
            {"max_header_bytes": 64},
            "frame headers are over 64 bytes",
        ),
        (b"SEND\nh:" + b"v" * 100, {"max_header_bytes": 64}, "frame headers are over 64 bytes"),
        (b"SEND\ncontent-length:100\n\n", {"max_frame_bytes": 64}, "frame is over 64 bytes"),
        (b"SEND\n\n" + b"x" * 100, {"max_frame_bytes": 64}, "frame is over 64 bytes"),
        (b"SEND\n\n" + b"x" * 100 + b"\0", {"max_frame_bytes": 64}, "frame is over 64 bytes"),
    ],
)
def test_limits(wire: bytes, limits: dict[str, int], message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_all(wire, **limits)
    assert info.value.message == message
    assert info.value.code == "too_large"


def test_a_frame_exactly_at_the_limit_passes() -> None:
    wire = b"SEND\n\n" + b"x" * 57 + b"\0"
    assert len(wire) == 64
    (got,) = parse_all(wire, max_frame_bytes=64)
    assert got.body == b"x" * 57


def test_byte_by_byte_feeding_gives_the_same_frames() -> None:
    wire = (
        b"\r\nCONNECT\r\naccept-version:1.2\r\n\r\n\0\n"
        b"SEND\ncontent-length:5\ndestination:/topic/a\n\nab\0cd\0"
        b"SEND\ndestination:/topic/b\n\nxyz\0\n"
    )
    parser = FrameParser(escaped=True)
    frames = []
    for byte in wire:
        parser.feed(bytes((byte,)))
        while (got := parser.next_frame()) is not None:
            frames.append(got)
    assert frames == parse_all(wire)
    assert [f.command for f in frames] == ["CONNECT", "SEND", "SEND"]
    assert parser.pending == 0


def test_pending_counts_an_unfinished_frame_but_not_heart_beats() -> None:
    parser = FrameParser()
    parser.feed(b"\n\n\r\n")
    assert parser.next_frame() is None and parser.pending == 0
    parser.feed(b"SEND\n\nhalf")
    assert parser.next_frame() is None and parser.pending == len(b"SEND\n\nhalf")
    parser.feed(b"\0")
    assert parser.next_frame() == Frame("SEND", (), b"half") and parser.pending == 0


def test_a_broken_parser_stays_broken() -> None:
    parser = FrameParser()
    parser.feed(b"nope\n\n\0")
    with pytest.raises(RemoteProtocolError) as first:
        parser.next_frame()
    with pytest.raises(RemoteProtocolError) as again:
        parser.feed(b"SEND\n\n\0")
    assert again.value is first.value


header_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20
)  # any character but NUL, colons and line breaks included: escaping must carry them
frames = st.builds(
    Frame,
    st.sampled_from(["SEND", "MESSAGE", "ERROR", "RECEIPT", "SUBSCRIBE"]),
    # content-length is serialise's to write: a drawn one would not describe the body.
    st.lists(
        st.tuples(header_text.filter(lambda name: name not in ("", "content-length")), header_text),
        max_size=6,
    ).map(tuple),
    st.binary(max_size=200),
)


@given(st.lists(frames, min_size=1, max_size=4), st.integers(1, 50))
def test_round_trip_in_any_chunking(sent: list[Frame], chunk: int) -> None:
    wire = b"\n".join(serialise(f, escaped=True) for f in sent)
    parser = FrameParser(escaped=True, max_frame_bytes=1 << 20, max_header_bytes=1 << 16)
    got: list[Frame] = []
    for i in range(0, len(wire), chunk):
        parser.feed(wire[i : i + chunk])
        while (f := parser.next_frame()) is not None:
            got.append(f)
    assert len(got) == len(sent)
    for before, after in zip(sent, got, strict=True):
        assert after.command == before.command and after.body == before.body
        # serialise adds content-length to a frame with a body: compare what was given.
        assert after.headers[: len(before.headers)] == before.headers


DOCUMENTED_CODES = {"bad_frame", "too_large"}


@given(st.binary(max_size=400), st.booleans())
def test_any_bytes_parse_or_fail_with_a_documented_error(data: bytes, escaped: bool) -> None:
    parser = FrameParser(escaped=escaped, max_frame_bytes=256, max_headers=8, max_header_bytes=128)
    try:
        parser.feed(data)
        while parser.next_frame() is not None:
            pass
    except ClarionError as exc:
        assert isinstance(exc, RemoteProtocolError)
        assert exc.code in DOCUMENTED_CODES


@given(
    st.lists(
        st.sampled_from(
            [b"SEND\n", b"a:b\n", b"\n", b"\r\n", b"\0", b"x", b"\\c", b":", b"content-length:3\n"]
        ),
        max_size=40,
    )
)
def test_stomp_like_bytes_parse_or_fail_with_a_documented_error(parts: list[bytes]) -> None:
    parser = FrameParser(escaped=True, max_frame_bytes=256)
    try:
        for part in parts:
            parser.feed(part)
            while parser.next_frame() is not None:
                pass
    except RemoteProtocolError as exc:
        assert exc.code in DOCUMENTED_CODES
