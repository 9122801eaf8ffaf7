"""The browser client's own tests (Node's test runner), and the copy the hub serves."""

from __future__ import annotations

import json
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


NODE = shutil.which("node")

# Every code of the tables, and some outside them: the fallbacks must agree too.
PROBED = [*range(1000, 1016), *range(3999, 4010), *range(4499, 4510), 4999, 5000]

TABLES = f"""
import {{ CLOSE_CODES, ERRORS, shouldReconnect }} from "./clarion.js";
const probed = {PROBED!r};
console.log(JSON.stringify({{
  closes: CLOSE_CODES,
  errors: ERRORS,
  reconnect: Object.fromEntries(probed.map((c) => [c, shouldReconnect(c)])),
  lost: shouldReconnect(null),
}}));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_the_browser_client_has_the_hubs_close_and_error_tables() -> None:
    from clarion.protocol.codes import DISCONNECTS, should_reconnect
    from clarion.protocol.errors import ERRORS

    assert NODE is not None
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", TABLES],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    js = json.loads(result.stdout)
    assert js["closes"] == {
        str(code): {"reason": d.reason, "reconnect": d.reconnect} for code, d in DISCONNECTS.items()
    }
    assert js["errors"] == {
        rule.code: {"status": rule.status, "close": rule.close}
        for rule in ERRORS.values()
        if not rule.stomp_only  # the browser client speaks no STOMP
    }
    assert js["reconnect"] == {str(code): should_reconnect(code) for code in PROBED}
    assert js["lost"] is should_reconnect(None) is True
