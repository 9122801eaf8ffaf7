"""A hub on the memory engine claims its port with a lock file; where none can be kept (a
read-only temporary directory, say) it claims nothing, serves every request, and closes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from clarion import Settings
from clarion.asgi import portclaim

from ..conftest import timeout
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
