"""The browser client's own tests (Node's test runner), and the copy the hub serves."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "clients" / "js"


def test_the_hub_ships_the_package_byte_for_byte() -> None:
    # One source: the Python package's copy is a link to the npm package's file, which
    # setuptools resolves into the wheel.
    served = ROOT / "src" / "clarion" / "static" / "clarion.js"
    assert served.is_symlink() and served.resolve() == (PACKAGE / "clarion.js").resolve()
    assert served.read_bytes() == (PACKAGE / "clarion.js").read_bytes()


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_node_test_runner_passes() -> None:
    result = subprocess.run(
        ["node", "--test", "test/"], cwd=PACKAGE, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass " in result.stdout
