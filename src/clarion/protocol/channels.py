"""Channel names, namespaces and channel patterns."""

from __future__ import annotations

import re
from functools import lru_cache

from clarion.errors import BadChannel

MAX_CHANNEL_BYTES = 255
DEFAULT_NAMESPACE = "default"

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:@/=,+\-]{1,255}")
# Patterns are channel names where "*" stands for any run of characters (including ":").
_PATTERN_RE = re.compile(r"[A-Za-z0-9_.:@/=,+\-*]{1,255}")


def validate_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`BadChannel`."""
    if not isinstance(name, str):
        raise BadChannel("channel must be a string")
    if not name:
        raise BadChannel("channel must not be empty")
    if len(name) > MAX_CHANNEL_BYTES:
        raise BadChannel(f"channel is longer than {MAX_CHANNEL_BYTES} bytes")
    if _CHANNEL_RE.fullmatch(name) is None:
        raise BadChannel("channel may only contain letters, digits and _ . : @ / = , + -")
    return name


def namespace_of(channel: str) -> str:
    """The part before the first ``:``, or the default namespace."""
    head, sep, _ = channel.partition(":")
    return head if sep and head else DEFAULT_NAMESPACE


def validate_pattern(pattern: object) -> str:
    if not isinstance(pattern, str) or _PATTERN_RE.fullmatch(pattern) is None:
        raise BadChannel(f"invalid channel pattern: {pattern!r}")
    return pattern


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def matches(pattern: str, channel: str) -> bool:
    """Whether ``channel`` matches ``pattern`` (``*`` matches any run of characters)."""
    if "*" not in pattern:
        return pattern == channel
    return _compile(pattern).fullmatch(channel) is not None


def matches_any(patterns: tuple[str, ...] | list[str], channel: str) -> bool:
    return any(matches(p, channel) for p in patterns)
