"""The webhook outbox cannot write (disk full): the publish is refused, never acknowledged and lost.

The hub runs as a real process under a file-size limit (``prlimit --fsize``): once the outbox's
SQLite files reach it, every write fails as on a full disk. Each publish then answers
``503 engine_unavailable``; every publish answered 200 has its delivery in the outbox. Once
space is back, the refused publish repeated with its id queues its webhook at the same offset.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import HubProcess, clarion_server, timeout

pytestmark = [
    clarion_server("a `clarion serve` process whose files cannot grow"),
    pytest.mark.timeout(int(timeout(60))),
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)"),
]

LIMIT = 512 * 1024  # bytes any one file of the hub may grow to


async def test_a_publish_the_outbox_cannot_store_is_refused_then_settled_by_its_repeat(
    hub_process: Callable[..., Any], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "clarion.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\nwebhook_allow_hosts = ["127.0.0.1"]\n\n'
        # Nothing listens there: deliveries stay queued, so the outbox only grows.
        '[[webhooks]]\nurl = "http://127.0.0.1:9/hook"\nchannels = ["orders:*"]\n'
    )
    cli = ("prlimit", f"--fsize={LIMIT}:unlimited", sys.executable, "-m", "clarion.cli")
    node: HubProcess = await hub_process("--config", str(config), cli=cli)
    acked: dict[str, tuple[str, int]] = {}
    refused: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=node.http_url, timeout=timeout(10)) as api:
        for n in range(400):
            body = {"channel": "orders:1", "data": "x" * 2000, "id": f"p{n}"}
            r = await api.post("/api/publish", json=body)
            if r.status_code == 200:
                acked[f"p{n}"] = (r.json()["epoch"], r.json()["offset"])
                continue
            assert r.status_code == 503, r.text
            refused[f"p{n}"] = r.json()["error"]
            break
        assert refused, "the file-size limit was never reached"
        assert len(acked) > 5
        ((key, error),) = refused.items()
        assert error["code"] == "engine_unavailable"
        assert "webhook outbox" in error["message"]

        # Space again: the same publication, repeated with its id, is queued at last.
        unlimited = ["prlimit", "--pid", str(node.proc.pid), "--fsize=unlimited:unlimited"]
        subprocess.run(unlimited, check=True)
        r = await api.post(
            "/api/publish", json={"channel": "orders:1", "data": "x" * 2000, "id": key}
        )
        assert r.status_code == 200, r.text
        position = (r.json()["epoch"], r.json()["offset"])
        assert position[1] == max(o for _, o in acked.values()) + 1  # the one already published
        acked[key] = position
        # A second repeat publishes and queues nothing more.
        r = await api.post(
            "/api/publish", json={"channel": "orders:1", "data": "x" * 2000, "id": key}
        )
        assert (r.json()["epoch"], r.json()["offset"]) == position
    node.proc.kill()
    await node.proc.wait()

    db = sqlite3.connect(data_dir / "webhooks.sqlite3")
    try:
        rows = db.execute('SELECT epoch, "offset" FROM outbox WHERE channel = ?', ("orders:1",))
        queued = [tuple(row) for row in rows]
    finally:
        db.close()
    # Every acknowledged publication is queued, once; nothing else is.
    assert sorted(queued) == sorted(acked.values())
    log = "".join(node.log)
    assert "deliveries not queued, publish refused" in log
