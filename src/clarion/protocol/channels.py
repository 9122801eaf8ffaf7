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
    # The pattern alone decides (it bounds the length too); the checks below say why not.
    if isinstance(name, str) and _CHANNEL_RE.fullmatch(name) is not None:
        return name
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
    """Return ``pattern`` if it is a valid channel pattern, else raise :class:`BadChannel`."""
    if not isinstance(pattern, str) or _PATTERN_RE.fullmatch(pattern) is None:
        shown = repr(pattern) if len(repr(pattern)) <= 80 else repr(pattern)[:77] + "..."
        raise BadChannel(
            f"invalid channel pattern {shown}: 1 to {MAX_CHANNEL_BYTES} characters of "
            "letters, digits, _ . : @ / = , + - and *"
        )
    return pattern


@lru_cache(maxsize=4096)
def _parts(pattern: str) -> tuple[str, tuple[str, ...], str]:
    """A pattern split at its stars: the literal head, the literals between stars, the tail."""
    head, *middle, tail = pattern.split("*")
    return head, tuple(part for part in middle if part), tail


def matches(pattern: str, channel: str) -> bool:
    """Whether ``channel`` matches ``pattern`` (``*`` matches any run of characters, ``:`` too).

    No backtracking: a star only ever needs the leftmost place where the next literal occurs
    (any later one leaves less room for what follows), so each literal is searched for once,
    left to right, and no character of the channel is scanned by two searches. The cost grows
    with the channel's length whatever the pattern, however many stars it holds.
    """
    if "*" not in pattern:
        return pattern == channel
    head, middle, tail = _parts(pattern)
    end = len(channel) - len(tail)
    if end < len(head) or not channel.startswith(head) or not channel.endswith(tail):
        return False
    pos = len(head)
    for part in middle:
        found = channel.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


def matches_any(patterns: tuple[str, ...] | list[str], channel: str) -> bool:
    return any(matches(p, channel) for p in patterns)
