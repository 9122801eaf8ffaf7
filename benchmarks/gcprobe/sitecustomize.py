"""What the garbage collector costs a hub under a benchmark's load: put this directory on
``PYTHONPATH`` (as an absolute path: the servers run in directories of their own) and every
``clarion serve`` the benchmark starts loads it (the runner passes its environment on; the
variables are not named ``CLARION_…``, which the hub would refuse as unknown settings)::

    PYTHONPATH=$PWD/benchmarks/gcprobe GCPROBE=off .venv/bin/python -m benchmarks.run \\
        --scenarios p7 --servers clarion --p7-rate 1000 --duration 8 --warmup 2 --out - \\
        --no-install --quiet-wait 10 --retries 0

``GCPROBE``: ``off`` switches the collector off in the hub; ``untrack`` takes every
publication and its dict of encodings out of the collector's lists (``PyObject_GC_UnTrack``
through ``ctypes``: a measurement of what that would save, not something the hub does — an
untracked object in a reference cycle is never freed); ``young:N`` makes the young collections
come every ``N`` allocations instead of what ``clarion serve`` sets; ``thresholds:A,B,C`` sets
all three thresholds instead; anything else, or unset,
changes nothing.
Either way each collection of the hub longer than 1 ms, and every full one, is written to
``<GCPROBE_DIR or the temporary directory>/gcprobe-<pid>.txt``: the wall time, the
generation, the pause and what it collected.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from typing import Any


def _install() -> None:
    mode = os.environ.get("GCPROBE", "")
    if mode == "off":
        gc.disable()
    elif mode == "untrack":
        _untrack_publications()
    elif mode.startswith("young:"):
        _young_every(int(mode.partition(":")[2]))
    elif mode.startswith("thresholds:"):
        _thresholds(*(int(n) for n in mode.partition(":")[2].split(",")))
    folder = os.environ.get("GCPROBE_DIR", tempfile.gettempdir())
    out = open(os.path.join(folder, f"gcprobe-{os.getpid()}.txt"), "w", buffering=1)  # noqa: SIM115
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        generation = info["generation"]
        if ms > 1 or generation == 2:
            out.write(f"{time.time():.3f} gen{generation} {ms:.2f}ms {info['collected']}\n")

    gc.callbacks.append(timed)


def _young_every(allocations: int) -> None:
    real = gc.set_threshold

    def set_threshold(young: int, *older: int) -> None:  # what ``clarion serve`` calls
        real(allocations, *older)

    gc.set_threshold = set_threshold


def _thresholds(*given: int) -> None:
    real = gc.set_threshold

    def set_threshold(*_: int) -> None:  # what ``clarion serve`` calls: these instead
        real(*given)

    gc.set_threshold = set_threshold


def _untrack_publications() -> None:
    import ctypes

    from clarion.protocol import publication

    untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    untrack.argtypes = [ctypes.py_object]
    made = publication.Publication.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        untrack(self)  # its encodings are kept in slots (a dict only for a second format)

    publication.Publication.__init__ = init  # type: ignore[method-assign]


if "serve" in sys.argv[1:2]:
    _install()
