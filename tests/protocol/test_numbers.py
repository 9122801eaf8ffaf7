"""Numbers read from the wire: ASCII digits only, bounded, whatever ``str.isdigit()`` says; and
the parsers of headers that hold numbers (origins, forwarded addresses, STOMP) read them so."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clarion.protocol.numbers import ascii_decimal, ascii_int
from clarion.protocol.origins import Origin, parse_origin
from clarion.protocol.proxies import parse_address
from clarion.protocol.stomp.errors import RemoteProtocolError
from clarion.protocol.stomp.negotiation import parse_heart_beat

# Text some int() or isdigit() takes that is not an ASCII decimal.
NOT_DECIMAL = [
    "",
    "\u00b2",  # superscript two: isdigit(), int() refuses
    "1\u00b9",
    "\u0663",  # Arabic-Indic three: int() reads 3
    "\uff13",  # fullwidth three: int() reads 3
    "\u0e53",  # Thai three
    "+1",
    "-1",
    " 1",
    "1 ",
    "1\n",
    "1_000",
    "0x10",
    "1.5",
    "1e3",
]


def test_ascii_int_takes_ascii_digits_within_the_bound_only() -> None:
    assert ascii_int("0", max_digits=1) == 0
    assert ascii_int("0042", max_digits=4) == 42
    assert ascii_int(b"65535", max_digits=5) == 65535
    assert ascii_int("9" * 20, max_digits=20) == 10**20 - 1
    refused = [text for text in NOT_DECIMAL if ascii_int(text, max_digits=10) is not None]
    refused += [t for t in NOT_DECIMAL if ascii_int(t.encode(), max_digits=10) is not None]
    assert refused == []
    assert ascii_int("123456", max_digits=5) is None
    assert ascii_int("9" * 5000, max_digits=20) is None  # never handed to int()


def test_ascii_decimal_takes_digits_and_one_bounded_fraction() -> None:
    assert ascii_decimal("25", max_digits=6, max_fraction=6) == 25.0
    assert ascii_decimal("0.5", max_digits=6, max_fraction=6) == 0.5
    assert ascii_decimal(b"1.000001", max_digits=6, max_fraction=6) == 1.000001
    refused = [
        text
        for text in [*NOT_DECIMAL, ".5", "5.", "1.2.3", "inf", "nan", "1234567", "1.1234567"]
        if text != "1.5" and ascii_decimal(text, max_digits=6, max_fraction=6) is not None
    ]
    assert refused == []


@given(st.text(max_size=12))
def test_ascii_int_agrees_with_its_definition(text: str) -> None:
    expected = int(text) if text and all("0" <= c <= "9" for c in text) else None
    assert ascii_int(text, max_digits=12) == expected


def test_origin_ports_are_ascii_numbers() -> None:
    assert parse_origin("http://localhost:8080") == Origin("http", "localhost", 8080)
    assert parse_origin("http://localhost:080") == Origin("http", "localhost", 80)
    bad = [port for port in [*NOT_DECIMAL, "65536", "123456"] if port]
    wrong = []
    for port in bad:
        for host in ("localhost", "[::1]"):
            try:
                got: object = parse_origin(f"http://{host}:{port}")
            except Exception as exc:
                got = exc
            if got is not None:
                wrong.append((host, port, got))
    assert wrong == []


def test_forwarded_ports_are_ascii_numbers() -> None:
    assert str(parse_address("203.0.113.7:80")) == "203.0.113.7"
    assert str(parse_address("[2001:db8::1]:443")) == "2001:db8::1"
    wrong = [
        text
        for port in NOT_DECIMAL
        if port and port.strip() == port  # blanks around the whole address are trimmed
        for text in (f"203.0.113.7:{port}", f"[2001:db8::1]:{port}")
        if parse_address(text) is not None
    ]
    assert wrong == []


def test_stomp_heart_beats_are_ascii_numbers() -> None:
    assert parse_heart_beat("0,0") == (0, 0)
    assert parse_heart_beat(" 1000 , 2000 ") == (1000, 2000)
    assert parse_heart_beat("1000,1\n") == (1000, 1)  # blanks around a number are trimmed
    accepted = []
    for value in [*NOT_DECIMAL, "1,2", "12345678901"]:
        if value.strip() != value:
            continue
        for heart_beat in (f"{value},1000", f"1000,{value}"):
            try:
                parse_heart_beat(heart_beat)
            except RemoteProtocolError:
                continue
            accepted.append(heart_beat)
    assert accepted == []
