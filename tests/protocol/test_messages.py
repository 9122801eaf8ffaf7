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


# ---- both directions: what one side writes, the other reads back ------------------------------

CHANNELS = st.from_regex(r"[a-z][a-z0-9:_.-]{0,20}", fullmatch=True)
CURSORS = st.text(alphabet="ABCDEFabcdef0123456789-_", min_size=1, max_size=40)


@st.composite
def commands(draw: st.DrawFn) -> messages.Command:
    op = draw(st.sampled_from(sorted(messages.OPS)))
    channel = draw(CHANNELS) if op not in ("connect", "refresh", "ping") else None
    token = draw(st.text(min_size=1, max_size=20)) if op in ("connect", "refresh") else None
    return messages.Command(
        id=draw(st.none() | st.integers(0, 2**53 - 1) | st.text(max_size=64)),
        op=op,
        channel=channel,
        since=draw(st.none() | CURSORS),
        data=draw(st.none() | st.integers(-(2**63), 2**64 - 1) | st.text())
        if op == "publish"
        else None,
        publication_id=draw(st.none() | st.text(max_size=128)) if op == "publish" else None,
        limit=draw(st.none() | st.integers(0, messages.MAX_HISTORY_LIMIT)),
        token=token,
        latest=op == "subscribe" and draw(st.booleans()),
        reverse=op == "history" and draw(st.booleans()),
        ephemeral=op == "publish" and draw(st.booleans()),
        key=draw(st.none() | st.text(min_size=1, max_size=128)) if op == "publish" else None,
    )


@given(commands())
def test_the_hub_reads_back_every_command_a_client_writes(command: messages.Command) -> None:
    assert parse_command(messages.encode_command(command)) == command


def test_the_client_reads_back_every_frame_the_hub_writes() -> None:
    pub = Publication("chat:lobby", 3, "e1", {"text": "hi"}, 1700000000000, info={"user": "u"})
    read = messages.parse_frame(messages.encode_publication(pub, "CUR"))
    assert isinstance(read, messages.PublicationPush) and read.cursor == "CUR"
    assert read.publication.to_dict() == pub.to_dict()
    assert messages.parse_frame(messages.encode_ok(7, {"cursor": "c"})) == messages.Reply(
        7, ok={"cursor": "c"}
    )
    signal = Publication.signal("chat:lobby", {"x": 1}, 1700000000000, key="pointer")
    read = messages.parse_frame(messages.encode_publication(signal, None))
    assert isinstance(read, messages.PublicationPush) and read.cursor is None
    assert read.publication.to_dict() == signal.to_dict()
    refused = ClarionError("no", code="forbidden")
    assert messages.parse_frame(messages.encode_error("a", refused)) == messages.Reply(
        "a", error={"code": "forbidden", "message": "no"}
    )
    assert messages.parse_frame(messages.encode_error(None, refused)) == messages.Reply(
        None, error={"code": "forbidden", "message": "no"}
    )
    # What an error adds to its code and message, which a client acts on, is read back too.
    wait = ClarionError("later", code="rate_limited", retry_after=3, limit=20, channel="c")
    assert messages.parse_frame(messages.encode_error(1, wait)) == messages.Reply(
        1,
        error={
            "code": "rate_limited",
            "message": "later",
            "retry_after": 3,
            "limit": 20,
            "channel": "c",
        },
    )
    assert messages.parse_frame(messages.encode_reset("c", "trimmed", "K")) == messages.ResetPush(
        "c", "trimmed", "K"
    )
    assert messages.parse_frame(
        messages.encode_unsubscribe("c", "token")
    ) == messages.UnsubscribePush("c", "token")
    body = {"channel": "c", "cursor": "K", "recovered": True}
    assert messages.parse_frame(messages.encode_subscribe(body)) == messages.SubscribePush(
        "c", "K", body
    )
    assert messages.parse_frame(
        messages.encode_presence_event("join", {"channel": "c", "client": "x"})
    ) == messages.PresencePush("join", {"channel": "c", "client": "x"})
    assert messages.parse_frame(
        messages.encode_disconnect(4501, "disconnected", False)
    ) == messages.DisconnectPush(4501, "disconnected", False)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"channel": "c", "offset": 1, "epoch": "e"}',  # a publication without its cursor
        '{"channel": "c", "offset": "x", "epoch": "e", "cursor": "K"}',
        '{"id": true, "ok": {}}',
        '{"reset": {"reason": "epoch"}}',
        '{"disconnect": {"code": "4000", "reconnect": true}}',
    ],
)
def test_a_frame_that_breaks_the_protocol_is_refused(frame: str) -> None:
    with pytest.raises(messages.FrameError):
        messages.parse_frame(frame)


def test_a_push_of_a_newer_protocol_is_passed_over() -> None:
    assert messages.parse_frame('{"typing": {"channel": "c"}}') is None


def test_sse_events_carry_the_bodies_of_the_websocket_pushes() -> None:
    from clarion.protocol import sse

    def data(event: bytes) -> object:
        lines = [line[6:] for line in event.decode().splitlines() if line.startswith("data: ")]
        return json.loads("\n".join(lines))

    disconnect = sse.disconnect_event(4000, "shutdown", True)
    assert messages.read_push("disconnect", data(disconnect)) == messages.DisconnectPush(
        4000, "shutdown", True
    )
    reset = sse.reset_event("c", "epoch", "K", None)
    assert messages.read_push("reset", data(reset)) == messages.ResetPush("c", "epoch", "K")
    with pytest.raises(messages.FrameError):
        messages.read_push("disconnect", [4000])
