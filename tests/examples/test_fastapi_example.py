"""The FastAPI example runs under uvicorn (the portable ASGI path, without the fast extension)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import websockets

from ..conftest import free_port, timeout

ROOT = Path(__file__).parents[2]


def app_env() -> dict[str, str]:
    """The environment that finds ``examples`` from the test's own working directory, where the
    app's hub keeps its ./clarion-data (not in the checkout's)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


@asynccontextmanager
async def spread(
    proc: subprocess.Popen[bytes],
    port: int,
    send: Callable[[httpx.AsyncClient, int], Awaitable[None]],
    wanted: tuple[int, int],
    answers: dict[int, int],
    uds: str | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """Requests (``send(client, n)``, n counting) twenty at once, each on a connection of its
    own, so that the kernel hands them to both workers, until ``answers`` (statuses counted)
    holds both ``wanted`` statuses, one from each worker; then the client. With ``uds``, over
    that Unix socket."""
    limits = httpx.Limits(max_keepalive_connections=0)
    base = f"http://127.0.0.1:{port}"
    transport = httpx.AsyncHTTPTransport(uds=uds, limits=limits) if uds else None
    async with httpx.AsyncClient(
        base_url=base, timeout=timeout(5), limits=limits, transport=transport
    ) as http:
        deadline = asyncio.get_running_loop().time() + timeout(60)
        n = 0
        while not all(answers.get(status) for status in wanted):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert asyncio.get_running_loop().time() < deadline, f"answers: {answers}"
            await asyncio.gather(*(send(http, n + i) for i in range(20)))
            n += 20
            await asyncio.sleep(0.05)
        yield http


def publisher(
    seen: dict[int, int], refusals: list[dict[str, str]]
) -> Callable[[httpx.AsyncClient], Awaitable[None]]:
    """A publish through the hub's API that counts its status in ``seen`` and keeps the
    errors of its refusals (503) in ``refusals``."""

    async def publish(http: httpx.AsyncClient) -> None:
        try:
            r = await http.post("/rt/api/publish", json={"channel": "c", "data": 1})
        except httpx.TransportError:
            return  # not listening yet
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        if r.status_code == 503:
            refusals.append(r.json()["error"])

    return publish


async def test_fastapi_example_publishes_to_mounted_hub() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port)],
        env=app_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=timeout(5)) as http:
            # uvicorn importing the app takes seconds of CPU: on a busy machine, more than ten.
            deadline = asyncio.get_running_loop().time() + timeout(30)
            while True:
                try:
                    if (await http.get("/rt/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert asyncio.get_running_loop().time() < deadline, "uvicorn did not start"
                await asyncio.sleep(0.1)
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/rt/ws", subprotocols=["clarion.v1"]
            ) as ws:
                await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": "orders:new"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))["ok"]
                r = await http.post("/orders", json={"item": "tea"})
                assert r.status_code == 200 and r.json()["offset"] == 1
                pub = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
                assert pub["channel"] == "orders:new" and pub["data"] == {"item": "tea"}
                assert pub["cursor"]
            # The hub's own API works under the mount too.
            history = (await http.get("/rt/api/history", params={"channel": "orders:new"})).json()
            assert [p["data"] for p in history["publications"]] == [{"item": "tea"}]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_worker_processes_on_the_memory_engine_are_refused_not_split() -> None:
    """``uvicorn --workers 2`` with the memory engine would be two hubs sharing nothing: each
    publication would reach one worker's subscribers. The first worker a request reaches
    serves; the other answers ``503 engine_not_shared`` and logs why."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "2"],
        env=app_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen: dict[int, int] = {}
    refusals: list[dict[str, str]] = []
    publish = publisher(seen, refusals)

    try:
        async with spread(proc, port, lambda http, _: publish(http), (200, 503), seen) as http:
            # The application's own publishes (hub.publish in its route) fail in the worker
            # that stood down, rather than reach no one: one hub hands out every offset.
            orders = [await http.post("/orders", json={"item": i}) for i in range(int(timeout(40)))]
            answered = [r.json()["offset"] for r in orders if r.status_code == 200]
            assert {r.status_code for r in orders} <= {200, 500}
            assert len(answered) == len(set(answered)), answered
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert set(seen) == {200, 503}, seen
    assert {e["code"] for e in refusals} == {"engine_not_shared"}
    assert "Redis engine" in refusals[0]["message"]
    assert "another process on this machine serves port" in err.decode()


async def test_worker_processes_on_one_unix_socket_are_refused_not_split(tmp_path: Path) -> None:
    """The same behind a proxy that reaches the server by a Unix socket: no port, so the
    workers claim the socket's path (a request on it names neither)."""
    path = str(tmp_path / "hub.sock")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_app:app",
            "--uds",
            path,
            "--workers",
            "2",
        ],
        env=app_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen: dict[int, int] = {}
    publish = publisher(seen, [])

    try:
        async with spread(proc, 0, lambda http, _: publish(http), (200, 503), seen, uds=path):
            pass
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert set(seen) == {200, 503}, seen
    assert f"another process on this machine serves the Unix socket {path}" in err.decode()


async def test_a_worker_that_stands_down_refuses_its_publishes_from_the_start() -> None:
    """The workers inherit the listening socket before their application starts, so they claim
    its port then: the one that stands down refuses ``hub.publish`` before any request reaches
    its hub, rather than publish to no one with offsets the other worker also hands out."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--workers", "2"],
        env=app_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    statuses: dict[int, int] = {}
    offsets: list[int] = []

    async def order(http: httpx.AsyncClient, item: int) -> None:
        try:
            r = await http.post("/orders", json={"item": item})
        except httpx.TransportError:
            return  # not listening yet
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code == 200:
            offsets.append(r.json()["offset"])

    try:
        # No request goes to the hub's own routes.
        async with spread(proc, port, order, (200, 500), statuses):
            pass
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert set(statuses) == {200, 500}, statuses
    # One hub hands out every offset: none twice.
    assert len(offsets) == len(set(offsets)), sorted(offsets)
    assert "another process on this machine serves port" in err.decode()


TEST_CLIENT_RUN = """
import time
from fastapi.testclient import TestClient
from examples.fastapi_app import app
with TestClient(app) as client:
    codes = [client.post("/rt/api/publish", json={"channel": "c", "data": i}).status_code
             for i in range(3)]
    time.sleep(1.0)  # the other process tests meanwhile
    codes.append(client.post("/rt/api/publish", json={"channel": "c", "data": 3}).status_code)
print(codes)
"""


def test_test_processes_side_by_side_claim_no_port() -> None:
    """Test clients name no socket's port: two processes testing the app at once (say,
    pytest-xdist) both get a hub of their own, as each expects."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", TEST_CLIENT_RUN],
            env=app_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [run.communicate(timeout=timeout(60))[0] for run in runs]
    assert outs == ["[200, 200, 200, 200]\n"] * 2
