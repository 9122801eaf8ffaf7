"""Running the real clients' side of the interop tests: the node project and its scripts."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..conftest import timeout

JS = Path(__file__).parent / "js"


def node_project() -> Path:
    """``tests/stomp/js`` with its packages installed (``npm ci`` from the lock file)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the @stomp/stompjs interop test")
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
