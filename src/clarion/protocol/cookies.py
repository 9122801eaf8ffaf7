"""One cookie's value out of a ``Cookie`` header, in time linear in the header's length.

The hub reads one cookie, the connection token (``clarion_token``), and nothing else of the jar.
:class:`http.cookies.SimpleCookie` parses every cookie, and its unquoting is quadratic in the
backslashes of a quoted value on older Python patch releases (3.11 before 3.11.10): one
``Cookie`` header of 16,000 backslashes cost a second of CPU. Here the pairs that name it are found
by one regular expression pass, only the last one's value is cut out, and only that value is
unquoted, in one more pass. Values read as ``SimpleCookie`` reads a token: ``name=value`` pairs
split by ``;`` with blanks around them ignored, the last pair of a name winning, a value in
double quotes unquoted (``\\"``, ``\\\\``, octal ``\\ooo``).
"""

from __future__ import annotations

import re

# No browser sends a jar this large (4 KiB a cookie; proxies refuse header lines of some
# 8 KiB, and clarion's server whole heads over 16 KiB): a larger one is not read, whatever it
# holds, so the work has a bound under any server.
MAX_COOKIE_CHARS = 16384

_BLANKS = " \t"
_ESCAPE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))", re.DOTALL)
_OCTAL = re.compile(r"\\[0-3][0-7][0-7]")
_SIMPLE_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_pairs: dict[str, re.Pattern[str]] = {}


def _unescape(match: re.Match[str]) -> str:
    octal, char = match.group(1, 2)
    return chr(int(octal, 8)) if octal else char


def _unquote(value: str) -> str:
    if "\\" not in value:
        return value
    if _OCTAL.search(value) is None:  # the common escapes: one pass without a Python call each
        return _SIMPLE_ESCAPE.sub(r"\1", value)
    return _ESCAPE.sub(_unescape, value)


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in ``header`` (the last pair naming it), unquoted; ``None``
    without one, or when ``header`` is over :data:`MAX_COOKIE_CHARS`."""
    if not name or len(header) > MAX_COOKIE_CHARS:
        return None
    pair = _pairs.get(name)
    if pair is None:
        # Tried only at the start and after each ";": linear, however the header is made.
        pair = _pairs[name] = re.compile(rf"(?:^|;)[ \t]*{re.escape(name)}[ \t]*=")
    last = None
    for last in pair.finditer(header):  # noqa: B007 - the last pair naming it counts
        pass
    if last is None:
        return None
    start = last.end()
    end = header.find(";", start)
    value = header[start : len(header) if end < 0 else end].strip(_BLANKS)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _unquote(value[1:-1])
    return value
