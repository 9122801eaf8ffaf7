"""Debian's nginx with the configuration of docs/deployment.md, as a child process of the test.

The documented ``clarion.conf`` is extracted from the doc and changed in exactly three places —
the listening address, the certificate paths and the hub's port — each of which must appear
exactly once, so the doc and the test cannot drift apart. nginx runs in the foreground with its
own prefix, pid file, logs and temp paths under a temporary directory, and is stopped by pid.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

from ..conftest import free_port, timeout

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "deployment.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

DOC_LISTEN = "listen 443 ssl http2;"
DOC_CERT = "/etc/letsencrypt/live/rt.example.com/fullchain.pem"
DOC_KEY = "/etc/letsencrypt/live/rt.example.com/privkey.pem"
DOC_UPSTREAM = "server 127.0.0.1:8000;"


def fenced(language: str) -> list[str]:
    """Every fenced block of ``language`` in docs/deployment.md, in order.

    A ``fragment`` mark (part of a larger file: the docs' own runner leaves it alone) is allowed.
    """
    text = DOC.read_text()
    return re.findall(rf"^```{language}(?: fragment)?\n(.*?)^```$", text, flags=re.S | re.M)


def documented_site(listen_port: int, cert: Path, key: Path, hub_port: int) -> str:
    (site,) = fenced("nginx")
    for literal in (DOC_LISTEN, DOC_CERT, DOC_KEY, DOC_UPSTREAM):
        assert site.count(literal) == 1, f"docs/deployment.md no longer has {literal!r} once"
    return (
        site.replace(DOC_LISTEN, f"listen 127.0.0.1:{listen_port} ssl http2;")
        .replace(DOC_CERT, str(cert))
        .replace(DOC_KEY, str(key))
        .replace(DOC_UPSTREAM, f"server 127.0.0.1:{hub_port};")
    )


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for rt.example.com and 127.0.0.1, made now with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=rt.example.com",
         "-addext", "subjectAltName=DNS:rt.example.com,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def client_tls(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(["http/1.1"])
    return context


class Nginx:
    """One nginx master in the foreground, its workers, and the means to reload and stop it."""

    def __init__(self, prefix: Path, hub_port: int) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.cert, self.key = self_signed(prefix)
        (prefix / "clarion.conf").write_text(
            documented_site(self.port, self.cert, self.key, hub_port)
        )
        temp = "\n".join(
            f"    {kind}_temp_path {prefix / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # What Debian's nginx.conf provides around conf.d/*.conf, with every path in the prefix.
        (prefix / "nginx.conf").write_text(
            f"pid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} warn;\n"
            "worker_processes 1;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            f"    access_log {prefix / 'access.log'};\n"
            f"{temp}\n"
            f"    include {prefix / 'clarion.conf'};\n"
            "}\n"
        )
        prefix.chmod(0o755)  # workers drop root: they must reach their temp paths
        self.process: asyncio.subprocess.Process | None = None

    def _args(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                "-e", str(self.prefix / "error.log"), *extra]  # fmt: skip

    async def start(self) -> None:
        check = subprocess.run(self._args("-t"), capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = await asyncio.create_subprocess_exec(
            *self._args("-g", "daemon off;"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout(10)
        while True:
            assert self.process.returncode is None, self.log()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen\n" + self.log()
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        await self._workers_settled(set())

    def workers(self) -> set[int]:
        assert self.process is not None
        children = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may contain spaces, so split after the ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                children.add(int(entry.name))
        return children

    async def _workers_settled(self, old: set[int]) -> set[int]:
        deadline = time.monotonic() + timeout(10)
        while True:
            fresh = self.workers() - old
            if fresh:
                return fresh
            assert time.monotonic() < deadline, "no new nginx worker\n" + self.log()
            await asyncio.sleep(0.05)

    async def reload(self) -> None:
        """``nginx -s reload`` through the pid file; returns once a new worker runs."""
        old = self.workers()
        result = subprocess.run(self._args("-s", "reload"), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        await self._workers_settled(old)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        os.kill(process.pid, signal.SIGTERM)  # fast shutdown: drops open connections
        try:
            await asyncio.wait_for(process.wait(), timeout(10))
        except TimeoutError:
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text()[-4000:] if path.exists() else ""
