"""Python lines a call runs: a count of work that the machine's load does not change."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


def python_steps(call: Callable[[], object]) -> int:
    """Python lines run by ``call`` (comprehensions and the functions it calls included)."""
    lines = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return trace

    # The collector would run other tests' finalizers (an event loop's, a transport's) inside
    # the call whenever it came due, and count their lines as the call's: it runs before.
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(None)
        if collecting:
            gc.enable()
    return lines
