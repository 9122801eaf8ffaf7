"""JSON bytes that are kept: a publication's JSON in its history, a webhook body in its queue;
and whether a value read from JSON can be written back at all.

``orjson.dumps`` returns bytes that hold on to the buffer they were written into, 4 KiB at
least, whatever their length: harmless for an answer written at once, forty times the text
for bytes kept as long as a publication stays in history. What is kept is a copy the size of
the text.
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps_to_keep(obj: Any) -> bytes:
    """``orjson.dumps(obj)``, in bytes of its own length."""
    return bytes(memoryview(orjson.dumps(obj)))


def writable(obj: Any) -> bool:
    """Whether ``orjson`` can write ``obj``: what it reads may be nested up to 1,024 levels,
    what it writes at most 254. A value a peer sent is checked where it is taken, so that it
    cannot fail later, in a publication, a presence event or a hook's body, as an internal
    error."""
    try:
        orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return False
    return True
