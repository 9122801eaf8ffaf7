"""Which URLs a webhook may target: the defence against server-side request forgery.

A webhook makes the hub send requests where someone else says, so a target must not reach the
hub's own network: loopback, private, link-local, shared (CGNAT), multicast, reserved and
unspecified addresses are refused, including when they hide inside an IPv6 address
(IPv4-mapped ``::ffff:a.b.c.d``, 6to4, NAT64). Hosts named in ``webhook_allow_hosts`` (a host
name, an address or a network such as ``10.1.0.0/16``) are exempt.

The check runs twice: when an endpoint is registered, and on every new connection after DNS
resolution, against the very addresses the socket then connects to — so a name that later
resolves somewhere else (DNS rebinding) is caught too. IPv4 literals are read the way libc's
``inet_aton`` reads them (``2130706433``, ``0177.0.0.1``, ``0x7f.1`` and ``127.1`` are all
127.0.0.1) and stored in dotted-quad form, so what is checked is what gets connected to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from clarion.errors import BadRequest
from clarion.protocol.errors import ErrorCode
from clarion.webhooks.lookup import LOOKUPS, Lookups

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_CHARS = 2048

# Characters of every IPv4 form inet_aton accepts (decimal, octal, hex, 1 to 4 parts).
_IPV4_LIKE = re.compile(r"[0-9a-fA-FxX.]+")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; not "private" in ipaddress
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Special-purpose networks (IANA's registries) that no webhook receiver is on, listed here
# because ``ipaddress`` classes some of them differently from one Python to the next (192.0.0.8
# is global on 3.11.7, private on 3.13) or not at all (site-local fec0::/10, the documentation
# prefix 3fff::/20): the policy must not move with the interpreter.
_SPECIAL = tuple(
    ipaddress.ip_network(net)
    for net in (
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # the 6to4 relay anycast, deprecated
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo among them)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing identifiers
        "fec0::/10",  # site-local, deprecated
    )
)


class UnsafeTarget(BadRequest):
    """The target URL would reach an address webhooks may not reach."""

    code = ErrorCode.UNSAFE_TARGET


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # normalised: IPv4 literals in dotted-quad form
    host: str  # without brackets, lower case
    port: int
    address: IPAddress | None  # set when the host is an address literal


def shown(url: str) -> str:
    """``url`` as logs show it: without user, password and query, which may hold a secret."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a receiver's Location, say ("http://u:p@[x/?q"): cut them out
        scheme, slashes, rest = re.split(r"[?#]", url, maxsplit=1)[0].rpartition("//")
        return scheme + slashes + rest.rpartition("@")[2]
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_ipv4_like_libc(host: str) -> ipaddress.IPv4Address | None:
    """``host`` as ``inet_aton`` would read it, or ``None`` when it is not an IPv4 literal."""
    if _IPV4_LIKE.fullmatch(host) is None or not any("0" <= c <= "9" for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _written(address: IPAddress) -> str:
    """One way of writing ``address`` whatever the Python: an IPv4-mapped address with its IPv4
    part dotted (RFC 5952 §5, as ``str`` does from Python 3.13 on; earlier ones write hex)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def parse_target(url: object) -> Target:
    """Check the shape of a target URL and normalise it; addresses are checked separately."""
    if not isinstance(url, str) or not url:
        raise BadRequest("'url' must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise BadRequest(f"'url' is longer than {MAX_URL_CHARS} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise BadRequest("'url' must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"'url' is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadRequest("'url' must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise BadRequest("'url' must not hold credentials; receivers check the signature")
    host = parts.hostname
    if not host:
        raise BadRequest("'url' has no host")
    if "%" in host:
        raise BadRequest("'url' must not hold an IPv6 zone")
    address: IPAddress | None = parse_ipv4_like_libc(host)
    if address is None and ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise BadRequest(f"'url' holds an invalid IPv6 address: {host!r}") from None
    if address is not None:
        host = _written(address)
    default_port = 443 if scheme == "https" else 80
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    normalised = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    import httpx  # here: a hub that registers no webhook never loads the HTTP client

    try:
        httpx.URL(normalised)
    except httpx.InvalidURL as exc:
        raise BadRequest(f"'url' is not a valid URL: {exc}") from None
    return Target(normalised, host, port if port is not None else default_port, address)


def refusal(address: IPAddress) -> str | None:
    """Why webhooks may not reach ``address``, or ``None`` when they may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = refusal(embedded)
            if inner is not None:
                return f"{inner} inside an IPv6 address"
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (isinstance(address, ipaddress.IPv4Address) and address in _SHARED, "shared (CGNAT)"),
        (any(address in net for net in _SPECIAL), "special-purpose"),
    )
    for refused, name in checks:
        if refused:
            return f"a {name} address"
    if not address.is_global:
        return "not a globally routable address"
    return None


class AllowList:
    """``webhook_allow_hosts``: host names, addresses and networks exempt from the check."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            text = entry.strip().lower().rstrip(".").strip("[]")
            if not text:
                continue
            try:
                self.networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.hosts.add(text)

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            a in net for a in candidates for net in self.networks if a.version == net.version
        )


def check_address(host: str, address: IPAddress, allow: AllowList) -> None:
    if allow.allows_host(host) or allow.allows_address(address):
        return
    reason = refusal(address)
    if reason is not None:
        shown = host if host == str(address) else f"{host} ({address})"
        raise UnsafeTarget(
            f"webhook target {shown} is {reason}; add the host to webhook_allow_hosts to allow it"
        )


async def resolve(host: str, port: int, lookups: Lookups = LOOKUPS) -> list[IPAddress]:
    """Every address ``host`` resolves to, as the socket layer will see it."""
    try:
        infos = await lookups.resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeTarget(f"cannot resolve webhook host {host!r}: {exc}") from None
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # getaddrinfo may append an IPv6 zone ("fe80::1%eth0"); the address is what matters.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeTarget(f"webhook host {host!r} resolves to no IP address")
    return addresses


async def checked_addresses(host: str, port: int, allow: AllowList) -> list[IPAddress]:
    """Resolve ``host`` and refuse it if any of its addresses may not be reached.

    Refusing on any (not only on all) closes the trick of mixing a public and a private answer.
    """
    addresses = await resolve(host, port)
    for address in addresses:
        check_address(host, address, allow)
    return addresses


async def check_target(target: Target, allow: AllowList) -> None:
    """The registration-time check of a parsed target."""
    if target.address is not None:
        check_address(target.host, target.address, allow)
    else:
        await checked_addresses(target.host, target.port, allow)
