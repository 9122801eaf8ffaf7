"""A real ``redis-server`` started by the test itself, on a free loopback port.

Import the fixture into a test package's ``conftest.py`` where it is needed::

    from ..redis_fixture import redis_server

Nothing persists (``--save "" --appendonly no``) unless ``persistent``, so ``restart()`` is
a Redis that lost everything. The server is stopped by pid when the test ends; tests never
touch any other Redis running on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(
        self, port: int | None = None, *, persistent: bool = False, databases: int | None = None
    ) -> None:
        # A port chosen here may be taken before redis-server binds it: then it starts again
        # on another (not on restart(), which keeps its port).
        self._chosen = port is None
        self.port = port if port is not None else free_port()
        # Persistent: an append-only file fsynced on every write, kept across restart().
        self.persistent = persistent
        self.databases = databases  # redis-server's own default (16) when None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="clarion-redis-")

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None
        # fmt: off
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always", "--daemonize", "no",
            "--dir", self._dir, "--loglevel", "warning", "--logfile", "redis.log",
        ]
        # fmt: on
        if self.databases is not None:
            args += ["--databases", str(self.databases)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                with contextlib.suppress(OSError):
                    err += (Path(self._dir) / "redis.log").read_text(errors="replace")
                if self._chosen and "Address already in use" in err:
                    self.port = free_port()
                    self.url = f"redis://127.0.0.1:{self.port}/0"
                    return self.start(deadline - time.monotonic())
                raise RuntimeError(f"redis-server exited at start: {err}")
            if self.ping():
                self._chosen = False  # restarts keep this port
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def ping(self) -> bool:
        """This server answers: the process on the port is the one started here."""
        assert self.process is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"INFO server\r\n")
                answer = b""
                while b"process_id:" not in answer or not answer.endswith(b"\r\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    answer += chunk
        except OSError:
            return False
        return f"process_id:{self.process.pid}\r\n".encode() in answer

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (SIGKILL by default: nothing is saved, connections drop at once)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        """Same port; a Redis that lost everything, unless persistent (then stopped with
        SIGTERM, and everything written is read back from its append-only file)."""
        self.stop(signal.SIGTERM if self.persistent else signal.SIGKILL)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
