"""The SSE encoder, byte for byte, and against an independent parser (httpx-sse)."""

from __future__ import annotations

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clarion.protocol import sse
from clarion.protocol.cursor import encode_single
from clarion.protocol.publication import Publication


def parse(stream: bytes, chunks: list[int] | None = None) -> list[ServerSentEvent]:
    """Parse ``stream`` with httpx-sse, delivered in pieces cut at ``chunks`` offsets."""
    cuts = sorted({c % (len(stream) + 1) for c in chunks or []})
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=iter(pieces)
        )

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        connect_sse(client, "GET", "http://sse.test/") as source,
    ):
        return list(source.iter_sse())


def normalised(data: str) -> str:
    """What any SSE parser gives back: CR and CRLF in data arrive as LF."""
    return data.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": "x"}, b"data: x\n\n"),
        ({"data": ""}, b"data: \n\n"),
        ({"data": b"a\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\rb\r\nc\n"}, b"data: a\ndata: b\ndata: c\ndata: \n\n"),
        ({"data": " lead"}, b"data:  lead\n\n"),
        ({"data": "nul\0inside"}, b"data: nul\0inside\n\n"),
        ({"data": "d", "event": "reset", "id": "c1"}, b"id: c1\nevent: reset\ndata: d\n\n"),
        ({"data": "é"}, "data: é\n\n".encode()),
    ],
)
def test_event_bytes(kwargs: dict[str, object], expected: bytes) -> None:
    assert sse.encode_event(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_id_and_event_name_refuse_line_breaks_and_nul(bad: str) -> None:
    with pytest.raises(ValueError):
        sse.encode_event("x", id=bad)
    with pytest.raises(ValueError):
        sse.encode_event("x", event=bad)


def test_retry_comment_and_heartbeat() -> None:
    assert sse.encode_retry(3000) == b"retry: 3000\n\n"
    with pytest.raises(ValueError):
        sse.encode_retry(-1)
    assert sse.encode_comment("a\nb") == b": a\n: b\n\n"
    stream = sse.encode_comment("x\r\ndata: forged") + sse.HEARTBEAT + sse.encode_event("real")
    assert [e.data for e in parse(stream)] == ["real"]


def test_publication_event_is_the_ws_object_with_its_cursor_as_id() -> None:
    pub = Publication("chat:lobby", 7, "e1", {"text": "a\nb\r\n"}, 1000, id="k")
    cursor = encode_single("chat:lobby", "e1", 7)
    event = sse.publication_event(pub, cursor)
    assert event == sse.id_line(cursor) + sse.publication_body(pub, cursor)
    assert event.count(b"\n") == 4  # id, event, one data line (JSON escapes newlines), blank
    (parsed,) = parse(event)
    assert (parsed.id, parsed.event) == (cursor, "message")
    assert parsed.json() == {**pub.to_dict(), "cursor": cursor}


def test_reset_and_disconnect_events() -> None:
    reset = sse.reset_event("news", "trimmed", "C", "S")
    disconnect = sse.disconnect_event(4001, "slow", True)
    first, second = parse(reset + disconnect)
    assert (first.event, first.id, first.json()) == (
        "reset",
        "S",
        {"channel": "news", "reason": "trimmed", "cursor": "C"},
    )
    assert second.event == "disconnect"
    assert second.json() == {"code": 4001, "reason": "slow", "reconnect": True}
    assert second.id == "S"  # an event without id: keeps the stream's last id


_field_text = st.text(st.characters(blacklist_characters="\r\n\0", codec="utf-8"), min_size=1)
_events = st.lists(
    st.tuples(
        st.text(st.characters(codec="utf-8")),  # any data: CR, LF, CRLF, NUL, non-ASCII
        st.none() | _field_text,  # event name
        st.none() | _field_text,  # id
    ),
    min_size=1,
    max_size=8,
)


# Generating the inputs is slow on a loaded machine: that says nothing about the encoder.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=_events, chunks=st.lists(st.integers(min_value=0), max_size=12))
def test_any_data_round_trips_through_an_independent_parser(
    events: list[tuple[str, str | None, str | None]], chunks: list[int]
) -> None:
    stream = b"".join(sse.encode_event(data, event=name, id=eid) for data, name, eid in events)
    parsed = parse(stream, chunks)
    assert len(parsed) == len(events)
    last_id = ""
    for got, (data, name, eid) in zip(parsed, events, strict=True):
        last_id = eid if eid is not None else last_id
        assert got.data == normalised(data)
        assert got.event == (name or "message")
        assert got.id == last_id


@given(data=st.text(st.characters(codec="utf-8")))
def test_data_never_leaves_its_data_lines(data: str) -> None:
    encoded = sse.data_lines(data)
    lines = encoded.split(b"\n")
    assert lines[-1] == b""
    assert all(line.startswith(b"data: ") and b"\r" not in line for line in lines[:-1])
