"""Numbers as peers write them on the wire: ASCII digits, bounded in length.

``str.isdigit()`` is true for a superscript two (U+00B2, which ``int()`` refuses) and for an
Arabic-Indic or a fullwidth three (U+0663, U+FF13, which ``int()`` reads as 3), and ``int()``
itself takes signs, blanks and underscores: none of that is the grammar of a header, a query
parameter or a frame. Every number taken from a request is read
here, so that anything else is refused as bad input by its caller instead of raising.
"""

from __future__ import annotations

import re

_FRACTION = re.compile(rb"([0-9]+)(?:\.([0-9]+))?")


def ascii_int(text: str | bytes, *, max_digits: int) -> int | None:
    """``text`` as a whole number when it is 1 to ``max_digits`` ASCII digits (``0`` to ``9``:
    no sign, blank, underscore or other script's digits); ``None`` otherwise."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def ascii_decimal(text: str | bytes, *, max_digits: int, max_fraction: int) -> float | None:
    """``text`` as a number when it is 1 to ``max_digits`` ASCII digits, optionally followed by
    ``.`` and 1 to ``max_fraction`` more (``2``, ``0.5``; not ``.5``, ``1e3``, ``inf``);
    ``None`` otherwise."""
    if not text.isascii() or len(text) > max_digits + 1 + max_fraction:
        return None
    raw = text.encode() if isinstance(text, str) else text
    found = _FRACTION.fullmatch(raw)
    if found is None:
        return None
    whole, fraction = found.group(1), found.group(2)
    if len(whole) > max_digits or (fraction is not None and len(fraction) > max_fraction):
        return None
    return float(raw)
