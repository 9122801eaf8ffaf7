"""The memory engine's ``data_dir`` unwritable: a clear error, never a silent "done".

At start a ``data_dir`` that cannot be used stops the hub with a message naming it. While the
hub runs, a revocation it cannot store is answered ``503 engine_unavailable`` — and the
sessions it names are closed all the same, as docs/protocol.md promises. (The webhook
outbox under a full disk: ``test_outbox_full.py``.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from ..conftest import HubProcess, clarion_server, spawn_hub, timeout

pytestmark = [
    pytest.mark.timeout(int(timeout(60))),
    clarion_server("`clarion serve` processes with an unusable data_dir"),
]

SECRET = "data-dir-test-secret-of-32-bytes"
KEY = {"Authorization": "apikey key"}


def clarion_without_root_overrides() -> tuple[str, ...]:
    """The command that runs ``clarion`` so that file permissions hold for it: as root, without
    the capabilities that let root write anywhere."""
    cli = (sys.executable, "-m", "clarion.cli")
    if os.geteuid() != 0:
        return cli
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, and setpriv (util-linux) is missing to drop its overrides")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cli)


async def test_a_data_dir_that_cannot_be_used_stops_the_hub_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    config = tmp_path / "clarion.toml"
    config.write_text(f'data_dir = "{tmp_path / "file" / "data"}"\n')
    with pytest.raises(RuntimeError) as failed:
        await spawn_hub("--config", str(config))
    assert "the hub could not start" in str(failed.value)
    assert str(tmp_path / "file" / "data") in str(failed.value)


async def test_a_revocation_the_data_dir_cannot_store_is_refused_and_still_closes(
    hub_process: Callable[..., Any], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "clarion.toml"
    config.write_text(f'data_dir = "{data_dir}"\ntoken_secret = "{SECRET}"\napi_key = "key"\n')
    node: HubProcess = await hub_process(
        "--config", str(config), cli=clarion_without_root_overrides()
    )
    tok = jwt.encode({"sub": "u", "channels": ["*"], "exp": int(time.time()) + 600}, SECRET)
    url = f"{node.ws_url}?token={tok}"
    protocol = [websockets.Subprotocol("clarion.v1")]
    async with httpx.AsyncClient(base_url=node.http_url, timeout=timeout(10)) as api:
        ws = await websockets.connect(url, subprotocols=protocol)
        await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": "c"}))
        assert "ok" in json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))

        data_dir.chmod(0o555)
        try:
            until = int(time.time()) + 600
            r = await api.post("/api/disconnect", json={"user": "u", "until": until}, headers=KEY)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "engine_unavailable"
            assert str(data_dir) in r.json()["error"]["message"]
            # Not stored, but the session named is closed all the same.
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
            assert msg["disconnect"]["code"] == 4501
        finally:
            data_dir.chmod(0o755)
        await ws.close()

        # Writable again: repeated, the revocation is stored and holds.
        r = await api.post("/api/disconnect", json={"user": "u", "until": until}, headers=KEY)
        assert r.status_code == 200, r.text
        assert "user:u" in json.loads((data_dir / "revocations.json").read_text())
        ws = await websockets.connect(url, subprotocols=protocol)
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
        assert msg["disconnect"]["code"] == 4501
        await ws.close()
