import base64
import contextlib
from hashlib import blake2b

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clarion.errors import BadCursor
from clarion.protocol.cursor import Cursor, Positions, channel_tag, encode_entries, encode_single
from clarion.protocol.publication import StreamPosition

channels = st.from_regex(r"[A-Za-z0-9_.:@/=,+\-]{1,40}", fullmatch=True)
epochs = st.from_regex(r"[0-9a-f]{1,16}", fullmatch=True)
positions = st.builds(StreamPosition, epochs, st.integers(0, 2**62))


@given(st.dictionaries(channels, positions, min_size=1, max_size=20))
def test_round_trip(mapping: dict[str, StreamPosition]) -> None:
    token = Cursor.of(mapping).encode()
    assert token.isascii() and "=" not in token and "+" not in token and "/" not in token
    decoded = Cursor.decode(token)
    for channel, position in mapping.items():
        assert decoded.get(channel) == position
    assert len(decoded) == len(mapping)


# A stream's positions changed one at a time: a few channels, so that they move, leave and
# come back.
changes = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "chat:d"]), st.none() | positions), max_size=40
)


@given(changes)
def test_positions_kept_encoded_are_the_cursor_of_the_same_items(steps: list) -> None:
    """An SSE stream's ``id:`` is built from entries encoded as they move: the same token as
    one built from scratch, whatever moved, left or came back, and in what order."""
    kept = Positions()
    plain: dict[bytes, StreamPosition] = {}
    for channel, position in steps:
        tag = channel_tag(channel)
        if position is None:
            kept.pop(tag)
            plain.pop(tag, None)
        else:
            kept[tag] = position
            plain[tag] = position
        assert len(kept) == len(plain) and dict(kept.items()) == plain
        if plain:
            assert kept.encode() == encode_entries(plain.items())
            assert Cursor.decode(kept.encode()) == Cursor(plain)


@given(st.text(max_size=200))
def test_any_text_is_a_cursor_or_bad_cursor(text: str) -> None:
    try:
        Cursor.decode(text)
    except BadCursor as exc:
        assert exc.code == "bad_cursor" and exc.message


@given(st.binary(min_size=1, max_size=200))
def test_any_bytes_is_a_cursor_or_bad_cursor(raw: bytes) -> None:
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    with contextlib.suppress(BadCursor):
        Cursor.decode(token)


@given(channels, positions, st.data())
def test_tampering_is_detected(channel: str, position: StreamPosition, data: st.DataObject) -> None:
    token = Cursor.single(channel, position).encode()
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    index = data.draw(st.integers(0, len(raw) - 1))
    flip = data.draw(st.integers(1, 255))
    raw[index] ^= flip
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(BadCursor):
        Cursor.decode(tampered)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "cursor is empty"),
        ("!!!!", "cursor is not valid base64url"),
        ("AQ", "cursor is truncated"),
        ("x" * 20000, "cursor is too long"),
    ],
)
def test_garbage(token: str, message: str) -> None:
    with pytest.raises(BadCursor, match=message):
        Cursor.decode(token)


def test_not_a_string() -> None:
    with pytest.raises(BadCursor):
        Cursor.decode(123)


def test_truncation_is_detected() -> None:
    token = encode_single("chat:lobby", "abc", 42)
    for cut in range(1, len(token)):
        with pytest.raises(BadCursor):
            Cursor.decode(token[:cut])


def test_channel_binding() -> None:
    cursor = Cursor.decode(encode_single("chat:a", "e1", 5))
    assert cursor.get("chat:a") == StreamPosition("e1", 5)
    assert cursor.get("chat:b") is None
    assert channel_tag("chat:a") != channel_tag("chat:b")


def test_with_position_and_covers() -> None:
    cursor = Cursor.single("a", StreamPosition("e", 1)).with_position("b", StreamPosition("e", 2))
    assert cursor.covers(["a", "b"]) and not cursor.covers(["a", "c"])
    assert Cursor.decode(cursor.encode()) == cursor


def test_known_bytes() -> None:
    # The layout is part of the contract between nodes of different versions: pin it.
    token = encode_single("chat:lobby", "0123456789ab", 3)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert raw[0] == 1  # version
    assert raw[1] == 1  # one channel
    assert raw[2:10] == channel_tag("chat:lobby")
    assert raw[10] == 12 and raw[11:23] == b"0123456789ab"
    assert raw[23] == 3  # varint offset
    assert len(raw) == 24 + 4  # + checksum


@given(st.lists(st.tuples(channels, epochs, st.integers(0, 2**62)), min_size=1, max_size=30))
def test_single_cursor_is_the_general_encoding(entries: list[tuple[str, str, int]]) -> None:
    # encode_single keeps per-(channel, epoch) prefixes: whatever it kept, the bytes are those
    # of the general encoder, and they decode to the position given.
    for channel, epoch, offset in entries + entries:
        token = encode_single(channel, epoch, offset)
        assert token == Cursor.single(channel, StreamPosition(epoch, offset)).encode()
        assert Cursor.decode(token).get(channel) == StreamPosition(epoch, offset)


def _forged(epoch: bytes, channels: int = 2) -> str:
    """A cursor in the documented layout, whatever its epoch's length (up to the u8's 255)."""
    body = bytearray((1, channels))
    for n in range(channels):
        body += channel_tag(f"ch:{n}") + bytes((len(epoch),)) + epoch + b"\x00"
    body += blake2b(bytes(body), digest_size=4, person=b"clarion.cursor").digest()
    return base64.urlsafe_b64encode(bytes(body)).rstrip(b"=").decode()


@pytest.mark.parametrize("length", [0, 1, 64, 65, 100, 255])
def test_a_cursor_decodes_exactly_when_it_could_be_encoded(length: int) -> None:
    epoch = b"e" * length
    try:
        Cursor({channel_tag("ch:0"): StreamPosition(epoch.decode(), 0)}).encode()
    except ValueError:
        encodable = False
    else:
        encodable = True
    assert encodable == (1 <= length <= 64)
    if encodable:
        assert Cursor.decode(_forged(epoch)).get("ch:1") == StreamPosition(epoch.decode(), 0)
    else:
        with pytest.raises(BadCursor):
            Cursor.decode(_forged(epoch))
