"""The code's style and types are part of what CI checks: ruff (lint and format) and mypy
--strict, with the versions the dev extra installs."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")], ids=" ".join
)
def test_ruff(command: tuple[str, ...]) -> None:
    result = _run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    with tempfile.TemporaryDirectory() as cache:
        result = _run("mypy", "--strict", "--cache-dir", cache, "src")
    assert result.returncode == 0, result.stdout + result.stderr
