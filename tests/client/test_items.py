"""What the client's items show when printed."""

from __future__ import annotations

from clarion.client import Message
from clarion.protocol.cursor import encode_single
from clarion.protocol.publication import Publication


def test_a_printed_message_shows_its_channel_offset_and_data() -> None:
    pub = Publication("chat:lobby", 16, "5f0c2a9e41d3", {"text": "hi"}, 1764070000123)
    cursor = encode_single("chat:lobby", "5f0c2a9e41d3", 16)
    shown = str(Message(pub, cursor))
    assert shown == (
        f"Message(channel='chat:lobby', offset=16, data={{'text': 'hi'}}, cursor='{cursor}')"
    )
    assert repr(Message(pub, cursor)) == shown
