"""The browser client's own tests (Node's test runner), and the copy the hub serves."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "clients" / "js"


def test_the_hub_ships_the_package_byte_for_byte() -> None:
    # One source: the Python package's copy is a link to the npm package's file, which
    # setuptools resolves into the wheel.
    served = ROOT / "src" / "clarion" / "static" / "clarion.js"
    assert served.is_symlink() and served.resolve() == (PACKAGE / "clarion.js").resolve()
    assert served.read_bytes() == (PACKAGE / "clarion.js").read_bytes()


# Where the docs say how to get the browser client: they must name what the repository holds.
GUIDES = [PACKAGE / "README.md", ROOT / "docs" / "client.md"]
CHECKOUT = "/path/to/clarion"  # the docs' stand-in for the reader's checkout


def _package_name() -> str:
    manifest = json.loads((PACKAGE / "package.json").read_text())
    # Not on the npm registry: private, so that nothing publishes it by mistake.
    assert manifest["private"] is True
    name: str = manifest["name"]
    return name


def test_the_docs_import_the_package_by_its_name_and_install_it_from_a_checkout() -> None:
    name = _package_name()
    installs = 0
    for guide in GUIDES:
        text = guide.read_text()
        # A bare specifier (not a path or a URL) is the package a bundler resolves.
        for spec in re.findall(r'from "([^"./][^"]*)"', text):
            assert spec == name or "://" in spec, f"{guide.name} imports {spec!r}"
        assert not re.search(rf"npm (install|i|add) {re.escape(name)}\b", text), guide.name
        for path in re.findall(r"npm install (\S+/clients/js)\b", text):
            assert path == f"{CHECKOUT}/clients/js", f"{guide.name}: {path}"
            installs += 1
        if "importlib.resources" in text:
            (command,) = set(re.findall(r"`(python -c \"[^`]*\")`", text))
            shown = subprocess.run(
                [sys.executable, *shlex.split(command)[1:]],
                capture_output=True,
                text=True,
                check=True,
            )
            shipped = Path(shown.stdout.strip())
            assert shipped.read_bytes() == (PACKAGE / "clarion.js").read_bytes()
    assert installs == len(GUIDES)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_the_documented_npm_install_gives_a_package_that_imports(tmp_path: Path) -> None:
    (command,) = re.findall(r"npm install \S+/clients/js", (PACKAGE / "README.md").read_text())
    args = shlex.split(command.replace(CHECKOUT, str(ROOT)))
    (tmp_path / "package.json").write_text('{"name": "app", "private": true}')
    subprocess.run(
        [*args, "--offline", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
        timeout=120,
    )
    script = f'import {{ connect }} from "{_package_name()}"; console.log(typeof connect);'
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "function", result.stderr


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
import {{ CLOSE_CODES, ERRORS, endsClient, refusal, shouldReconnect }} from "./clarion.js";
const probed = {PROBED!r};
const refusals = {{}};
for (const code of [...Object.keys(ERRORS), "banned", "http_502"]) {{
  for (const status of [0, 400, 401, 403, 404, 409, 413, 418, 429, 500, 503]) {{
    for (const refreshable of [false, true]) {{
      for (const whole of [false, true]) {{
        const key = [code, status, refreshable, whole];
        refusals[key] = refusal(code, {{ status, refreshable, whole }});
      }}
    }}
  }}
}}
const ends = {{}};
for (const code of [null, ...probed]) {{
  for (const reconnect of [null, false, true]) {{
    for (const refreshable of [false, true]) {{
      ends[[code, reconnect, refreshable]] = endsClient(code, reconnect, refreshable);
    }}
  }}
}}
console.log(JSON.stringify({{
  closes: CLOSE_CODES,
  errors: ERRORS,
  reconnect: Object.fromEntries(probed.map((c) => [c, shouldReconnect(c)])),
  lost: shouldReconnect(null),
  refusals,
  ends,
}}));
"""


def _tables_in_js() -> dict[str, Any]:
    assert NODE is not None
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", TABLES],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    tables: dict[str, Any] = json.loads(result.stdout)
    return tables


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_the_browser_client_has_the_hubs_close_and_error_tables() -> None:
    from clarion.protocol.codes import DISCONNECTS, should_reconnect
    from clarion.protocol.errors import ERRORS

    js = _tables_in_js()
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


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_the_browser_client_decides_as_the_python_client_on_every_refusal_and_close() -> None:
    from clarion.client.refusals import stops, verdict

    js = _tables_in_js()
    refusals = {}
    for key in js["refusals"]:
        code, status, refreshable, whole = key.split(",")
        refusals[key] = verdict(
            code, int(status), refreshable=refreshable == "true", whole=whole == "true"
        )
    assert len(refusals) > 1000 and set(refusals.values()) == {"refresh", "backoff", "stop", "fail"}
    assert js["refusals"] == refusals
    ends = {}
    for key in js["ends"]:
        code, reconnect, refreshable = key.split(",")
        token = (lambda: "t") if refreshable == "true" else "t"
        given = {"": None, "true": True, "false": False}[reconnect]
        ends[key] = stops(int(code) if code else None, given, token)
    assert len(ends) > 200
    assert js["ends"] == ends
