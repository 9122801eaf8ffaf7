"""Browser origins: parsing the ``Origin`` header and matching it against configured origins.

An origin is a scheme, a host and a port (RFC 6454), nothing else: a value with a path, a
query, user info or an unknown shape is not an origin and matches nothing. Default ports are
made explicit (``https://a.example`` is ``https://a.example:443``) and hosts are lower-cased, so
equal origins compare equal whatever their spelling.

Configured entries are exact origins or patterns with one wildcard in a fixed place:
``https://*.example.com`` (any sub-domain, at any depth, not the apex) and ``http://localhost:*``
(any port). Matching compares the three parts; it is a suffix test, linear in the length of the
host, with no regular expression.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from clarion.protocol.numbers import ascii_int

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=")
MAX_ORIGIN_CHARS = 512


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str  # lower-case; IPv6 in brackets
    port: int | None  # None for a scheme with no default port and none given

    def __str__(self) -> str:
        default = DEFAULT_PORTS.get(self.scheme)
        if self.port is None or self.port == default:
            return f"{self.scheme}://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        host = self.host
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False


def parse_origin(value: str, *, pattern: bool = False) -> Origin | None:
    """``scheme://host[:port]`` → :class:`Origin`; None when ``value`` is not one.

    With ``pattern``, the host may start with ``*.`` and the port may be ``*`` (kept as the
    host text ``*.…`` and port ``-1``).
    """
    if not value or len(value) > MAX_ORIGIN_CHARS:
        return None
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme or not set(scheme) <= _SCHEME_CHARS or not scheme[0].isalpha():
        return None
    if not rest or any(c in rest for c in "/?#@\\ \t"):
        return None
    port: int | None = DEFAULT_PORTS.get(scheme)
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return None
        host, tail = rest[: end + 1].lower(), rest[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    else:
        host, colon, port_text = rest.partition(":")
        host = host.lower()
        tail = colon + port_text
        body = host[2:] if pattern and host.startswith("*.") else host
        if not body or not set(body) <= _HOST_CHARS or ".." in body or "*" in body:
            return None
    if tail:
        if not tail.startswith(":"):
            return None
        port_text = tail[1:]
        if pattern and port_text == "*":
            port = -1
        else:
            number = ascii_int(port_text, max_digits=5)
            if number is None or number > 65535:
                return None
            port = number
    return Origin(scheme, host, port)


class OriginRule:
    """One configured ``allowed_origins`` entry, exact or with a wildcard."""

    __slots__ = ("any_port", "origin", "suffix")

    def __init__(self, text: str) -> None:
        origin = parse_origin(text, pattern=True)
        if origin is None:
            raise ValueError(
                f"not an origin or origin pattern: {text!r} "
                "(expected scheme://host[:port], e.g. https://app.example.com, "
                "https://*.example.com or http://localhost:*)"
            )
        self.origin = origin
        self.any_port = origin.port == -1
        self.suffix = origin.host[1:] if origin.host.startswith("*.") else None  # ".example.com"

    def matches(self, origin: Origin) -> bool:
        rule = self.origin
        if origin.scheme != rule.scheme:
            return False
        if not self.any_port and origin.port != rule.port:
            return False
        if self.suffix is None:
            return origin.host == rule.host
        return len(origin.host) > len(self.suffix) and origin.host.endswith(self.suffix)


class OriginPolicy:
    """Which browser origins may connect: the configured rules, or loopback pages only."""

    __slots__ = ("any", "loopback_only", "rules")

    def __init__(self, allowed: list[str], *, loopback_only: bool = False) -> None:
        self.any = "*" in allowed
        self.rules = tuple(OriginRule(entry) for entry in allowed if entry != "*")
        self.loopback_only = loopback_only

    def allows(self, value: str, public_scheme: str = "http") -> bool:
        """Is the ``Origin`` header ``value`` allowed on a request the public reached over
        ``public_scheme`` (``http``/``https``; only the loopback rule reads it)?"""
        return self.any or self.names(value, public_scheme)

    def names(self, value: str, public_scheme: str = "http") -> bool:
        """Is ``value`` allowed by a rule of its own, not only by ``*``? Only such an origin is
        trusted with the visitor's ambient credentials (the token cookie)."""
        origin = parse_origin(value)
        if origin is None:
            return False
        if self.loopback_only:
            # A page on this machine, over the scheme the hub is reached by: a https page must
            # not be mistaken for the hub's own http origin, nor an evil:// one for either.
            return origin.scheme == public_scheme and origin.is_loopback
        return any(rule.matches(origin) for rule in self.rules)
