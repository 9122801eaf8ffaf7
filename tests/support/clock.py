"""A wall clock a test steps under running processes: libfaketime, preloaded into them.

A process started with :attr:`SteppedClock.env` reads its clock offset from a file at every
clock read (``FAKETIME_NO_CACHE``), so rewriting the file steps the wall clock of a running hub
or ``redis-server``, as an NTP step or an operator's ``date -s`` would. Only ``CLOCK_REALTIME``
moves: libfaketime fakes ``CLOCK_MONOTONIC`` too unless told not to
(``FAKETIME_DONT_FAKE_MONOTONIC``), which no real clock step does. The test's own clock is
untouched; :meth:`SteppedClock.now` is the stepped processes' wall clock.

Python's ``time.sleep`` fails (``EINVAL``) under this setting (libfaketime 0.9.10 turns its
absolute monotonic deadline into a wall-clock one); the hub never calls it — asyncio waits
in ``epoll``, which libfaketime leaves alone.
"""

from __future__ import annotations

import glob
import subprocess
import sys
import time
from pathlib import Path

LIBFAKETIME = next(
    iter(
        sorted(
            glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
            + glob.glob("/usr/lib/faketime/libfaketime.so.1")
            + glob.glob("/usr/local/lib/faketime/libfaketime.so.1")
        )
    ),
    None,
)


class SteppedClock:
    """The wall-clock offset of the processes started with :attr:`env`, in whole seconds."""

    def __init__(self, path: Path) -> None:
        assert LIBFAKETIME is not None
        self.path = path
        self.offset = 0
        self._write()

    @property
    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step(self, seconds: int) -> None:
        """Move the wall clock of every process started with :attr:`env` by ``seconds``."""
        self.offset += seconds
        self._write()

    def now(self) -> float:
        return time.time() + self.offset

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{self.offset:+d}\n")
        tmp.replace(self.path)  # a reader never sees a half-written offset

    def check(self) -> None:
        """A process started with :attr:`env` sees a step of a day, and an unmoved monotonic
        clock; the offset is back where it was afterwards."""
        probe = "import time; print(time.time(), time.monotonic())"
        self.step(86400)
        try:
            before = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-c", probe],
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            after = time.monotonic()
            wall, monotonic = float(out[0]), float(out[1])
            assert abs(wall - self.now()) < 60, f"libfaketime did not step the clock: {wall}"
            assert before <= monotonic <= after, "libfaketime moved the monotonic clock"
        finally:
            self.step(-86400)
