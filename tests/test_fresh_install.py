"""The README's first command, as a new user runs it: ``pip install -e .`` with no extras.

``scripts/test`` builds that virtualenv in ``.venv-fresh`` (nothing but the project and its
declared dependencies); these tests serve, publish, subscribe and resume from it, so that an
import only an extra satisfies cannot hide behind the test suite's own, fuller, environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import clarion_server, timeout

pytestmark = clarion_server("`clarion serve` from a fresh install")

ROOT = Path(__file__).parents[1]
FRESH = ROOT / ".venv-fresh"
CLARION = FRESH / "bin" / "clarion"
PYTHON = FRESH / "bin" / "python"

if not CLARION.exists():
    if os.environ.get("CI") == "true":
        # On CI the README's test command must have built it: a skip would hide the check.
        pytest.fail(f"{FRESH.name} is missing: scripts/test builds it", pytrace=False)
    pytest.skip(
        f"{FRESH.name} is missing: ./scripts/test builds it (pip install -e . without extras)",
        allow_module_level=True,
    )


def _env() -> dict[str, str]:
    # Nothing of the test suite's own environment may leak into the fresh install.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("CLARION_")
    }
    env["PATH"] = f"{FRESH / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=timeout(60),
    )


def test_the_fresh_install_has_no_extras(tmp_path: Path) -> None:
    result = _run(PYTHON, "-c", "import redis", cwd=tmp_path)
    assert result.returncode != 0 and "No module named 'redis'" in result.stderr
    result = _run(PYTHON, "-c", "import clarion; print(clarion.__file__)", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(ROOT / "src")


def test_version_help_and_import(tmp_path: Path) -> None:
    result = _run(CLARION, "--version", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, "clarion 0.1.0"), result.stderr
    result = _run(CLARION, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "serve" in result.stdout, result.stderr
    result = _run(PYTHON, "-c", "from clarion import Hub, Settings; Hub(Settings())", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_redis_engine_asks_for_its_extra(tmp_path: Path) -> None:
    engine = "redis://127.0.0.1:6379/0"
    result = _run(CLARION, "serve", "--port", "0", "--engine", engine, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "clarion: the redis engine needs the redis extra (No module named 'redis'): "
        "pip install -e '.[redis]' in the checkout"
    )


async def _cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CLARION),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout(30))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serve_publish_subscribe_resume(hub_process: Any, tmp_path: Path) -> None:
    hub = await hub_process(cli=[str(CLARION)], cwd=tmp_path, env=_env())
    assert any("engine=memory" in line for line in hub.log), hub.log
    url = hub.http_url
    async with httpx.AsyncClient(base_url=url, timeout=timeout(10)) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"

        published = []
        for data in ({"text": "hello"}, "one", "two", "three"):
            args = ("publish", "chat:lobby", json.dumps(data), "--url", url)
            code, out, err = await _cli(*args, cwd=tmp_path)
            assert code == 0, err
            published.append(json.loads(out))
        assert [p["offset"] for p in published] == [1, 2, 3, 4]
        first = published[0]

        sub = await asyncio.create_subprocess_exec(
            str(CLARION), "subscribe", "chat:lobby", "--since", first["cursor"], "--url", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
            cwd=tmp_path,
        )  # fmt: skip
        assert sub.stdout is not None
        try:
            missed = [
                json.loads(await asyncio.wait_for(sub.stdout.readline(), timeout(15)))
                for _ in range(3)
            ]
            assert [(m["offset"], m["data"]) for m in missed] == [
                (2, "one"),
                (3, "two"),
                (4, "three"),
            ]
            live = await http.post("/api/publish", json={"channel": "chat:lobby", "data": "live"})
            assert live.status_code == 200
            line = json.loads(await asyncio.wait_for(sub.stdout.readline(), timeout(10)))
            assert (line["offset"], line["data"]) == (5, "live")
        finally:
            sub.terminate()
            await sub.wait()
