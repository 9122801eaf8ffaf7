"""Hub nodes as real ``clarion serve`` processes, and clients that check what they receive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import websockets

from clarion.protocol.cursor import Cursor

from ..conftest import free_port
from ..conftest import timeout as scaled
from ..support.history import ClientLog, PublisherLog, assert_no_findings

CLARION = str(Path(sys.executable).with_name("clarion"))


class Node:
    """One ``clarion serve`` process on a loopback port."""

    def __init__(
        self,
        engine: str,
        config: Path,
        log_dir: Path,
        env: dict[str, str],
        port: int | None = None,
    ) -> None:
        # A port chosen here may be taken by another process before the node binds it: then
        # the node starts again on another (not when restarted on a given port).
        self._chosen = port is None
        self.port = port if port is not None else free_port()
        self._engine, self._config, self._env = engine, config, env
        self._log_dir = log_dir
        self._launch()

    def _launch(self) -> None:
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.log_path = self._log_dir / f"node-{self.port}.log"
        self._log = self.log_path.open("ab")  # a node restarted on its port appends
        self._logged = self.log_path.stat().st_size
        args = [CLARION, "serve", "--config", str(self._config), "--engine", self._engine]
        args += ["--port", str(self.port)]
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self._env}
        )

    async def wait_healthy(self, timeout: float | None = None) -> None:
        # `clarion serve` needs 0.3-0.4 s of CPU to start: on a 2-core machine busy with the
        # suite's workers (or two copies of the suite) that has taken over 15 s.
        deadline = time.monotonic() + (timeout if timeout is not None else scaled(30))
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    if self._chosen and "cannot listen" in self.log():
                        self._log.close()
                        self.port = free_port()
                        self._launch()
                        continue
                    raise RuntimeError(f"node exited:\n{self.log()}")
                # Its own log says it listens: a /healthz answer is then this node's.
                if b"listening on" in self.log_path.read_bytes()[self._logged :]:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(self.http_url + "/healthz")).status_code == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"node on port {self.port} not healthy in time:\n{self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]


class Tracker:
    """A WebSocket subscriber that resumes from its cursor and records what it receives in a
    :class:`~tests.support.history.ClientLog`, for the history checker to judge."""

    count = 0

    def __init__(self, channel: str, headers: dict[str, str] | None = None) -> None:
        Tracker.count += 1
        self.channel = channel
        self.headers = headers or {}
        self.log = ClientLog(f"tracker-{Tracker.count}")
        self.cursor: str | None = None
        self.last: tuple[str, int] | None = None
        self.offsets: list[tuple[str, int]] = []  # in order, duplicates left out
        self.resets: list[str] = []
        self.disconnects: list[dict[str, Any]] = []
        self.connections = 0
        self.subscribed = asyncio.Event()
        self._next_id = 0

    async def run(self, urls: Sequence[str], *, until: asyncio.Event) -> None:
        """Stay subscribed, moving to the next URL whenever a node goes away."""
        i = 0
        while not until.is_set():
            # A node going away ends the session: resume on the next one.
            with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError):
                await self.session(urls[i % len(urls)], until)
            i += 1
            await asyncio.sleep(0.05)

    async def session(self, url: str, until: asyncio.Event) -> None:
        async with websockets.connect(
            url,
            subprotocols=[websockets.Subprotocol("clarion.v1")],
            open_timeout=5,
            additional_headers=self.headers,
        ) as ws:
            self.connections += 1
            self._next_id += 1
            command: dict[str, Any] = {"id": self._next_id, "op": "subscribe"}
            command["channel"] = self.channel
            if self.cursor is not None:
                command["since"] = self.cursor
            await ws.send(json.dumps(command))
            stop = asyncio.ensure_future(until.wait())
            try:
                while True:
                    recv = asyncio.ensure_future(ws.recv())
                    done, _ = await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if recv not in done:
                        recv.cancel()
                        return
                    self.handle(json.loads(recv.result()))
            finally:
                stop.cancel()

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("id") == self._next_id:
            if "error" in msg:
                raise RuntimeError(f"subscribe failed: {msg['error']}")
            ok = msg["ok"]
            # A reset reply is followed by a reset push, which is what gets recorded.
            if ok.get("reset") or self.last is None:
                self.last = (ok["epoch"], ok["offset"])
                self.cursor = ok["cursor"]
            if not ok.get("reset"):
                self.log.subscribed(self.channel, ok["epoch"], ok["offset"], ok["cursor"])
            self.subscribed.set()
        elif "reset" in msg:
            reset = msg["reset"]
            self.resets.append(reset["reason"])
            position = Cursor.decode(reset["cursor"]).get(self.channel)
            assert position is not None
            self.last = (position.epoch, position.offset)
            self.cursor = reset["cursor"]
            self.log.reset(
                self.channel, position.epoch, position.offset, reset["reason"], reset["cursor"]
            )
        elif "disconnect" in msg:
            self.disconnects.append(msg["disconnect"])
        elif msg.get("channel") == self.channel and "offset" in msg:
            here = (msg["epoch"], msg["offset"])
            self.log.publication(self.channel, here[0], here[1], msg["cursor"])
            if self.last is not None and here[0] == self.last[0] and here[1] <= self.last[1]:
                return  # a duplicate, or late: the checker reports it
            self.last = here
            self.cursor = msg["cursor"]
            self.offsets.append(here)

    def assert_clean(self, *publishers: Publisher) -> None:
        """No gap, duplicate, reordering, silent epoch change or needless reset; and, given
        the publishers, nothing they had acknowledged missing."""
        assert_no_findings([self.log], [p.log for p in publishers])


def assert_history(trackers: Sequence[Tracker], publishers: Sequence[Publisher] = ()) -> None:
    """The history checker over every tracker and publisher at once."""
    assert_no_findings([t.log for t in trackers], [p.log for p in publishers])


class Publisher:
    """Publishes ``0, 1, 2…`` to one channel through a node's API at a steady rate."""

    def __init__(self, url: str, channel: str, rate: float = 200.0) -> None:
        self.url = url
        self.channel = channel
        self.rate = rate
        self.published: list[tuple[str, int]] = []
        self.failures: list[int] = []
        self.log = PublisherLog(f"publisher-{channel}-{url}")

    async def run(self, until: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as client:
            started = time.monotonic()
            n = 0
            while not until.is_set():
                r = await client.post("/api/publish", json={"channel": self.channel, "data": n})
                if r.status_code == 200:
                    body = r.json()
                    self.published.append((body["epoch"], body["offset"]))
                    self.log.ack(self.channel, body["epoch"], body["offset"], n)
                else:
                    self.failures.append(r.status_code)
                    self.log.refuse(str(r.status_code))
                n += 1
                delay = started + n / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
