import pytest

from clarion.errors import BadChannel
from clarion.protocol.channels import matches, namespace_of, validate_channel, validate_pattern


@pytest.mark.parametrize(
    "name",
    ["a", "chat:lobby", "prices:BTC-USD", "user:42", "a.b_c@d/e=f,g+h-i:j", "x" * 255],
)
def test_valid(name: str) -> None:
    assert validate_channel(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("x" * 256, "longer than 255"),
        ("chat lobby", "may only contain"),
        ("chat\x00", "may only contain"),
        ("é", "may only contain"),
        ("a*", "may only contain"),
        ("a\n", "may only contain"),
        (None, "must be a string"),
        (42, "must be a string"),
    ],
)
def test_invalid(name: object, message: str) -> None:
    with pytest.raises(BadChannel, match=message):
        validate_channel(name)


@pytest.mark.parametrize(
    ("channel", "namespace"),
    [("chat:lobby", "chat"), ("chat:a:b", "chat"), ("lobby", "default"), (":x", "default")],
)
def test_namespace(channel: str, namespace: str) -> None:
    assert namespace_of(channel) == namespace


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("chat:*", "chat:lobby", True),
        ("chat:*", "chat:", True),
        ("chat:*", "chatroom", False),
        ("*", "anything:at:all", True),
        ("user:42", "user:42", True),
        ("user:42", "user:421", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "aXbXc", False),
    ],
)
def test_patterns(pattern: str, channel: str, expected: bool) -> None:
    assert validate_pattern(pattern) == pattern
    assert matches(pattern, channel) is expected


def test_bad_pattern() -> None:
    with pytest.raises(BadChannel):
        validate_pattern("chat lobby")
