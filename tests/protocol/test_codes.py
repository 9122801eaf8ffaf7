from pathlib import Path

from clarion.protocol.codes import DISCONNECTS, CloseCode, should_reconnect

DOCS = Path(__file__).parents[2] / "docs" / "protocol.md"


def test_ranges_say_whether_to_reconnect() -> None:
    for code, entry in DISCONNECTS.items():
        if 4000 <= code < 4500:
            assert entry.reconnect, code
        if 4500 <= code < 5000:
            assert not entry.reconnect, code


def test_enum_and_table_agree() -> None:
    assert {int(c) for c in CloseCode} == set(DISCONNECTS)


def test_connection_lost_reconnects() -> None:
    assert should_reconnect(None) and should_reconnect(1006)
    assert not should_reconnect(4500) and should_reconnect(4000)
    assert should_reconnect(4499) and not should_reconnect(4999)


def test_every_code_is_documented() -> None:
    text = DOCS.read_text()
    for code, entry in DISCONNECTS.items():
        assert f"| {code} | {entry.reason} |" in text, code
