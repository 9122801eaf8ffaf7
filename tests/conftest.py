"""Shared fixtures: a real hub listening on a loopback port, and helpers to talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, settings
from websockets.asyncio.client import ClientConnection

from clarion import Hub, Settings
from clarion.client.api import KEEPALIVE_EXPIRY


def _taken(name: str, default: str) -> str:
    """The test option ``CLARION_<name>``, taken out of the environment (every other CLARION_*
    variable is a setting, and hubs refuse the ones they do not know) and kept under a name no
    hub reads, so that pytest-xdist's workers, started after this module ran in the controller,
    get it too (they would otherwise run with the defaults)."""
    kept = f"PYTEST_CLARION_{name}"
    value = os.environ.pop(f"CLARION_{name}", None)
    if value is None:
        value = os.environ.get(kept, default)
    os.environ[kept] = value
    return value


# Timeouts scale with this factor on slow or loaded machines.
TIMEOUT_FACTOR = float(_taken("TEST_TIMEOUT_FACTOR", "1"))
# How many times the stress tests repeat their scenario; 0 skips them.
STRESS_RUNS = int(_taken("STRESS", "0"))
# How long the chaos tests' fault loops run, in seconds; 0 keeps their short CI form.
CHAOS_SECONDS = float(_taken("CHAOS_SECONDS", "0"))
# Which server serves the hubs tests start in-process: "clarion" (its own server, with its fast
# extensions) or "asgi" (the hub's app mounted in a Starlette app under uvicorn: the portable
# path). Tests about clarion's server itself are marked ``clarion_server``.
TEST_SERVER = _taken("TEST_SERVER", "clarion")
if TEST_SERVER not in ("clarion", "asgi"):
    raise pytest.UsageError(f"CLARION_TEST_SERVER={TEST_SERVER!r}: expected clarion or asgi")


# Property tests judge inputs, not speed: on a loaded machine a slow example is not a failure.
settings.register_profile("clarion", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("clarion")


@pytest.fixture(autouse=True)
def _own_working_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test runs in a working directory of its own: hubs it starts without a data_dir (in
    this process, or in processes it starts there) keep their durable state in its
    ./clarion-data, not in the checkout's, which a hub the user ran there may hold (the
    webhooks walkthrough leaves an outbox)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def timeout(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


async def until(check: Callable[[], Any], wait: float = 5, interval: float = 0.002) -> Any:
    """What ``check()`` (or the coroutine it returns) gives once it is true, polled within
    ``timeout(wait)``; an assertion error after that."""
    deadline = asyncio.get_running_loop().time() + timeout(wait)
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(interval)


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# A port chosen here and bound later by another process (redis-server, nginx, `clarion serve
# --port N`) is drawn at random below the kernel's ephemeral range, where bind(("", 0)) and
# every outgoing connection take theirs: between the check here and the bind, no client socket
# of this test, of another xdist worker or of another copy of the suite takes it, and a connect
# to it before anything listens is refused (a port in the ephemeral range can connect to itself).
CHOSEN_PORTS = range(10000, max(_ephemeral_start(), 22768))
# Ports drawn for processes lie below this; a Redis Cluster node's bus port (port + 10000) lies
# above it. Drawn from one band, a node's port could be another node's bus port, both free
# when drawn and only one of them bound at start.
SPANNED = CHOSEN_PORTS.start + 10000
_draw = random.SystemRandom()  # not the random module's state, which tests may seed


def free_port(span: int = 0) -> int:
    """A free loopback port for a process to bind; ``port + span`` is free too (a Redis Cluster
    node's bus port is port + 10000)."""
    assert span in (0, SPANNED - CHOSEN_PORTS.start)
    stop = min(SPANNED, CHOSEN_PORTS.stop - span)
    for _ in range(1000):
        port = _draw.randrange(CHOSEN_PORTS.start, stop)
        if _bindable(port) and (not span or _bindable(port + span)):
            return port
    raise RuntimeError("no free port")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RunningHub:
    """A hub served over real sockets on 127.0.0.1, inside the test's event loop."""

    def __init__(self, hub: Hub, server: Any, port: int) -> None:
        self.hub = hub
        self.server = server
        self.port = port
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self._client: httpx.AsyncClient | None = None

    def http(self, **kw: Any) -> httpx.AsyncClient:
        # As the Python client does: a connection idle for the hub's keep-alive timeout is not
        # used again, or a request could go out as the hub closes it.
        kw.setdefault("limits", httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY))
        return httpx.AsyncClient(base_url=self.http_url, timeout=timeout(10), **kw)

    async def publish(self, channel: str, data: Any, **extra: Any) -> dict[str, Any]:
        headers = {}
        if self.hub.settings.api_keys:
            headers["Authorization"] = f"apikey {self.hub.settings.api_keys[0]}"
        if self._client is None:
            self._client = self.http()
        r = await self._client.post(
            "/api/publish", json={"channel": channel, "data": data, **extra}, headers=headers
        )
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    async def close_client(self) -> None:
        """Close the connection :meth:`publish` keeps (the next publish opens another)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @asynccontextmanager
    async def ws(self, **kw: Any) -> AsyncIterator[WS]:
        kw.setdefault("subprotocols", ["clarion.v1"])
        async with websockets.connect(self.ws_url, open_timeout=timeout(5), **kw) as conn:
            yield WS(conn)


class WS:
    """A thin JSON wrapper over a websockets client connection."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._next_id = 0

    async def send(self, obj: Any) -> None:
        await self.conn.send(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    async def recv(self, wait: float = 5) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), timeout(wait))
        result: dict[str, Any] = json.loads(raw)
        return result

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a command and return its reply (pushes that arrive first are skipped)."""
        self._next_id += 1
        rid = self._next_id
        await self.send({"id": rid, "op": op, **fields})
        while True:
            msg = await self.recv()
            if msg.get("id") == rid:
                return msg

    async def subscribe(self, channel: str, **fields: Any) -> dict[str, Any]:
        return await self.call("subscribe", channel=channel, **fields)


async def start_hub(
    settings: Settings | None = None, hub: Hub | None = None, port: int = 0
) -> RunningHub:
    """The hub served on the suite's server path (``CLARION_TEST_SERVER``)."""
    if TEST_SERVER == "asgi":
        return await start_portable_hub(settings, hub, port=port)
    return await start_clarion_hub(settings, hub, port)


async def start_clarion_hub(
    settings: Settings | None = None, hub: Hub | None = None, port: int = 0
) -> RunningHub:
    """The hub on clarion's own server, whatever the suite's server path."""
    hub = hub if hub is not None else Hub(settings or Settings())
    from clarion.standalone import make_server

    server = make_server(hub, port=port)
    await server.start()
    return RunningHub(hub, server, server.port)


class PortableServer:
    """uvicorn serving an ASGI app (the hub's, mounted in a Starlette app): the portable path,
    where clarion's server extensions are absent. Shutting it down closes ``hub`` if given."""

    def __init__(self, uv: Any, serving: asyncio.Task[None], hub: Hub | None = None) -> None:
        self.hub = hub
        self.uv = uv
        self.serving = serving

    @property
    def sockets(self) -> list[Any]:
        return list(self.uv.servers[0].sockets)

    @property
    def port(self) -> int:
        port: int = self.sockets[0].getsockname()[1]
        return port

    async def shutdown(self, timeout: float) -> None:
        # Not listening first, as uvicorn's own shutdown and clarion's: the clients the hub tells
        # to come back meet a closed port, not a closing hub that refuses them.
        for server in self.uv.servers:
            server.close()
        if self.hub is not None:
            await self.hub.close()
        self.uv.should_exit = True
        await asyncio.wait_for(self.serving, timeout * 5)


async def start_uvicorn(
    app: Any, port: int = 0, hub: Hub | None = None, host: str = "127.0.0.1"
) -> PortableServer:
    """``app`` served by uvicorn on ``host`` (``port`` 0: a free one), in this event loop."""
    import time

    import uvicorn

    # uvicorn's own proxy-header handling is off: the hub reads those headers itself.
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", proxy_headers=False
    )
    uv = uvicorn.Server(config)
    serving = asyncio.create_task(uv.serve())
    deadline = time.monotonic() + timeout(10)
    while not uv.started:
        if serving.done() or time.monotonic() > deadline:
            uv.should_exit = True
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    return PortableServer(uv, serving, hub)


async def start_portable_hub(
    settings: Settings | None = None,
    hub: Hub | None = None,
    *,
    mount: bool = True,
    port: int = 0,
) -> RunningHub:
    """The hub under uvicorn: mounted in a Starlette app, or (``mount=False``) its app alone."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    hub = hub if hub is not None else Hub(settings or Settings())
    await hub.start()
    app: Any = hub.asgi_app()
    if mount:
        app = Starlette(routes=[Mount("/", app=app)])
    try:
        server = await start_uvicorn(app, port, hub)
    except RuntimeError:
        await hub.close()
        raise
    return RunningHub(hub, server, server.port)


async def stop_hub(running: RunningHub) -> None:
    await running.close_client()
    await running.server.shutdown(timeout=timeout(2))


# The two ways a hub is served: clarion's own server (with its fast extensions), and mounted in
# a Starlette app under uvicorn (the portable ASGI path). Every in-process hub follows the suite's
# switch (``CLARION_TEST_SERVER``); tests of how bytes reach a peer also run on both paths within
# one run of clarion's: ``@both_servers``, with the ``hub`` or ``hub_factory`` fixture.
SERVER_PATHS = ["clarion", "asgi"] if TEST_SERVER == "clarion" else ["asgi"]
both_servers = pytest.mark.parametrize("server_path", SERVER_PATHS, indirect=True)


# The suite runs in parallel (pytest-xdist, ``--dist loadgroup``: docs/testing.md). Tests that
# load the machine on purpose (a thousand clients at once, the Autobahn cases) share this group:
# xdist runs a group's tests one after another on one worker, so two of them never add up.
heavy = pytest.mark.xdist_group("heavy")


def clarion_server(reason: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as ``pytestmark``) as about clarion's own server by nature: on
    the portable path (``CLARION_TEST_SERVER=asgi``) it is skipped with ``reason``."""
    return pytest.mark.clarion_server(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "clarion_server(reason): about clarion's own server; skipped on the asgi path"
    )


# Directories of tests about clarion's server by nature (elsewhere: ``clarion_server`` marks).
CLARION_ONLY = {
    "server": "clarion's own HTTP/WebSocket server and its extensions",
    "multinode": "real `clarion serve` processes",
    "cli": "the `clarion` command and the processes it starts",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        part = item.path.relative_to(here).parts[0] if item.path.is_relative_to(here) else ""
        if part in CLARION_ONLY:
            item.add_marker(clarion_server(CLARION_ONLY[part]))
    if TEST_SERVER != "asgi":
        return
    _refuse_clarion_server()
    for item in items:
        mark = item.get_closest_marker("clarion_server")
        if mark is not None:
            item.add_marker(pytest.mark.skip(reason=f"clarion's server only: {mark.args[0]}"))


def _refuse_clarion_server() -> None:
    """On the asgi path, a test that starts clarion's server (in-process or as ``clarion
    serve``) without being marked ``clarion_server`` fails at once, rather than silently
    testing the other path."""
    from clarion.server import Server

    async def refuse(self: Server) -> None:
        raise AssertionError(NOT_ON_THIS_PATH)

    Server.start = refuse  # type: ignore[method-assign]


NOT_ON_THIS_PATH = (
    "CLARION_TEST_SERVER=asgi, but this test starts clarion's own server: serve the hub with "
    "start_hub / the hub_factory fixture, or mark the test clarion_server(reason)"
)


@pytest.fixture
def server_path(request: pytest.FixtureRequest) -> str:
    path: str = getattr(request, "param", TEST_SERVER)
    return path


@pytest.fixture
async def hub_factory(server_path: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[RunningHub] = []

    async def factory(settings: Settings | None = None, **kw: Any) -> RunningHub:
        if settings is None:
            # Durable state (revocations, the webhook outbox) stays with the test.
            kw.setdefault("data_dir", tempfile.mkdtemp(prefix="clarion-test-"))
            settings = Settings(**kw)
        if server_path == "asgi":
            running = await start_portable_hub(settings)
        else:
            running = await start_clarion_hub(settings)
        started.append(running)
        return running

    yield factory
    for running in started:
        await stop_hub(running)


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory()
    return running


class HubProcess:
    """``clarion serve`` in a subprocess, for what needs a real process: signals, RSS, kill -9."""

    def __init__(self, proc: Any, port: int, log: list[str]) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


async def spawn_hub(
    *args: str,
    env: dict[str, str] | None = None,
    cli: Sequence[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    command: str = "serve",
) -> HubProcess:
    """Start ``clarion serve --port 0 ARGS`` and wait until it listens.

    ``cli`` is the command that runs ``clarion`` (default: this interpreter's); ``command`` the
    subcommand (``demo`` takes the same ``--port``).
    """
    import re
    import sys

    assert TEST_SERVER != "asgi", NOT_ON_THIS_PATH
    # A whole environment (one with PATH, as clean_env makes) is taken as it is; a few
    # variables are added to this process's.
    full_env = dict(env) if env is not None and "PATH" in env else {**os.environ, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *(cli or (sys.executable, "-m", "clarion.cli")),
        command,
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        cwd=cwd,
    )
    assert proc.stderr is not None
    log: list[str] = []
    deadline = asyncio.get_running_loop().time() + timeout(20)
    try:
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            line = (await asyncio.wait_for(proc.stderr.readline(), max(remaining, 0.1))).decode()
            if not line:
                raise RuntimeError(f"clarion {command} exited:\n" + "".join(log))
            log.append(line)
            found = re.search(r"listening on http://[^:]+:(\d+)", line)
            if found:
                break
    except BaseException:
        # Not started in time (or the test was stopped): no fixture knows of it yet, so it
        # goes here, rather than listen on after the run.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise

    async def pump() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.append(line.decode())

    running = HubProcess(proc, int(found.group(1)), log)
    running._pump = asyncio.get_running_loop().create_task(pump())  # type: ignore[attr-defined]
    return running


@pytest.fixture
async def hub_process() -> AsyncIterator[Callable[..., Any]]:
    started: list[HubProcess] = []

    async def factory(*args: str, env: dict[str, str] | None = None, **kw: Any) -> HubProcess:
        running = await spawn_hub(*args, env=env, **kw)
        started.append(running)
        return running

    yield factory
    for running in started:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()
