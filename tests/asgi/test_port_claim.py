"""A hub on the memory engine claims its port with a lock file; where none can be kept (a
read-only temporary directory, say) it claims nothing, serves every request, and closes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from clarion import Hub, Settings
from clarion.asgi import portclaim
from clarion.server import Server

from ..conftest import timeout


async def test_a_port_that_cannot_be_claimed_is_served_and_the_hub_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    hub = Hub(Settings(data_dir=str(tmp_path / "data")))
    server = Server(hub.asgi_app(), host="127.0.0.1", port=0)
    await hub.start()
    await server.start()
    try:
        # Where the lock would be, a directory: it cannot be opened for writing.
        os.mkdir(portclaim._path(server.port))
        async with httpx.AsyncClient(timeout=timeout(10)) as http:
            for _ in range(2):
                r = await http.get(f"http://127.0.0.1:{server.port}/healthz")
                assert r.status_code == 200, r.text
    finally:
        await server.shutdown(1.0)
        await hub.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert server.port not in portclaim._held
