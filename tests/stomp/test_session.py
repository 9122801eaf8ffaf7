"""The STOMP session state machine, without sockets: frames in, events and frames out."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clarion.protocol.cursor import channel_tag, encode_single
from clarion.protocol.publication import Publication, StreamPosition
from clarion.protocol.stomp import (
    Abort,
    Ack,
    AckPosition,
    Begin,
    Commit,
    Connect,
    Disconnect,
    HeartBeat,
    LocalProtocolError,
    RemoteProtocolError,
    Send,
    State,
    StompSession,
    Subscribe,
    Unsubscribe,
    acked_cursor,
    message_prefix,
    message_tail,
    negotiate_heart_beat,
    negotiate_version,
    select_subprotocol,
)
from clarion.protocol.stomp.acks import MAX_EPOCHS, MAX_OUT_OF_ORDER
from clarion.protocol.stomp.session import MAX_FRAMES_PER_MESSAGE
from clarion.protocol.stomp.states import transitions_markdown

from ..support.steps import python_steps
from .client import frame

DOCS = Path(__file__).parents[2] / "docs" / "stomp.md"


def feed(session: StompSession, data: bytes) -> list[object]:
    session.receive_data(data)
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def connected(version: str = "1.2", **headers: str) -> StompSession:
    session = StompSession(heart_beat=(10_000, 10_000))
    (event,) = feed(session, frame("CONNECT", accept_version=version, **headers))
    assert isinstance(event, Connect)
    session.connected("s1", "clarion/test")
    return session


def error_of(session: StompSession, data: bytes) -> RemoteProtocolError:
    """The error ``data``'s frames end in, each sent as a message of its own, as clients do."""
    with pytest.raises(RemoteProtocolError) as info:
        *whole, rest = data.split(b"\0")
        for part in whole:
            feed(session, part + b"\0")
        feed(session, rest)
    return info.value


# ---- negotiation


@pytest.mark.parametrize(
    ("accept", "version"),
    [
        (None, "1.0"),
        ("1.0", "1.0"),
        ("1.1", "1.1"),
        ("1.0,1.1,1.2", "1.2"),
        ("1.2, 1.1", "1.2"),
        ("1.1,2.0", "1.1"),
    ],
)
def test_version_negotiation(accept: str | None, version: str) -> None:
    assert negotiate_version(accept) == version


def test_no_common_version_is_an_error_that_lists_ours() -> None:
    session = StompSession()
    err = error_of(session, frame("CONNECT", accept_version="2.0,3.0"))
    assert err.message == "Supported protocol versions are 1.0 1.1 1.2"
    error = session.error(err.message, code=err.code)
    assert error is not None and b"\nversion:1.0,1.1,1.2\n" in error


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        ((0, 0), (10, 10), HeartBeat(0, 0)),
        ((1000, 1000), (10_000, 10_000), HeartBeat(10_000, 10_000)),
        ((60_000, 5000), (10_000, 10_000), HeartBeat(10_000, 60_000)),
        ((0, 5000), (10_000, 10_000), HeartBeat(10_000, 0)),
        ((5000, 0), (10_000, 10_000), HeartBeat(0, 10_000)),
        ((5000, 5000), (0, 0), HeartBeat(0, 0)),
    ],
)
def test_heart_beat_negotiation(
    client: tuple[int, int], server: tuple[int, int], expected: HeartBeat
) -> None:
    assert negotiate_heart_beat(client, server) == expected


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["v10.stomp", "v11.stomp", "v12.stomp"], "v12.stomp"),
        (["v11.stomp"], "v11.stomp"),
        (["clarion.v1"], None),
        ([], None),
    ],
)
def test_subprotocol_choice(offered: list[str], chosen: str | None) -> None:
    assert select_subprotocol(offered) == chosen


def test_connected_frame() -> None:
    session = StompSession(heart_beat=(10_000, 20_000))
    (event,) = feed(session, frame("STOMP", accept_version="1.1,1.2", heart_beat="5000,1000"))
    assert isinstance(event, Connect)
    assert event.version == "1.2" and event.heart_beat == HeartBeat(10_000, 20_000)
    assert session.state is State.CONNECTING
    # CONNECTED is never escaped, even in 1.2: 1.0 clients must be able to read it.
    assert session.connected("abc", "clarion/0.1", "user:1") == (
        b"CONNECTED\nversion:1.2\nheart-beat:10000,20000\nsession:abc\nserver:clarion/0.1\n"
        b"user-name:user:1\n\n\0"
    )
    assert session.state is State.CONNECTED and session.escaped


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ({}, None),
        ({"passcode": "p"}, "p"),
        ({"token": "t", "passcode": "p"}, "t"),
        ({"Authorization": "Bearer abc", "passcode": "p"}, "abc"),
        ({"authorization": "bearer  abc "}, "abc"),
        ({"login": "someone"}, None),
    ],
)
def test_token_sources(headers: dict[str, str], token: str | None) -> None:
    session = StompSession()
    session.receive_data(
        ("CONNECT\n" + "".join(f"{k}:{v}\n" for k, v in headers.items()) + "\n\0").encode()
    )
    event = session.next_event()
    assert isinstance(event, Connect) and event.token == token


def test_authorization_must_be_bearer() -> None:
    err = error_of(StompSession(), b"CONNECT\nAuthorization:Basic eDp5\n\n\0")
    assert (err.message, err.code) == (
        "the Authorization header must be 'Bearer <token>'",
        "unauthorized",
    )


# ---- the state table


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            frame("SEND", destination="/topic/a"),
            "the first frame must be CONNECT or STOMP, not SEND",
        ),
        (
            frame("SUBSCRIBE", id="1", destination="/topic/a"),
            "the first frame must be CONNECT or STOMP, not SUBSCRIBE",
        ),
        (frame("MESSAGE"), "MESSAGE is a server frame"),
        (frame("HELLO"), "unknown command HELLO"),
    ],
)
def test_before_connect(data: bytes, message: str) -> None:
    assert error_of(StompSession(), data).message == message


@pytest.mark.parametrize(
    ("data", "message", "code"),
    [
        (frame("CONNECT", accept_version="1.2"), "already connected", "bad_frame"),
        (frame("STOMP"), "already connected", "bad_frame"),
        (frame("COMMIT", transaction="t"), "no open transaction 't'", "unknown_transaction"),
        (frame("ABORT", transaction="t"), "no open transaction 't'", "unknown_transaction"),
        (frame("COMMIT"), "COMMIT needs a transaction header", "bad_frame"),
        (frame("BEGIN"), "BEGIN needs a transaction of 1 to 256 characters", "bad_frame"),
        (
            frame("SEND", "{}", destination="/topic/a", transaction="t"),
            "no open transaction 't'",
            "unknown_transaction",
        ),
        (
            frame("BEGIN", transaction="t") + frame("BEGIN", transaction="t"),
            "transaction 't' is already open",
            "unknown_transaction",
        ),
        (
            b"".join(frame("BEGIN", transaction=str(n)) for n in range(9)),
            "over 8 open transactions",
            "too_many_transactions",
        ),
        (
            frame("BEGIN", transaction="t")
            + frame("SEND", "{}", destination="/topic/a", transaction="t") * 257,
            "over 256 frames in transaction 't'",
            "transaction_too_large",
        ),
        (frame("CONNECTED"), "CONNECTED is a server frame", "bad_frame"),
        (frame("FOO"), "unknown command FOO", "bad_frame"),
        (frame("SEND", "{}"), "SEND needs a destination header", "bad_frame"),
        (
            frame("SEND", "{}", destination="/queue/a"),
            "destination must be /topic/<channel>, not '/queue/a'",
            "bad_destination",
        ),
        (
            frame("SEND", "{}", destination="/topic/a b"),
            "bad destination '/topic/a b': "
            "channel may only contain letters, digits and _ . : @ / = , + -",
            "bad_channel",
        ),
        (
            frame("SEND", "{", destination="/topic/a", content_type="application/json"),
            "SEND body is not valid JSON",
            "bad_json",
        ),
        (
            frame("SEND", "", destination="/topic/a", content_type="application/x+json"),
            "SEND body is not valid JSON",
            "bad_json",
        ),
        (frame("SUBSCRIBE", destination="/topic/a"), "SUBSCRIBE needs an id header", "bad_frame"),
        (
            frame("SUBSCRIBE", id="1", destination="/topic/a", ack="sometimes"),
            "ack must be auto, client or client-individual, not 'sometimes'",
            "bad_frame",
        ),
        (
            frame("SUBSCRIBE", id="1", destination="/topic/a", x_since="garbage!"),
            "x-since: cursor is not valid base64url",
            "bad_cursor",
        ),
        (
            frame("SUBSCRIBE", id="1", destination="/topic/a", x_since=encode_single("b", "e", 1)),
            "x-since holds no position for channel 'a'",
            "bad_cursor",
        ),
        (frame("UNSUBSCRIBE"), "UNSUBSCRIBE needs an id header", "bad_frame"),
        (frame("ACK"), "ACK needs an id header", "bad_frame"),
        (frame("ACK", id="nonsense"), "ACK names no message of this hub: 'nonsense'", "bad_ack"),
    ],
)
def test_connected_errors(data: bytes, message: str, code: str) -> None:
    err = error_of(connected(), data)
    assert (err.message, err.code) == (message, code)


def test_errors_name_the_receipt_of_the_failing_frame() -> None:
    session = connected()
    err = error_of(
        session, frame("SEND", "{", destination="/topic/a", receipt="r-7", content_type="a/b+json")
    )
    assert err.receipt_id == "r-7"
    error = session.error(err.message, code=err.code, receipt_id=err.receipt_id)
    assert error is not None and b"\nreceipt-id:r-7\n" in error
    assert session.state is State.CLOSED
    assert session.error("again", code="x") is None  # one ERROR, then nothing


def test_send_events() -> None:
    session = connected()
    events = feed(
        session,
        frame(
            "SEND",
            '{"a":[1]}',
            destination="/topic/chat\\clobby",
            receipt="r",
            content_type="application/json",
        )
        + frame("SEND", "héllo", destination="/topic/t", content_type="text/plain;charset=utf-8")
        + frame(
            "SEND",
            "3",
            destination="/topic/t",
            content_type="application/vnd.x+json",
            x_idempotency_key="k1",
        )
        # JSON not in compact form, and no content-type at all: carried as they are.
        + frame("SEND", '{"a": 1}', destination="/topic/t", content_type="application/json")
        + frame("SEND", b"\x00\xff\x01", destination="/topic/t", content_length="3")
        + frame("SEND", "", destination="/topic/t"),
    )
    text = {"encoding": "utf-8"}
    assert events == [
        Send("chat:lobby", {"a": [1]}, "r", None),
        Send("t", "héllo", None, None, None, {**text, "content_type": "text/plain;charset=utf-8"}),
        Send("t", "3", None, "k1", None, {**text, "content_type": "application/vnd.x+json"}),
        Send("t", '{"a": 1}', None, None, None, {**text, "content_type": "application/json"}),
        Send("t", "AP8B", None, None, None, {"encoding": "base64"}),
        Send("t", "", None, None, None, text),
    ]


def test_subscribe_and_unsubscribe() -> None:
    session = connected()
    (sub_event,) = feed(session, frame("SUBSCRIBE", id="s:1", destination="/topic/c\\cx"))
    assert isinstance(sub_event, Subscribe)
    sub = sub_event.subscription
    assert (sub.id, sub.channel, sub.ack) == ("s:1", "c:x", "auto")
    assert sub.prefix == b"MESSAGE\nsubscription:s\\c1"
    assert error_of(
        connected(), frame("SUBSCRIBE", id="a", destination="/topic/a") * 2
    ).message == ("subscription id 'a' is already in use")
    (gone,) = feed(session, frame("UNSUBSCRIBE", id="s:1", receipt="u"))
    assert gone == Unsubscribe(sub, "u")
    assert session.subscriptions == {} and session.by_channel == {}
    (unknown,) = feed(session, frame("UNSUBSCRIBE", id="never"))
    assert unknown == Unsubscribe(None, None)


def test_several_subscriptions_to_one_destination_ack_apart() -> None:
    session = connected()
    events = feed(
        session,
        frame("SUBSCRIBE", id="a", destination="/topic/t", ack="client-individual")
        + frame("SUBSCRIBE", id="b", destination="/topic/t", ack="client-individual")
        + frame("SUBSCRIBE", id="c", destination="/topic/u", ack="client"),
    )
    a, b, c = (e.subscription for e in events if isinstance(e, Subscribe))
    assert (a.ack_suffix, b.ack_suffix, c.ack_suffix) == ("", ".1", "")
    assert [s.id for s in session.by_channel["t"]] == ["a", "b"]
    for sub in (a, b, c):
        sub.start(StreamPosition("e", 0))
    first, second = encode_single("t", "e", 1), encode_single("t", "e", 2)
    # The bare cursor is the first subscription's ack id, the suffixed one the other's.
    (ack_a,) = feed(session, frame("ACK", id=first))
    (ack_b,) = feed(session, frame("ACK", id=second + ".1"))
    assert (ack_a.subscription, ack_b.subscription) == (a, b)
    assert a.acks is not None and a.acks.position == StreamPosition("e", 1)
    assert b.acks is not None and b.acks.position == StreamPosition("e", 0)  # 1 not acked yet
    (ack_b,) = feed(session, frame("ACK", id=first + ".1"))
    assert b.acks.position == StreamPosition("e", 2)
    # A suffix of a subscription that is gone names nothing; one of another channel is refused.
    feed(session, frame("UNSUBSCRIBE", id="b"))
    (late,) = feed(session, frame("ACK", id=second + ".1"))
    assert late.subscription is None
    assert session.by_channel["t"] == [a]
    err = error_of(session, frame("ACK", id=encode_single("u", "e", 1) + ".1", subscription="a"))
    assert err.code == "bad_ack"


def test_stomp_1_0_has_no_escaping_and_optional_ids() -> None:
    session = connected("1.0")
    assert not session.escaped
    (event,) = feed(session, b"SUBSCRIBE\ndestination:/topic/chat:lobby\n\n\0")
    assert isinstance(event, Subscribe)
    assert event.subscription.id == "/topic/chat:lobby"
    assert event.subscription.prefix == b"MESSAGE\nsubscription:/topic/chat:lobby"
    (gone,) = feed(session, b"UNSUBSCRIBE\ndestination:/topic/chat:lobby\n\n\0")
    assert isinstance(gone, Unsubscribe) and gone.subscription is event.subscription


def test_x_since_gives_the_position() -> None:
    session = connected()
    cursor = encode_single("chat:lobby", "ep", 7)
    (event,) = feed(
        session, frame("SUBSCRIBE", id="1", destination="/topic/chat\\clobby", x_since=cursor)
    )
    assert isinstance(event, Subscribe) and event.since == StreamPosition("ep", 7)


def test_disconnect_then_only_its_receipt() -> None:
    session = connected()
    (event,) = feed(
        session, frame("DISCONNECT", receipt="bye") + frame("SEND", "{}", destination="/topic/a")
    )
    assert event == Disconnect("bye")
    assert session.state is State.DISCONNECTING
    assert feed(session, frame("FOO")) == []  # ignored: the connection is going away
    assert session.receipt("bye") == b"RECEIPT\nreceipt-id:bye\n\n\0"
    assert session.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        session.receipt("again")


def test_hub_frames_out_of_state_are_local_errors() -> None:
    session = StompSession()
    with pytest.raises(LocalProtocolError, match="cannot send RECEIPT in state AWAITING_CONNECT"):
        session.receipt("r")
    feed(session, frame("CONNECT"))
    assert session.error("no", code="unauthorized") is not None
    with pytest.raises(LocalProtocolError):
        session.connected("s", "clarion")


def test_error_before_connected_is_unescaped_and_one_line() -> None:
    session = StompSession()
    error = session.error(
        "bad token: a:b\nc", code="unauthorized", headers=(("x-close-code", "4500"),)
    )
    assert error == (
        b"ERROR\nmessage:bad token: a:b c\nx-code:unauthorized\ncontent-type:text/plain\n"
        b"x-close-code:4500\ncontent-length:17\n\nbad token: a:b c\n\0"
    )


# ---- MESSAGE frames


def test_message_prefix_and_tail_make_a_frame() -> None:
    pub = Publication("chat:lobby", 3, "e:1", {"t": 1}, 0)
    tail = message_tail(pub, "CUR", b'{"t":1}', escaped=True, ack=False)
    assert message_prefix("sub-0", escaped=True) + tail == (
        b"MESSAGE\nsubscription:sub-0\nmessage-id:CUR\ndestination:/topic/chat\\clobby\n"
        b"content-type:application/json\ncontent-length:7\nx-offset:3\nx-epoch:e\\c1\n\n"
        b'{"t":1}\0'
    )
    raw = message_tail(pub, "CUR", b"{}", escaped=False, ack=True)
    assert raw.startswith(b"\nmessage-id:CUR\nack:CUR\ndestination:/topic/chat:lobby\n")


def test_reset_message() -> None:
    session = connected()
    (event,) = feed(session, frame("SUBSCRIBE", id="s", destination="/topic/c\\c1", ack="client"))
    assert isinstance(event, Subscribe)
    event.subscription.start(StreamPosition("old", 4))
    cursor = encode_single("c:1", "new", 9)
    assert (
        session.reset(event.subscription, "epoch", cursor)
        == (
            f"MESSAGE\nsubscription:s\nmessage-id:reset-{cursor}\nack:reset-{cursor}\n"
            f"destination:/topic/c\\c1\nx-reset:epoch\nx-cursor:{cursor}\ncontent-length:0\n\n\0"
        ).encode()
    )


# ---- acknowledgements


def subscribed(ack: str, version: str = "1.2") -> tuple[StompSession, Subscribe]:
    session = connected(version)
    (event,) = feed(session, frame("SUBSCRIBE", id="s", destination="/topic/c", ack=ack))
    assert isinstance(event, Subscribe)
    event.subscription.start(StreamPosition("e", 0))
    return session, event


def ack(session: StompSession, offset: int, *, command: str = "ACK", epoch: str = "e",
        reset: bool = False, **headers: str) -> Ack:  # fmt: skip
    ident = ("reset-" if reset else "") + encode_single("c", epoch, offset)
    key = "id" if session.version == "1.2" else "message_id"
    (event,) = feed(session, frame(command, **{key: ident}, **headers))
    assert isinstance(event, Ack)
    return event


def position(session: StompSession) -> StreamPosition:
    sub = session.subscriptions["s"]
    assert sub.acks is not None
    return sub.acks.position


def test_client_mode_is_cumulative() -> None:
    session, _ = subscribed("client")
    ack(session, 3)
    assert position(session) == StreamPosition("e", 3)
    ack(session, 2)  # late: already covered
    assert position(session) == StreamPosition("e", 3)
    ack(session, 5, command="NACK")
    assert position(session) == StreamPosition("e", 3)
    assert acked_cursor(session.subscriptions["s"]) == encode_single("c", "e", 3)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_older_versions_ack_by_message_id(version: str) -> None:
    session, _ = subscribed("client", version)
    event = ack(session, 2, subscription="s")
    assert event.subscription is session.subscriptions["s"]
    assert position(session) == StreamPosition("e", 2)


def test_client_individual_advances_over_the_unbroken_run() -> None:
    session, _ = subscribed("client-individual")
    ack(session, 2)
    ack(session, 3)
    assert position(session) == StreamPosition("e", 0)
    ack(session, 1)
    assert position(session) == StreamPosition("e", 3)


def test_acking_a_reset_accepts_its_gap() -> None:
    session, event = subscribed("client-individual")
    sub = event.subscription
    ack(session, 2, epoch="new")  # a message of the new epoch, acked before the reset
    session.reset(sub, "epoch", encode_single("c", "new", 1))
    ack(session, 1, epoch="new", reset=True)
    assert position(session) == StreamPosition("new", 2)
    ack(session, 9, epoch="e")  # a late ack from the old epoch changes nothing
    assert position(session) == StreamPosition("new", 2)


def test_auto_mode_has_no_acked_position() -> None:
    session, event = subscribed("auto")
    assert ack(session, 1).subscription is event.subscription
    assert acked_cursor(event.subscription) is None


def test_crafted_cursors_with_overlong_epochs_are_refused() -> None:
    # The cursor's check is an integrity check, not a secret: clients can build any cursor.
    body = bytes((1, 1)) + channel_tag("c") + bytes((100,)) + b"e" * 100 + bytes((1,))
    check = hashlib.blake2b(body, digest_size=4, person=b"clarion.cursor").digest()
    long_epoch = base64.urlsafe_b64encode(body + check).rstrip(b"=").decode()
    session, _ = subscribed("client")
    err = error_of(session, frame("ACK", id=long_epoch))
    assert err.code == "bad_ack"
    err = error_of(
        connected(), frame("SUBSCRIBE", id="x", destination="/topic/c", x_since=long_epoch)
    )
    assert (err.message, err.code) == ("x-since: cursor holds an invalid epoch", "bad_cursor")


def test_ack_for_another_subscription_is_refused() -> None:
    session, _ = subscribed("client")
    feed(session, frame("SUBSCRIBE", id="t", destination="/topic/d", ack="client"))
    ident = encode_single("d", "e", 1)
    err = error_of(session, frame("ACK", id=ident, subscription="s"))
    assert (err.message, err.code) == ("ACK names a message of another subscription", "bad_ack")


def test_out_of_order_acks_are_bounded() -> None:
    acks = AckPosition(StreamPosition("e", 0), individual=True)
    for offset in range(2, MAX_OUT_OF_ORDER + 2):
        acks.ack(StreamPosition("e", offset))
    assert acks.out_of_order == MAX_OUT_OF_ORDER
    with pytest.raises(RemoteProtocolError, match="out of order"):
        acks.ack(StreamPosition("e", MAX_OUT_OF_ORDER + 5))
    acks.ack(StreamPosition("e", 1))
    assert acks.position == StreamPosition("e", MAX_OUT_OF_ORDER + 1)
    assert acks.out_of_order == 0


def test_out_of_order_acks_are_bounded_per_connection_not_per_subscription() -> None:
    # Many subscriptions must not multiply the bound: acks spread over two count together.
    session, _ = subscribed("client-individual")
    feed(session, frame("SUBSCRIBE", id="t", destination="/topic/d", ack="client-individual"))
    session.subscriptions["t"].start(StreamPosition("e", 0))
    half = MAX_OUT_OF_ORDER // 2
    for n in range(half):
        ack(session, 2 + n)
        feed(session, frame("ACK", id=encode_single("d", "e", 2 + n)))
    err = error_of(session, frame("ACK", id=encode_single("d", "e", 10**6)))
    assert err.code == "too_many_acks"

    # What an ended subscription held stops counting.
    session, _ = subscribed("client-individual")
    feed(session, frame("SUBSCRIBE", id="t", destination="/topic/d", ack="client-individual"))
    session.subscriptions["t"].start(StreamPosition("e", 0))
    for n in range(MAX_OUT_OF_ORDER):
        ack(session, 2 + n)
    feed(session, frame("UNSUBSCRIBE", id="s"))
    for n in range(MAX_OUT_OF_ORDER):
        feed(session, frame("ACK", id=encode_single("d", "e", 2 + n)))
    assert session.subscriptions["t"].acks is not None
    assert session.subscriptions["t"].acks.out_of_order == MAX_OUT_OF_ORDER


def test_forged_epochs_hold_no_more_than_the_bound() -> None:
    # Ids are cursors anyone can build, each with an epoch of its own: what is held for them
    # is within the same bound, and only the last few epochs are kept.
    session, event = subscribed("client-individual")
    for n in range(3 * MAX_OUT_OF_ORDER):  # never too_many_acks: old epochs are let go
        ack(session, 5 + n, epoch=f"forged{n:058d}")
    acks = event.subscription.acks
    assert acks is not None and acks.out_of_order <= MAX_EPOCHS
    assert acks.room.held == acks.out_of_order


@pytest.mark.parametrize("reset", [True, False], ids=["reset-ack", "client-mode"])
def test_an_ack_costs_no_walk_over_what_is_held(reset: bool) -> None:
    # With the bound's worth held far ahead, each cumulative ack that covers none of it used
    # to rebuild the whole set: thousands of steps per frame, 0.5 s per message of them.
    acks = AckPosition(StreamPosition("e", 0), individual=True)
    for n in range(MAX_OUT_OF_ORDER):
        acks.ack(StreamPosition("e", 10**6 + n))
    if not reset:
        acks.individual = False  # the same position in client mode: every ack is cumulative
    worst = max(
        python_steps(lambda k=k: acks.ack(StreamPosition("e", k), cumulative=reset))  # type: ignore[misc]
        for k in range(1, 200)
    )
    assert worst < 60, worst
    assert acks.out_of_order == MAX_OUT_OF_ORDER
    # Covering them drops each once, and the run behind the position is walked over.
    acks.ack(StreamPosition("e", 10**6 - 1), cumulative=True)
    assert acks.position == StreamPosition("e", 10**6 + MAX_OUT_OF_ORDER - 1)
    assert acks.out_of_order == 0 and acks.room.held == 0


def test_a_message_holds_at_most_sixteen_frames() -> None:
    session = connected()
    events = feed(session, frame("UNSUBSCRIBE", id="x") * MAX_FRAMES_PER_MESSAGE)
    assert len(events) == MAX_FRAMES_PER_MESSAGE
    # Heart-beat EOLs are not frames; the next message counts afresh.
    assert len(feed(session, b"\n" * 1000 + frame("UNSUBSCRIBE", id="x") * 3)) == 3
    session.receive_data(frame("UNSUBSCRIBE", id="x") * (MAX_FRAMES_PER_MESSAGE + 1))
    for _ in range(MAX_FRAMES_PER_MESSAGE):
        assert session.next_event() is not None
    with pytest.raises(RemoteProtocolError) as info:
        session.next_event()
    assert (info.value.code, str(info.value)) == (
        "bad_frame",
        f"over {MAX_FRAMES_PER_MESSAGE} frames in one WebSocket message",
    )


# ---- documentation and properties


def test_the_docs_show_the_transition_tables() -> None:
    assert transitions_markdown() in DOCS.read_text()


client_frames = st.sampled_from(
    [
        frame("CONNECT", accept_version="1.2"),
        frame("CONNECT"),
        frame("SUBSCRIBE", id="1", destination="/topic/a"),
        frame("SUBSCRIBE", id="2", destination="/topic/b", ack="client"),
        frame("UNSUBSCRIBE", id="1"),
        frame("SEND", "{}", destination="/topic/a"),
        frame("SEND", "{", destination="/topic/a"),
        frame("ACK", id=encode_single("b", "e", 1)),
        frame("NACK", id="reset-" + encode_single("b", "e", 2)),
        frame("BEGIN"),
        frame("DISCONNECT", receipt="r"),
        b"\n",
        b"GARBAGE\n\n\0",
        b"SEND\ncontent-length:99\n\n{}\0",
    ]
)


@given(st.lists(client_frames, max_size=12), st.integers(1, 64))
def test_any_frame_sequence_gives_events_or_a_remote_error(parts: list[bytes], chunk: int) -> None:
    session = StompSession(heart_beat=(1000, 1000))
    wire = b"".join(parts)
    try:
        for i in range(0, len(wire), chunk):
            session.receive_data(wire[i : i + chunk])
            while (event := session.next_event()) is not None:
                if isinstance(event, Connect):
                    session.connected("s", "clarion")
                elif isinstance(event, Subscribe):
                    event.subscription.start(StreamPosition("e", 0))
                elif isinstance(event, Disconnect) and event.receipt:
                    session.receipt(event.receipt)
    except RemoteProtocolError as exc:
        assert exc.code in {"bad_frame", "too_large", "unsupported", "bad_json", "bad_ack"}


def test_transactions_hold_sends_and_acks_until_commit() -> None:
    session = StompSession(heart_beat=(0, 0), max_frame_bytes=1000, max_transaction_bytes=1000)
    feed(session, frame("CONNECT", accept_version="1.2"))
    session.connected("s1", "clarion/test")
    (sub,) = feed(session, frame("SUBSCRIBE", id="s", destination="/topic/t", ack="client"))
    assert isinstance(sub, Subscribe)
    sub.subscription.start(StreamPosition("e", 0))
    acks = sub.subscription.acks
    assert acks is not None
    first = encode_single("t", "e", 1)
    events = feed(
        session,
        frame("BEGIN", transaction="tx", receipt="b")
        + frame("SEND", "1", destination="/topic/t", transaction="tx")
        + frame("ACK", id=first, transaction="tx")
        + frame("SEND", '"two"', destination="/topic/u", transaction="tx", receipt="r"),
    )
    assert events[0] == Begin("tx", "b")
    held = events[1:]
    assert acks.position == StreamPosition("e", 0)  # not acknowledged before COMMIT
    (commit,) = feed(session, frame("COMMIT", transaction="tx", receipt="c"))
    assert commit == Commit("tx", tuple(held), "c")  # type: ignore[arg-type]
    assert [type(e).__name__ for e in commit.frames] == ["Send", "Ack", "Send"]
    for event in commit.frames:
        if isinstance(event, Ack):
            session.apply_ack(event)
    assert acks.position == StreamPosition("e", 1)
    assert session.transactions == {}

    # ABORT drops what was held; so does DISCONNECT for a transaction left open.
    feed(session, frame("BEGIN", transaction="x") + frame("SEND", "1", destination="/topic/t",
                                                          transaction="x"))  # fmt: skip
    assert feed(session, frame("ABORT", transaction="x")) == [Abort("x", None)]
    assert error_of(session, frame("COMMIT", transaction="x")).code == "unknown_transaction"

    # Bytes held across all open transactions are bounded: the frames' headers as well as
    # their bodies.
    session = StompSession(max_transaction_bytes=200)
    feed(session, frame("CONNECT", accept_version="1.2"))
    session.connected("s1", "clarion/test")
    feed(session, frame("BEGIN", transaction="a") + frame("BEGIN", transaction="b"))
    feed(session, frame("SEND", '"123456"', destination="/topic/t", transaction="a"))
    for body, headers in (('"' + "1" * 150 + '"', {}), ('"1"', {"x_note": "n" * 150})):
        err = error_of(
            session, frame("SEND", body, destination="/topic/t", transaction="b", **headers)
        )
        assert (err.code, err.message) == (
            "transaction_too_large",
            "open transactions hold over 200 bytes",
        )

    session = StompSession()
    feed(session, frame("CONNECT", accept_version="1.2"))
    session.connected("s1", "clarion/test")
    feed(session, frame("BEGIN", transaction="a") + frame("DISCONNECT"))
    assert session.transactions == {}
