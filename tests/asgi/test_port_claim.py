"""A hub on the memory engine claims its port with a lock file; where none can be kept (a
read-only temporary directory, say) it claims nothing, serves every request, and closes. A hub
that lets go removes the file, and claims and releases at once never make two holders."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from clarion import Settings
from clarion.asgi import portclaim

from ..conftest import clarion_server, timeout
from .test_local_only import base, served


async def test_a_port_that_cannot_be_claimed_is_served_and_the_hub_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    async with served(Settings(data_dir=str(tmp_path / "data"))) as port:
        # Where the lock would be, a directory: it cannot be opened for writing.
        os.mkdir(portclaim._path(port))
        async with httpx.AsyncClient(timeout=timeout(10)) as http:
            for _ in range(2):
                r = await http.get(f"http://{base('127.0.0.1', port)}/healthz")
                assert r.status_code == 200, r.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert port not in portclaim._held


async def test_a_hub_that_closes_removes_its_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    async with served(Settings(data_dir=str(tmp_path / "data"))) as port:
        async with httpx.AsyncClient(timeout=timeout(10)) as http:
            r = await http.get(f"http://{base('127.0.0.1', port)}/healthz")
            assert r.status_code == 200, r.text
        assert os.path.exists(portclaim._path(port))  # claimed
    assert port not in portclaim._held
    assert not list(tmp_path.glob("clarion-*.lock"))


def test_the_last_claim_of_a_process_removes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hubs of one process share a claim: the file stays until the last lets go."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    listener = str(tmp_path / "hub.sock")
    path = portclaim._path(listener)
    assert portclaim._lock(listener) and portclaim._lock(listener)
    portclaim._unlock(listener)
    assert os.path.exists(path)
    portclaim._unlock(listener)
    assert not os.path.exists(path)


def test_a_forked_child_that_lets_go_leaves_its_parents_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child inherits its parent's claims; its release must not remove the file the parent
    still holds the lock on, or a third process would make a new one and claim the port too."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    listener = str(tmp_path / "hub.sock")
    path = portclaim._path(listener)
    assert portclaim._lock(listener)
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child process
            try:
                portclaim._unlock(listener)
            finally:
                os._exit(0)
        assert os.waitpid(child, 0)[1] == 0
        assert os.path.exists(path)
        other = subprocess.run(
            [sys.executable, "-c", CLAIM_ONCE, listener],
            env={**os.environ, "TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=timeout(30),
        )
        assert other.stdout.strip() == "False", other.stderr  # still the parent's
    finally:
        while listener in portclaim._held:
            portclaim._unlock(listener)
    assert not os.path.exists(path)


# Claims the listener in argv[1] in a process of its own and prints whether it got it.
CLAIM_ONCE = "import sys; from clarion.asgi import portclaim; print(portclaim._lock(sys.argv[1]))"


async def serve_claiming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_process: Any) -> Any:
    """``clarion serve`` with its lock files in ``tmp_path``, which this process then uses too."""
    running = await hub_process(env={"TMPDIR": str(tmp_path)})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert os.path.exists(portclaim._path(running.port))  # claimed at start
    return running


@clarion_server("a `clarion serve` process")
async def test_clarion_serve_stopped_leaves_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_process: Any
) -> None:
    running = await serve_claiming(tmp_path, monkeypatch, hub_process)
    running.proc.terminate()
    assert await asyncio.wait_for(running.proc.wait(), timeout(20)) == 0, "".join(running.log)
    assert not list(tmp_path.glob("clarion-*.lock"))


@clarion_server("a `clarion serve` process")
async def test_a_killed_hub_leaves_its_file_for_the_next_claimer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_process: Any
) -> None:
    running = await serve_claiming(tmp_path, monkeypatch, hub_process)
    path = portclaim._path(running.port)
    running.proc.kill()
    await running.proc.wait()
    left = os.stat(path)
    assert portclaim._lock(running.port)  # the kernel let go of its lock
    assert os.stat(path).st_ino == left.st_ino  # taken as it is
    portclaim._unlock(running.port)
    assert not os.path.exists(path)


# A claimer: claims and releases one port as fast as it can for some seconds (and some claims)
# once told to go, and while it holds the claim keeps a marker file made with O_EXCL, which a
# second holder at the same time cannot make.
CLAIMER = """
import json, os, sys, time
from clarion.asgi import portclaim

port, marker, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
claims = overlaps = 0
end = time.monotonic() + seconds
while time.monotonic() < end and claims < 2000:
    if not portclaim._lock(port):
        continue
    claims += 1
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        overlaps += 1
    else:
        time.sleep(0.0005)
        os.unlink(marker)
    portclaim._unlock(port)
print(json.dumps({"claims": claims, "overlaps": overlaps}), flush=True)
"""


def test_claims_and_releases_at_once_never_make_two_holders(tmp_path: Path) -> None:
    """A file removed as its holder lets go may be locked by a process that opened it before,
    while another makes a new one at the path and locks that: the claimer's check that the
    path still names the file it locked is what keeps them from both holding the port."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    marker = str(tmp_path / "holder")
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, "8000", marker, str(timeout(3))],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for claimer in claimers:  # all started, then all at once
            assert claimer.stdout is not None and claimer.stdout.readline() == "ready\n"
        for claimer in claimers:
            assert claimer.stdin is not None
            claimer.stdin.write("go\n")
            claimer.stdin.flush()
        results = [json.loads(c.communicate(timeout=timeout(60))[0]) for c in claimers]
    finally:
        for claimer in claimers:
            if claimer.poll() is None:
                claimer.kill()
                claimer.wait()
    assert sum(r["claims"] for r in results) >= 100, results
    assert not [r for r in results if r["overlaps"]], results
    assert not list(tmp_path.glob("clarion-*.lock"))  # the last to let go removed it
