"""Running the real clients' side of the interop tests: the node project and its scripts, and
stomp.py's listener."""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..conftest import timeout

JS = Path(__file__).parent / "js"


def node_project() -> Path:
    """``tests/stomp/js`` with its packages installed (``npm ci`` from the lock file)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the @stomp/stompjs interop test")
    # Both server paths' test runs may get here at once: one installs, the other waits for it.
    lock = Path(tempfile.gettempdir()) / f"clarion-npm-{zlib.crc32(bytes(JS))}.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not (JS / "node_modules" / "@stomp" / "stompjs").is_dir():
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=JS,
                capture_output=True,
                text=True,
                timeout=timeout(300),
            )
            assert result.returncode == 0, f"npm ci failed:\n{result.stderr}"
    return JS


async def run_node(script: Path, *args: str, wait: float = 60) -> dict[str, Any]:
    """Run a node script without blocking the event loop (the hub serves it from this loop)."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        *args,
        cwd=script.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout(wait))
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = out.decode().strip().splitlines()
    assert lines, f"no output from {script.name}; stderr:\n{err.decode()}"
    report: dict[str, Any] = json.loads(lines[-1])
    assert process.returncode == 0 and "failure" not in report, (report, err.decode())
    return report


class Listener:
    """Collects what stomp.py's receiver thread hands over, for the test's thread to wait on."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.receipts: dict[str, dict[str, str]] = {}
        self.errors: list[Any] = []
        self.heart_beats = 0
        self.disconnected = threading.Event()
        self.lock = threading.Condition()

    def on_message(self, frame: Any) -> None:
        with self.lock:
            self.messages.append(frame)
            self.lock.notify_all()

    def on_receipt(self, frame: Any) -> None:
        with self.lock:
            self.receipts[frame.headers["receipt-id"]] = frame.headers
            self.lock.notify_all()

    def on_error(self, frame: Any) -> None:
        with self.lock:
            self.errors.append(frame)
            self.lock.notify_all()

    def on_heartbeat(self) -> None:
        self.heart_beats += 1

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def wait_for(self, check: Callable[[], bool], what: str) -> None:
        with self.lock:
            assert self.lock.wait_for(check, timeout(5)), f"timed out waiting for {what}"
