"""Who the client is behind reverse proxies: trusted hops and their forwarding headers.

A proxy in front of the hub makes every connection come from the proxy's address. Proxies say
who their client was in a header (``X-Forwarded-For``, ``Forwarded`` or ``X-Real-IP``), but any
client can send those headers too, so they are believed only from a peer listed in
``trusted_proxies``, and only as far as the chain of hops stays trusted: each proxy appends the
address it received the request from, so walking the list from the right, the first address that
is not a trusted proxy is the client. Entries to its left were written by that client and are
ignored, whatever they say.

Exactly one address header is read (``forwarded_header``): a proxy that sets
``X-Forwarded-For`` passes a client's own ``Forwarded`` header through untouched, so believing
both would let the client choose. The public scheme comes from the same proxy:
``X-Forwarded-Proto`` (the right-most value: the nearest proxy's word), or the ``proto``
parameter of the ``Forwarded`` element that names the client. The public *host* is not read:
whatever a proxy forwards as the host is the name the browser looked up, which an attacker's DNS
can point anywhere (DNS rebinding), so origins are compared with configuration only.

Pure functions over header values; no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from clarion.protocol.numbers import ascii_int

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ForwardedHeader = Literal["x-forwarded-for", "forwarded", "x-real-ip"]
FORWARDED_HEADERS: tuple[ForwardedHeader, ...] = ("x-forwarded-for", "forwarded", "x-real-ip")

# Bounds on what is parsed from one request: a chain longer than this is not a real proxy chain.
MAX_HOPS = 32
MAX_HEADER_CHARS = 4096


def parse_address(text: str) -> IPAddress | None:
    """An IP address as proxies write it: bare, ``[v6]``, ``v4:port``, ``[v6]:port``; or None."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_port_suffix(text[end + 1 :])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 has at least two colons
        text, _, port = text.partition(":")
        if ascii_int(port, max_digits=5) is None:
            return None
    if "%" in text:  # zone ids name an interface of the proxy, not a client
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def elsewhere(peer: str | None) -> bool:
    """Is a connection's peer on another machine? A peer that is no IP address (a Unix
    socket, a test client) is not."""
    address = parse_address(peer.partition("%")[0]) if peer else None
    return address is not None and not address.is_loopback


def _is_port_suffix(text: str) -> bool:
    return text.startswith(":") and ascii_int(text[1:], max_digits=5) is not None


def parse_network(text: str) -> IPNetwork:
    """One ``trusted_proxies`` entry: an address or a CIDR block. Raises ValueError."""
    return ipaddress.ip_network(text.strip(), strict=False)


class TrustedProxies:
    """The peers whose forwarding headers are believed."""

    __slots__ = ("_ranges",)

    def __init__(self, entries: Iterable[str]) -> None:
        # (version, first, last) as integers: comparing ints is much cheaper than ``in network``.
        self._ranges = tuple(
            (net.version, int(net.network_address), int(net.broadcast_address))
            for net in (parse_network(entry) for entry in entries)
        )

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __contains__(self, address: IPAddress) -> bool:
        version, value = address.version, int(address)
        return any(v == version and first <= value <= last for v, first, last in self._ranges)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the request says about itself once the trusted hops are accounted for."""

    client: str | None  # the client's address, normalised (None: unknown)
    scheme: str | None  # public scheme given by a trusted proxy ("http"/"https"), or None


def resolve(
    peer: str | None,
    headers: Sequence[tuple[bytes, bytes]],
    trusted: TrustedProxies,
    header: ForwardedHeader = "x-forwarded-for",
) -> Forwarded:
    """The client address and public scheme of a request received from ``peer``.

    Headers from an untrusted peer change nothing: the peer is the client.
    """
    peer_address = parse_address(peer) if peer is not None else None
    if peer_address is None:
        return Forwarded(peer, None)
    if not trusted or peer_address not in trusted:
        return Forwarded(str(peer_address), None)
    if header == "forwarded":
        elements = parse_forwarded(_joined(headers, b"forwarded"))
        index, client = _rightmost_untrusted(
            peer_address, [e.get("for", "") for e in elements], trusted
        )
        element = elements[index] if index is not None else {}
        return Forwarded(str(client), _scheme(element.get("proto")))
    if header == "x-real-ip":
        values = _values(headers, b"x-real-ip")
        # One value set by the nearest proxy; several copies mean nobody replaced the client's.
        real = parse_address(values[0]) if len(values) == 1 else None
        client = real if real is not None else peer_address
    else:
        entries = _split(_joined(headers, b"x-forwarded-for"))
        _, client = _rightmost_untrusted(peer_address, entries, trusted)
    proto = _split(_joined(headers, b"x-forwarded-proto"))
    return Forwarded(str(client), _scheme(proto[-1] if proto else None))


def _rightmost_untrusted(
    peer: IPAddress, entries: list[str], trusted: TrustedProxies
) -> tuple[int | None, IPAddress]:
    """Walk the hops from the right while they are trusted; the index and address of the client.

    Each entry was written by the hop to its right, which was trusted to get here. An entry that
    is not an address (``unknown``, an obfuscated ``_name``, garbage) leaves the client unknown to
    the proxy that wrote it: that proxy is then the best-known client address, which keeps caps
    conservative (they count against the proxy) and spoofing impossible. A chain where every hop
    is trusted ends at its left-most entry.
    """
    client = peer
    index: int | None = None
    for i in range(len(entries) - 1, max(-1, len(entries) - 1 - MAX_HOPS), -1):
        address = parse_address(entries[i])
        if address is None:
            return index, client
        client, index = address, i
        if address not in trusted:
            break
    return index, client


def _values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in headers if key == name]


def _joined(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    # Repeated header fields are one comma-separated list (RFC 9110 §5.3).
    joined = ",".join(_values(headers, name))
    return joined if len(joined) <= MAX_HEADER_CHARS else joined[-MAX_HEADER_CHARS:]


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded``: one dict of lower-cased parameters per element.

    An element that cannot be parsed is kept as an empty dict, so that it still counts as a hop
    (and stops the walk: nobody can tell who sent it).
    """
    elements: list[dict[str, str]] = []
    for raw in _split_quoted(value, ","):
        element: dict[str, str] = {}
        for pair in _split_quoted(raw, ";"):
            name, sep, val = pair.partition("=")
            name = name.strip().lower()
            val = val.strip()
            if not sep or not name or not val:
                element = {}
                break
            if val.startswith('"'):
                if len(val) < 2 or not val.endswith('"'):
                    element = {}
                    break
                val = val[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            element[name] = val
        elements.append(element)
    return elements


def _split_quoted(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes; empty parts are dropped."""
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [part for part in (p.strip() for p in parts) if part]


def _scheme(value: str | None) -> str | None:
    value = (value or "").strip().lower()
    return value if value in ("http", "https") else None


_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


def address_key(address: str, ipv6_prefix: int = 64) -> str:
    """What per-IP caps count: an IPv4 address, or the IPv6 ``/ipv6_prefix`` network it is in.

    One IPv6 subscriber is usually given a whole /64 (or more), so counting single IPv6
    addresses would let one client open as many connections as it has addresses.
    """
    if _DOTTED_QUAD.fullmatch(address) is not None:
        # Its own key, valid or not: a valid one is already written as ``ipaddress`` writes
        # it (which takes no leading zeros), and anything else is kept as given. Checked first
        # because it is every IPv4 connection's case, and parsing is dear.
        return address
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        network = ipaddress.IPv6Network((parsed, ipv6_prefix), strict=False)
        return str(network)
    return str(parsed)
