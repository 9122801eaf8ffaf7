"""Forwarding headers and origins, byte-level: the pure rules behind trusted proxies and CORS."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clarion.protocol.origins import OriginPolicy, OriginRule, parse_origin
from clarion.protocol.proxies import (
    TrustedProxies,
    address_key,
    parse_address,
    parse_forwarded,
    resolve,
)

TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:80", "203.0.113.7"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("203.0.113.7:", None),
        ("203.0.113.7:x", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("[203.0.113.7]", "203.0.113.7"),
        ("fe80::1%eth0", None),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("1" * 100, None),
    ],
)
def test_addresses_as_proxies_write_them(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (str(address) if address is not None else None) == expected


def _headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in pairs]


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    xff = "x-forwarded-for"
    cases = [
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [(xff, "1.1.1.1, 2.2.2.2, 10.9.9.9")], "2.2.2.2"),
        ("10.0.0.1", [(xff, "10.1.1.1, 10.2.2.2")], "10.1.1.1"),
        ("10.0.0.1", [(xff, "2.2.2.2, nope")], "10.0.0.1"),
        ("10.0.0.1", [(xff, "2.2.2.2, nope, 10.3.3.3")], "10.3.3.3"),
        ("10.0.0.1", [(xff, "2001:db8:ffff::9, 2001:db8:1::1")], "2001:db8:1::1"),
        ("2001:db8:ffff::1", [(xff, "2.2.2.2")], "2.2.2.2"),
        ("203.0.113.1", [(xff, "2.2.2.2")], "203.0.113.1"),  # untrusted peer
        ("10.0.0.1", [(xff, ",".join(["10.0.0.5"] * 100))], "10.0.0.5"),  # bounded walk
    ]
    for peer, pairs, expected in cases:
        assert resolve(peer, _headers(*pairs), TRUSTED).client == expected, (peer, pairs)


def test_public_scheme_only_from_a_trusted_peer() -> None:
    headers = _headers(("x-forwarded-proto", "http, https"))
    assert resolve("10.0.0.1", headers, TRUSTED).scheme == "https"  # the nearest proxy's word
    assert resolve("203.0.113.1", headers, TRUSTED).scheme is None
    odd = resolve("10.0.0.1", _headers(("x-forwarded-proto", "gopher")), TRUSTED)
    assert odd.scheme is None


def test_forwarded_element_of_the_client_gives_its_proto() -> None:
    value = 'for=1.1.1.1;proto=http, for="[2001:db8::7]:1";proto=https;host=rt.example.com'
    result = resolve("10.0.0.1", _headers(("forwarded", value)), TRUSTED, "forwarded")
    assert (result.client, result.scheme) == ("2001:db8::7", "https")
    assert parse_forwarded('for="a\\"b";by=x, ;, for=1.1.1.1') == [
        {"for": 'a"b', "by": "x"},
        {},  # an element that says nothing is still a hop nobody can vouch for
        {"for": "1.1.1.1"},
    ]
    assert parse_forwarded("for") == [{}]


def test_ipv6_clients_count_per_network() -> None:
    assert address_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:3:4:5:6", 48) == "2001:db8:1::/48"
    assert address_key("2001:db8::1", 128) == "2001:db8::1/128"
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("not-an-ip") == "not-an-ip"


def _parsed_key(address: str) -> str:
    """What ``address_key`` gives an IPv4-looking address by parsing it."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


OCTET = st.integers(0, 999).flatmap(
    lambda n: st.sampled_from([str(n), f"0{n}", f"00{n}"]).filter(lambda s: len(s) <= 3)
)


@given(st.lists(OCTET, min_size=4, max_size=4))
def test_a_dotted_quad_counts_as_parsing_it_would_say(octets: list[str]) -> None:
    address = ".".join(octets)  # valid, out of range or with leading zeros
    assert address_key(address) == _parsed_key(address)


def test_origins_parse_to_scheme_host_and_port() -> None:
    assert str(parse_origin("HTTPS://App.Example.COM:443")) == "https://app.example.com"
    assert parse_origin("http://a.example:8080") == parse_origin("http://A.example:8080")
    assert parse_origin("http://[::1]:80") is not None
    for bad in ["null", "https://", "https://a.example/", "https://a.example?x", "a.example",
                "https://u@a.example", "https://a..example", "https://a.example:", "1http://a",
                "https://[::1", "https://[zz]", "https://a.example:123456", "https://*.a.example",
                "https://a b"]:  # fmt: skip
        assert parse_origin(bad) is None, bad


def test_origin_patterns() -> None:
    rule = OriginRule("https://*.example.com")
    assert rule.matches(parse_origin("https://a.example.com"))  # type: ignore[arg-type]
    assert rule.matches(parse_origin("https://a.b.example.com"))  # type: ignore[arg-type]
    for other in ["https://example.com", "http://a.example.com", "https://a.example.com:444",
                  "https://aexample.com", "https://a.example.com.evil"]:  # fmt: skip
        assert not rule.matches(parse_origin(other)), other  # type: ignore[arg-type]
    ports = OriginRule("http://localhost:*")
    assert ports.matches(parse_origin("http://localhost:1"))  # type: ignore[arg-type]
    assert not ports.matches(parse_origin("https://localhost:1"))  # type: ignore[arg-type]


def test_origin_matching_is_linear() -> None:
    policy = OriginPolicy([f"https://*.{'a.' * 60}example.com"] * 50)
    host = "a." * 120 + "b"
    start = time.perf_counter()
    for _ in range(100):
        assert not policy.allows(f"https://{host}", "https")
    assert time.perf_counter() - start < 1.0


def test_loopback_policy_checks_the_scheme() -> None:
    policy = OriginPolicy([], loopback_only=True)
    assert policy.allows("http://localhost:3000", "http")
    assert policy.allows("https://127.0.0.2", "https")
    assert not policy.allows("https://localhost", "http")
    assert not policy.allows("http://evil.example", "http")
    assert not policy.allows("ws://localhost", "http")
    nothing = OriginPolicy([])
    assert not nothing.allows("http://localhost", "http")
