import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clarion.errors import ClarionError
from clarion.protocol import messages
from clarion.protocol.frames import frame_header, text_frame
from clarion.protocol.messages import CommandError, parse_command
from clarion.protocol.publication import Publication


def test_subscribe() -> None:
    cmd = parse_command('{"id": 1, "op": "subscribe", "channel": "chat:lobby", "since": "abc"}')
    assert (cmd.id, cmd.op, cmd.channel, cmd.since) == (1, "subscribe", "chat:lobby", "abc")


def test_publish() -> None:
    cmd = parse_command(
        b'{"id": "x", "op": "publish", "channel": "c", "data": null, "pub_id": "k"}'
    )
    assert (cmd.op, cmd.data, cmd.publication_id) == ("publish", None, "k")


@pytest.mark.parametrize(
    ("frame", "code", "rid"),
    [
        ("not json", "bad_request", None),
        ("[1, 2]", "bad_request", None),
        ('{"id": 1}', "bad_request", 1),
        ('{"id": 1, "op": 5}', "bad_request", 1),
        ('{"id": 1, "op": "dance"}', "unknown_op", 1),
        ('{"id": -1, "op": "ping"}', "bad_request", None),
        ('{"id": true, "op": "ping"}', "bad_request", None),
        ('{"id": 1, "op": "subscribe"}', "bad_channel", 1),
        ('{"id": 1, "op": "subscribe", "channel": ""}', "bad_channel", 1),
        ('{"id": 1, "op": "subscribe", "channel": "a b"}', "bad_channel", 1),
        ('{"id": 1, "op": "subscribe", "channel": "a\\u0000"}', "bad_channel", 1),
        ('{"id": 1, "op": "subscribe", "channel": 7}', "bad_channel", 1),
        ('{"id": 1, "op": "subscribe", "channel": "c", "since": 3}', "bad_cursor", 1),
        ('{"id": 1, "op": "history", "channel": "c", "limit": -1}', "bad_request", 1),
        ('{"id": 1, "op": "history", "channel": "c", "limit": "5"}', "bad_request", 1),
        ('{"id": 1, "op": "publish", "channel": "c"}', "bad_request", 1),
        ('{"id": 1, "op": "refresh"}', "bad_request", 1),
        ('{"id": 1, "op": "connect", "token": 5}', "bad_request", 1),
    ],
)
def test_bad_commands(frame: str, code: str, rid: object) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(frame)
    assert info.value.code == code
    assert info.value.request_id == rid


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_frame_parses_or_is_a_documented_error(frame: str | bytes) -> None:
    try:
        parse_command(frame)
    except ClarionError as exc:
        assert exc.code in {"bad_request", "unknown_op", "bad_channel", "bad_cursor"}


@given(
    st.dictionaries(
        st.sampled_from(["id", "op", "channel", "since", "data", "limit", "token", "pub_id"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=20)
        | st.sampled_from(["subscribe", "publish", "history", "ping", "c"]),
    )
)
def test_any_object_parses_or_is_a_documented_error(obj: dict[str, object]) -> None:
    try:
        parse_command(json.dumps(obj))
    except ClarionError as exc:
        assert exc.code in {"bad_request", "unknown_op", "bad_channel", "bad_cursor"}


def test_encode_publication_reuses_json() -> None:
    pub = Publication("c", 3, "e", {"x": "\n"}, 1000, id="k")
    out = json.loads(messages.encode_publication(pub, "CUR"))
    assert out == {**pub.to_dict(), "cursor": "CUR"}


def test_replies() -> None:
    assert json.loads(messages.encode_ok(1, {"a": 1})) == {"id": 1, "ok": {"a": 1}}
    err = ClarionError("boom", code="x")
    assert json.loads(messages.encode_error(None, err)) == {
        "error": {"code": "x", "message": "boom"}
    }
    assert json.loads(messages.encode_disconnect(4001, "slow", True)) == {
        "disconnect": {"code": 4001, "reason": "slow", "reconnect": True}
    }


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_frame_header(length: int, header: bytes) -> None:
    assert frame_header(length) == header
    assert text_frame(b"x" * length)[: len(header)] == header
