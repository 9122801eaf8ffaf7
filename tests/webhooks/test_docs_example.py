"""The receiver example of docs/webhooks.md runs, verifies, and deduplicates."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from ..conftest import RunningHub, timeout

DOC = Path(__file__).parents[2] / "docs" / "webhooks.md"


def receiver_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (example,) = [b for b in blocks if "standardwebhooks" in b]
    return example


async def test_docs_receiver_verifies_deliveries(
    make_hub: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    running: RunningHub = await make_hub()
    async with running.http() as http:
        # Register first (to a placeholder port) to learn the secret the example reads at import.
        created = (
            await http.post(
                "/api/webhooks", json={"url": "http://127.0.0.1:9/", "channels": ["none"]}
            )
        ).json()
    monkeypatch.setenv("WEBHOOK_SECRET", created["secret"])
    namespace: dict[str, Any] = {}
    exec(compile(receiver_example(), str(DOC), "exec"), namespace)
    handled: list[dict[str, Any]] = []
    namespace["handle"] = handled.append
    server = uvicorn.Server(
        uvicorn.Config(namespace["app"], host="127.0.0.1", port=0, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with running.http() as http:
            await http.delete(f"/api/webhooks/{created['id']}")
            r = await http.post(
                "/api/webhooks",
                json={
                    "url": f"http://127.0.0.1:{port}/clarion",
                    "channels": ["docs"],
                    "secret": created["secret"],
                },
            )
            assert r.status_code == 200, r.text
        await running.publish("docs", {"hello": "receiver"})
        for _ in range(int(timeout(10) / 0.02)):
            if handled:
                break
            await asyncio.sleep(0.02)
        assert [h["data"] for h in handled] == [{"hello": "receiver"}]
        assert namespace["seen"] and all(s.startswith("msg_") for s in namespace["seen"])
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout(10))


def test_docs_run_command_sets_the_variable_the_receiver_reads() -> None:
    # The prose says how to start the receiver; the test above sets the variable itself, so
    # only this check catches a command that names a different one.
    text = DOC.read_text()
    commands = re.findall(r"`([A-Z_]+)=whsec_… [^`]*uvicorn receiver:app([^`]*)`", text)
    read = set(re.findall(r'os\.environ\["([A-Z_]+)"\]', receiver_example()))
    assert commands and read
    assert {variable for variable, _ in commands} == read
    # uvicorn's default port, 8000, is the hub's: the command must name another.
    assert all(re.search(r"--port (?!8000\b)\d+", args) for _, args in commands)
