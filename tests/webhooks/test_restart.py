"""The outbox survives ``kill -9``: a restarted ``clarion serve`` delivers the backlog in order."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from clarion.webhooks import generate_secret

from ..conftest import timeout
from .receiver import OK, Answer, Received, Receiver

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


@contextlib.asynccontextmanager
async def serve(
    config: Path, lines: list[str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``clarion serve --config …`` on a free port; yields the process and its base URL, and
    keeps what it logs in ``lines``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clarion.cli", "serve", "--config", str(config), "--port", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    lines = [] if lines is None else lines

    async def url() -> str:
        assert proc.stderr is not None
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError("clarion serve exited:\n" + "".join(lines))
            lines.append(line)
            found = LISTENING.search(line)
            if found:
                return found.group(1)

    async def drain() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line.decode())

    try:
        base = await asyncio.wait_for(url(), timeout(20))
        drainer = asyncio.create_task(drain())
        yield proc, base
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout(20))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(drainer, timeout(5))


async def test_backlog_survives_kill_9_and_is_delivered_in_order(tmp_path: Path) -> None:
    secret = generate_secret()
    acked_before_kill = 10
    answered = 0

    def behave(r: Received) -> Answer:
        nonlocal answered
        answered += 1
        return OK if answered <= acked_before_kill else Answer(status=503)

    async with Receiver(behave) as receiver:
        receiver.secret = secret
        config = tmp_path / "clarion.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\n'
            'webhook_allow_hosts = ["127.0.0.1"]\n'
            "[webhook_delivery]\n"
            "retry_base = 0.05\nretry_cap = 0.2\nretry_window = 600\ntimeout = 3\n"
            "[[webhooks]]\n"
            f'url = "{receiver.url}"\nchannels = ["orders:*"]\nsecret = "{secret}"\n'
        )
        published = []
        async with serve(config) as (proc, base):
            async with httpx.AsyncClient(base_url=base, timeout=timeout(10)) as http:
                for n in range(50):
                    r = await http.post("/api/publish", json={"channel": "orders:eu", "data": n})
                    assert r.status_code == 200, r.text
                    published.append(r.json()["offset"])
            # Ten delivered, then the receiver fails and the rest pile up behind the eleventh.
            await receiver.wait_acknowledged(acked_before_kill)
            await receiver.wait_until(lambda: len(receiver.received) >= acked_before_kill + 3)
            proc.kill()  # SIGKILL: no shutdown code runs
            await asyncio.wait_for(proc.wait(), timeout(10))
        first_life = [r.payload["data"] for r in receiver.acknowledged]
        assert first_life == list(range(acked_before_kill))

        answered = -10_000  # answer OK from now on
        async with serve(config) as (proc, base):
            acked = await receiver.wait_acknowledged(50, wait=30)
            assert [r.payload["data"] for r in acked] == list(range(50))
            assert [r.payload["offset"] for r in acked] == published
            assert len({r.msg_id for r in acked}) == 50
            assert all(r.verified for r in receiver.received)
            async with httpx.AsyncClient(base_url=base, timeout=timeout(10)) as http:
                for _ in range(100):  # the last acknowledgement is committed just after it
                    hooks = (await http.get("/api/webhooks")).json()["webhooks"]
                    if hooks[0]["backlog"] == 0:
                        break
                    await asyncio.sleep(0.05)
            assert len(hooks) == 1 and hooks[0]["source"] == "config"
            assert hooks[0]["backlog"] == 0 and hooks[0]["dead_letters"] == 0
            assert hooks[0]["last_delivered"]["id"] == acked[-1].msg_id


async def test_a_webhooks_query_stays_out_of_the_log(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        secret = generate_secret()
        receiver.secret = secret
        port = receiver.url.split(":")[2].split("/")[0]
        config = tmp_path / "clarion.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\nwebhook_allow_hosts = ["127.0.0.1"]\n'
        )
        lines: list[str] = []
        async with serve(config, lines) as (_, base):
            async with httpx.AsyncClient(base_url=base, timeout=timeout(10)) as http:
                r = await http.post(
                    "/api/webhooks",
                    json={
                        "url": f"http://127.0.0.1:{port}/h?key=s3cret",
                        "channels": ["orders:*"],
                        "secret": secret,
                    },
                )
                assert r.status_code in (200, 201), r.text
                r = await http.post("/api/publish", json={"channel": "orders:eu", "data": 1})
                assert r.status_code == 200, r.text
            await receiver.wait_acknowledged(1)
        log = "".join(lines)
        assert f"registered for http://127.0.0.1:{port}/h\n" in log
        assert "s3cret" not in log
        assert "HTTP Request" not in log  # httpx's line per delivery, URL and all
