"""The `clarion` command as a user runs it: serve, publish, subscribe (resuming), token."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from typing import Any

import httpx
import jwt
import pytest

from ..conftest import timeout

CLI = [sys.executable, "-m", "clarion.cli"]


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout(30))
    finally:
        if proc.returncode is None:  # timed out or cancelled: it must not outlive the test
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serve_publish_subscribe_resume(hub_process: Any) -> None:
    hub = await hub_process()
    assert any("local development mode" in line for line in hub.log)
    url = hub.http_url
    code, out, _ = await run("publish", "chat:lobby", '{"text": "first"}', "--url", url)
    assert code == 0 and json.loads(out)["offset"] == 1
    cursor = json.loads(out)["cursor"]
    for n in range(3):
        await run("publish", "chat:lobby", json.dumps(f"missed {n}"), "--url", url)
    sub = await asyncio.create_subprocess_exec(
        *CLI, "subscribe", "chat:lobby", "--since", cursor, "--url", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert sub.stdout is not None
    try:
        lines = [json.loads(await asyncio.wait_for(sub.stdout.readline(), timeout(15)))]
        lines += [json.loads(await asyncio.wait_for(sub.stdout.readline(), timeout(5)))]
        lines += [json.loads(await asyncio.wait_for(sub.stdout.readline(), timeout(5)))]
        assert [line["data"] for line in lines] == ["missed 0", "missed 1", "missed 2"]
        assert [line["offset"] for line in lines] == [2, 3, 4]
        assert all(line["cursor"] for line in lines)
        await run("publish", "chat:lobby", '"live"', "--url", url)
        live = json.loads(await asyncio.wait_for(sub.stdout.readline(), timeout(5)))
        assert live["data"] == "live" and live["offset"] == 5
    finally:
        sub.terminate()
        await sub.wait()


async def test_publish_errors_are_one_line_on_stderr(hub_process: Any) -> None:
    hub = await hub_process()
    code, out, err = await run("publish", "bad channel", "1", "--url", hub.http_url)
    assert (code, out) == (2, "")
    assert err == (
        "clarion: publish refused (HTTP 400, bad_channel): "
        "channel may only contain letters, digits and _ . : @ / = , + -\n"
    )
    # subscribe says so before connecting (there is nothing to connect to here).
    code, out, err = await run("subscribe", "bad channel", "--url", "http://127.0.0.1:1")
    assert (code, out) == (2, "")
    assert err == "clarion: channel may only contain letters, digits and _ . : @ / = , + -\n"
    code, out, err = await run("publish", "c", "{not json", "--url", hub.http_url)
    assert (code, out) == (2, "")
    assert err == "clarion: data: not valid JSON: '{not json'\ntry 'clarion publish --help'\n"
    # A bare word is a string whose quotes the shell took: the message shows them kept.
    code, out, err = await run("publish", "c", "hello", "--url", hub.http_url)
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == (
        """clarion: data: not valid JSON: 'hello' (a JSON string keeps its quotes: '"hello"')"""
    )
    code, out, err = await run("publish", "c", "1", "--url", "http://127.0.0.1:1")
    assert (code, out) == (2, "")
    assert err.startswith("clarion: cannot reach http://127.0.0.1:1: ") and err.count("\n") == 1


async def test_publish_reads_the_data_from_standard_input(hub_process: Any) -> None:
    hub = await hub_process()

    async def publish(data: str, stdin: bytes) -> tuple[int | None, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "publish", "chat:in", data, "--url", hub.http_url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout(30))
        return proc.returncode, out, err

    big = {"text": "x" * 60_000}  # within max_message_bytes (64 KiB)
    code, out, _ = await publish("-", json.dumps(big).encode() + b"\n")
    assert code == 0 and json.loads(out)["offset"] == 1
    code, out, _ = await publish('"-"', b"")  # the JSON string "-" is data, not stdin
    assert code == 0 and json.loads(out)["offset"] == 2
    code, out, err = await publish("-", b"nope\n")
    assert (code, out) == (2, b"")
    assert err.startswith(b"clarion: data from standard input: not valid JSON: 'nope'")
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=timeout(10)) as api:
        history = (await api.get("/api/history", params={"channel": "chat:in"})).json()
    assert [p["data"] for p in history["publications"]] == [big, "-"]


async def test_token() -> None:
    code, out, _ = await run(
        "token", "--user", "42", "--channels", "chat:*", "user:42", "--ttl", "15m",
        "--secret", "s" * 32,
    )  # fmt: skip
    assert code == 0
    claims = jwt.decode(out.strip(), "s" * 32, algorithms=["HS256"])
    assert claims["sub"] == "42" and claims["channels"] == ["chat:*", "user:42"]
    assert 890 <= claims["exp"] - claims["iat"] <= 900
    assert "presence" not in claims and "publish" not in claims
    code, out, _ = await run(
        "token", "--user", "7", "--channels", "team:*", "--presence", "team:*", "lobby",
        "--secret", "s" * 32,
    )  # fmt: skip
    assert code == 0
    claims = jwt.decode(out.strip(), "s" * 32, algorithms=["HS256"])
    assert claims["presence"] == ["team:*", "lobby"]
    code, _, err = await run("token", "--user", "42")
    assert code == 2 and "no token secret" in err
    # A claim flag with no pattern is a mistake, not a token without the claim.
    for flag in ("--publish", "--presence", "--channels"):
        code, _, err = await run("token", "--user", "7", flag, "--secret", "s" * 32)
        assert code == 2 and f"{flag}: expected at least one argument" in err
    # Without --channels: a valid token that opens no channel, minted with a warning.
    code, out, err = await run("token", "--user", "42", "--secret", "s" * 32)
    assert code == 0 and jwt.decode(out.strip(), "s" * 32, algorithms=["HS256"])["channels"] == []
    assert err == "clarion: warning: the token allows no channel: pass --channels, e.g. 'chat:*'\n"


def test_help_lists_every_option() -> None:
    out = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, check=True)
    for flag in (
        "--config",
        "--host",
        "--port",
        "--engine",
        "--insecure",
        "--log-level",
        "--workers",
    ):
        assert flag in out.stdout


def test_every_command_says_what_it_does_in_its_help() -> None:
    """Each ``clarion <command> --help`` has a sentence between its usage and its options."""
    from clarion.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"serve", "publish", "subscribe", "token", "webhooks", "demo"}
    for name, command in commands.choices.items():
        assert command.description, f"clarion {name} --help says nothing of what it does"


def test_parsing_the_command_line_loads_no_command() -> None:
    """Every `clarion` process parses its command line first, and `--help` or a usage error ends
    there: the parse imports none of the commands, nor what they run on (which cost every
    `clarion` process ~0.4 s of CPU before it did anything)."""
    commands = [
        ["serve", "--port", "0"],
        ["publish", "c", "1"],
        ["subscribe", "c"],
        ["token", "--user", "u"],
        ["webhooks", "list"],
        ["demo"],
    ]
    code = (
        "import json, sys\n"
        "from clarion.cli import build_parser\n"
        "parser = build_parser()\n"
        "parser.format_help()\n"
        f"for argv in {commands!r}: parser.parse_args(argv)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = ("asyncio", "pydantic", "pydantic_settings", "httpx", "jwt", "starlette", "logging")
    heavy += ("clarion.settings", "clarion.core", "clarion.errors", "clarion.cli.command")
    heavy += ("clarion.cli.serve", "clarion.cli.client", "clarion.webhooks.endpoint")
    heavy += ("clarion.demo.app",)
    loaded = json.loads(out.stdout)
    assert [m for m in loaded if m.startswith(heavy)] == []


async def test_config_file_and_environment(hub_process: Any, tmp_path: Any) -> None:
    config = tmp_path / "clarion.toml"
    config.write_text(
        "[namespaces.default]\nhistory_size = 2\n[limits]\nmax_message_bytes = 2048\n"
    )
    hub = await hub_process(
        "--config", str(config), env={"CLARION_LIMITS__MAX_MESSAGE_BYTES": "1024"}
    )
    code, _, err = await run("publish", "c", json.dumps("x" * 1500), "--url", hub.http_url)
    assert code == 2 and "(HTTP 413, too_large)" in err  # env wins over file
    for n in range(3):
        await run("publish", "c", str(n), "--url", hub.http_url)
    import httpx

    history = httpx.get(hub.http_url + "/api/history", params={"channel": "c"}).json()
    assert [p["data"] for p in history["publications"]] == [1, 2]  # the file's history_size


async def test_bad_config_is_a_clear_error(tmp_path: Any) -> None:
    config = tmp_path / "clarion.toml"
    config.write_text("[limits]\nmax_conections = 5\n")
    code, _, err = await run("serve", "--config", str(config), "--port", "0")
    assert code == 2 and "max_conections" in err
    code, _, err = await run("serve", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "config file not found" in err


def test_serve_collects_the_young_generation_less_often() -> None:
    """`clarion serve` raises the collector's first threshold (a storm's sessions would start
    full collections otherwise); the other two stay as they were."""
    import gc

    from clarion.cli.serve import YOUNG_COLLECTION_AFTER, tune_collector

    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == (YOUNG_COLLECTION_AFTER, *before[1:])
        assert before[0] < YOUNG_COLLECTION_AFTER
    finally:
        gc.set_threshold(*before)


def test_python_m_clarion_is_the_clarion_command() -> None:
    for module in ("clarion", "clarion.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=False,
        )
        assert done.returncode == 0 and done.stdout.startswith("clarion "), done.stderr


def test_durations_take_seconds_or_a_number_with_a_unit() -> None:
    import argparse

    from clarion.cli.arguments import duration

    taken = {"90": 90, "90s": 90, "15m": 900, "1.5h": 5400, " 7D ": 604800, "36500d": 36500 * 86400}
    assert {text: duration(text) for text in taken} == taken
    for text in ("", "10x", "inf", "nan", "-5", "0", "0s", "1e3", "1_000", "٣", "36501d", "h"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(text)
