"""The Autobahn|Testsuite cases, through ``kosoku`` (skipped when it is not installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .autobahn import MAX_MESSAGE, echo, kosoku_path, run_kosoku

pytestmark = pytest.mark.skipif(kosoku_path() is None, reason="kosoku is not installed")


@pytest.mark.parametrize(
    ("selection", "least"),
    [
        # Everything but 9.* (below) and 12.*/13.* (permessage-deflate, deliberately not offered).
        (["-x", "9.*", "-x", "12.*", "-x", "13.*"], 240),
        (["-i", "9.*"], 50),  # large messages and many frames
    ],
    ids=["core", "performance"],
)
async def test_autobahn_cases_pass(
    start_server: Any, tmp_path: Path, selection: list[str], least: int
) -> None:
    server = await start_server(echo, max_message_bytes=MAX_MESSAGE)
    status, output = await run_kosoku(server.port, [*selection, "-p", "8", "-o", str(tmp_path)])
    assert status == 0, output
    verdicts = {}
    for report in tmp_path.glob("*case*.json"):
        case = json.loads(report.read_text())
        verdicts[case["id"]] = (case["behavior"], case["behaviorClose"])
    assert len(verdicts) >= least
    passing = {"OK", "NON-STRICT", "INFORMATIONAL"}
    assert {case: v for case, v in verdicts.items() if not set(v) <= passing} == {}
