"""The code's style and types are part of what CI checks: ruff (lint and format) and mypy
--strict, with the versions the dev extra installs; and the Python programs of the docs pass the
same lint rules, as a reader copies them."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .docblocks import DOCUMENTS, blocks

ROOT = Path(__file__).resolve().parent.parent
# What ruff reads by default in a directory (its `include`); in a git checkout, of these only the
# tracked files are checked, so that a file of one's own saved in the checkout (the README's
# `hello.py`) is not held to the project's style.
RUFF_FILES = ("*.py", "*.pyi", "*.ipynb", "pyproject.toml")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _tracked_files() -> list[str] | None:
    """The project's files ruff reads, as git tracks them; None outside a git checkout."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True
        )
        # An unpacked tree inside another repository is not a checkout of this one.
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != ROOT:
            return None
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", *RUFF_FILES],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    # A file deleted but not yet committed is still listed: ruff would fail to read it.
    return [name for name in listed.stdout.split("\0") if name and (ROOT / name).exists()]


def _ruff(*command: str) -> subprocess.CompletedProcess[str]:
    tracked = _tracked_files()
    # --force-exclude: ruff's own exclusions still apply to files named on its command line.
    paths = ["."] if tracked is None else ["--force-exclude", "--", *tracked]
    return _run(*command, *paths)


@pytest.mark.parametrize(
    "command", [("ruff", "check"), ("ruff", "format", "--check")], ids=" ".join
)
def test_ruff(command: tuple[str, ...]) -> None:
    result = _ruff(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_file_of_ones_own_in_the_checkout_is_not_checked(tmp_path: Path) -> None:
    tracked = _tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout: ruff checks the whole tree")
    assert {"pyproject.toml", "tests/test_style.py"} <= set(tracked)
    stray = ROOT / f"mine_{tmp_path.name}.py"
    stray.write_text("import sys,os\n")  # unsorted, unused, unformatted
    try:
        result = _ruff("ruff", "check")
    finally:
        stray.unlink()
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_blocks_of_the_docs_pass_ruff() -> None:
    checked, failed = 0, []
    for doc in DOCUMENTS:
        for block in blocks(doc):
            if block.lang != "python" or not block.runs:
                continue
            # Named like a file of the docs' directory, so that the project's configuration
            # (and its per-file rules) applies as to a program saved there.
            name = block.doc.parent / f"{block.doc.stem}_line{block.line}.py"
            result = subprocess.run(
                [sys.executable, "-m", "ruff", "check", "--stdin-filename", str(name), "-"],
                input=block.text,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode != 0:
                failed.append(f"{block}:\n{result.stdout}{result.stderr}")
            checked += 1
    assert not failed, "\n".join(failed)
    assert checked >= 3


def test_mypy_strict() -> None:
    with tempfile.TemporaryDirectory() as cache:
        result = _run("mypy", "--strict", "--cache-dir", cache, "src")
    assert result.returncode == 0, result.stdout + result.stderr
