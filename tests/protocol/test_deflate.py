"""permessage-deflate: the hub's answers to offers, its compressed messages, and its inflation."""

from __future__ import annotations

import random
import zlib

import pytest

from clarion.protocol import deflate
from clarion.protocol.deflate import InflateError, Inflater, TooBig, negotiate
from clarion.protocol.frames import OP_BINARY, OP_TEXT

NO_TAKEOVER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
CHAT = (
    b'{"channel":"chat:lobby","offset":1234,"epoch":"k3j2h1","data":{"user":"alice","text":'
    b'"Anyone up for lunch at the new ramen place on 5th? I heard they have a vegetarian '
    b'broth now."},"time":1796228769002,"cursor":"AQHmoawCdSlKSwZrM2oyaDHSCdH9e8g"}'
)


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",  # browsers, websockets
        "permessage-deflate; client_max_window_bits=10",
        'permessage-deflate; client_max_window_bits="12"',
        "permessage-deflate; client_no_context_takeover; client_max_window_bits",  # Autobahn
        "permessage-deflate; server_no_context_takeover",
        "Permessage-Deflate ; Server_No_Context_Takeover",
    ],
)
def test_offers_get_no_context_takeover_both_ways(offer: str) -> None:
    agreement = negotiate([offer])
    assert agreement is not None
    assert agreement.response == NO_TAKEOVER
    assert agreement.window_bits == 15


@pytest.mark.parametrize("bits", range(8, 16))
def test_a_server_window_asked_for_is_granted_and_said(bits: int) -> None:
    agreement = negotiate([f"permessage-deflate; server_max_window_bits={bits}"])
    assert agreement is not None
    assert agreement.window_bits == bits
    assert agreement.response == f"{NO_TAKEOVER}; server_max_window_bits={bits}"


@pytest.mark.parametrize(
    "offer",
    [
        "x-webkit-deflate-frame",
        "permessage-deflate; server_max_window_bits",  # a value is required
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=09",
        "permessage-deflate; client_max_window_bits=20",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; mystery",
        "permessage-deflate;; client_max_window_bits",
    ],
)
def test_malformed_or_unknown_offers_are_declined(offer: str) -> None:
    assert negotiate([offer]) is None


def test_the_first_acceptable_offer_wins_across_header_lines() -> None:
    offers = [
        "foo, permessage-deflate; server_max_window_bits=99",
        "permessage-deflate; server_max_window_bits=10, permessage-deflate",
    ]
    agreement = negotiate(offers)
    assert agreement is not None and agreement.window_bits == 10
    assert negotiate([]) is None


def _inflate(data: bytes, bits: int = 15) -> bytes:
    return zlib.decompressobj(-bits).decompress(data + deflate.TRAILER)


@pytest.mark.parametrize("bits", range(8, 16))
def test_compressed_messages_inflate_within_their_window(bits: int) -> None:
    payloads = [CHAT, CHAT * 40, b"a" * 300, b"ab" * 5000]
    for payload in payloads:
        data = deflate.compress(payload, bits)
        if data is None:
            # Only an 8-bit window (zlib compresses within 9 at least) leaves longer ones as is.
            assert bits == 8 and len(payload) > 256
            continue
        assert len(data) < len(payload)
        assert _inflate(data, bits) == payload


def test_each_message_stands_alone() -> None:
    # server_no_context_takeover: the second message must not refer back to the first, so it
    # inflates on a fresh inflater, and compresses to the same bytes every time.
    first = deflate.compress(CHAT)
    second = deflate.compress(CHAT)
    assert first is not None and first == second
    assert _inflate(second) == CHAT


def test_short_or_incompressible_messages_go_as_they_are() -> None:
    assert deflate.compress(b"x" * (deflate.MIN_SIZE - 1)) is None
    assert deflate.compress(b"x" * deflate.MIN_SIZE) is not None
    noise = zlib.compress(CHAT * 3)  # already compressed
    assert deflate.compress(noise) is None
    assert deflate.frame(b'{"t":1}') == b'\x81\x07{"t":1}'


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_frames_carry_rsv1_only_when_compressed(opcode: int) -> None:
    frame = deflate.frame(CHAT * 4, opcode)
    assert frame[0] == 0x80 | 0x40 | opcode
    length = frame[1] if frame[1] < 126 else int.from_bytes(frame[2:4])
    body = frame[2 if frame[1] < 126 else 4 :]
    assert len(body) == length
    assert _inflate(body) == CHAT * 4
    assert deflate.frame(b"short", opcode)[0] == 0x80 | opcode


def test_a_stored_prefix_goes_in_front_of_a_compressed_tail() -> None:
    tail = deflate.compress(CHAT)
    assert tail is not None
    for prefix in (b"", b"MESSAGE\nsubscription:sub-0\n", b"p" * 65535):
        assert _inflate(deflate.stored_block(prefix) + tail) == prefix + CHAT


def _client_compress(payload: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_inflating_a_message_in_fragments() -> None:
    payload = CHAT * 50
    data = _client_compress(payload)
    inflater = Inflater()
    out = b"".join(
        inflater.feed(data[i : i + 7], i + 7 >= len(data), len(payload))
        for i in range(0, len(data), 7)
    )
    assert out == payload
    assert deflate.inflate(data, None) == payload


@pytest.mark.parametrize("size", [65537, 1 << 20, 64 << 20])
def test_a_bomb_stops_one_byte_past_the_limit(size: int) -> None:
    bomb = _client_compress(b"\0" * size)
    assert len(bomb) < size // 500
    with pytest.raises(TooBig):
        deflate.inflate(bomb, 65536)
    assert len(deflate.inflate(_client_compress(b"\0" * 65536), 65536)) == 65536


def test_a_bomb_in_fragments_counts_against_what_is_left() -> None:
    # The parser passes each fragment what the message has left of its budget.
    data = _client_compress(b"\0" * 100_000)
    inflater = Inflater()
    left = 65536
    with pytest.raises(TooBig):
        for i in range(0, len(data), 10):
            left -= len(inflater.feed(data[i : i + 10], i + 10 >= len(data), left))


@pytest.mark.parametrize(
    "data", [b"\xff\xff\xff", b"\x07" + b"\0" * 10, _client_compress(CHAT)[:-1] + b"\xfe"]
)
def test_invalid_data_is_refused(data: bytes) -> None:
    with pytest.raises(InflateError):
        deflate.inflate(data, 65536)


def _finished(payload: bytes) -> bytes:
    """``payload`` as a deflate stream that ends with a final block (what a sender may send)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(payload) + compressor.flush(zlib.Z_FINISH)


@pytest.mark.parametrize("limit", [65536, None])
def test_a_stream_that_ends_with_a_final_block_is_read_whole(limit: int | None) -> None:
    assert deflate.inflate(_finished(CHAT), limit) == CHAT
    inflater = Inflater()
    assert inflater.feed(_finished(CHAT), False, limit) == CHAT
    assert inflater.feed(b"", True, limit) == b""  # an empty last fragment: nothing more


@pytest.mark.parametrize("limit", [65536, None])
@pytest.mark.parametrize(
    "stream", [b"\x03\x00", _finished(CHAT)], ids=["empty stream", "chat message"]
)
def test_bytes_after_the_end_of_the_stream_are_refused(stream: bytes, limit: int | None) -> None:
    # In the same fragment, final or not.
    with pytest.raises(InflateError, match="after the end"):
        deflate.inflate(stream + b"\0" * 100, limit)
    with pytest.raises(InflateError, match="after the end"):
        Inflater().feed(stream + b"\0", False, limit)
    # In a later fragment: refused at once, not kept aside and copied again with each fragment.
    inflater = Inflater()
    inflater.feed(stream, False, limit)
    with pytest.raises(InflateError, match="after the end"):
        inflater.feed(b"\0" * 60_000, False, limit)


def test_a_compressed_message_may_take_a_little_more_than_its_limit_on_the_wire() -> None:
    # What does not compress, stored or coded with 9-bit codes, takes more than it inflates to.
    for limit in (125, 65536, 1 << 20):
        allowed = deflate.compressed_limit(limit)
        assert limit + limit // 8 <= allowed <= limit + limit // 8 + 1024
    incompressible = random.Random(7).randbytes(65536)
    fixed = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_FIXED)
    coded = fixed.compress(incompressible) + fixed.flush(zlib.Z_SYNC_FLUSH)
    assert len(incompressible) < len(coded) <= deflate.compressed_limit(len(incompressible))
