"""What the client commands say on stderr: progress while the hub is away, errors in one style."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from clarion.protocol.cursor import channel_tag, encode_entries
from clarion.protocol.publication import StreamPosition

from ..conftest import free_port, timeout
from .test_cli import CLI, run
from .test_startup_errors import clean_env

CURSOR_SOURCES = (
    'a cursor is the "cursor" of a line clarion subscribe prints, or of a /poll answer, '
    "or the id: of an SSE event"
)

SECRET = "s" * 32
KEY = "k" * 32


class Subscriber:
    """``clarion subscribe`` in a subprocess, its stderr read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[str] = []

    async def expect(self, pattern: str, within: float = 20) -> str:
        """The next stderr line; it must match ``pattern`` (progress lines may repeat first)."""
        assert self.proc.stderr is not None
        deadline = asyncio.get_running_loop().time() + timeout(within)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            line = await asyncio.wait_for(self.proc.stderr.readline(), max(remaining, 0.1))
            text = line.decode().rstrip("\n")
            assert text, f"stderr ended; seen: {self.seen}"
            self.seen.append(text)
            if re.fullmatch(pattern, text):
                return text
            assert re.fullmatch(f"{RETRYING}|{CONNECTING}", text), (
                f"{text!r} is not {pattern!r}: {self.seen}"
            )

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        result: dict[str, Any] = json.loads(
            await asyncio.wait_for(self.proc.stdout.readline(), timeout(15))
        )
        return result


REFUSED = r"cannot connect to ws://127\.0\.0\.1:\d+/ws: connection refused"
RETRYING = rf"clarion: {REFUSED}; retrying in \d+\.\d s"
CONNECTING = r"clarion: connecting to ws://127\.0\.0\.1:\d+/ws"


async def subscribe(url: str, *args: str) -> Subscriber:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "subscribe", "chat:lobby", "--url", url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return Subscriber(proc)


async def test_subscribe_says_what_it_is_doing_while_the_hub_is_away(hub_process: Any) -> None:
    port = free_port()
    ws = re.escape(f"ws://127.0.0.1:{port}/ws")
    sub = await subscribe(f"http://127.0.0.1:{port}")
    try:
        # Nothing listens yet: it says where it connects, and that it retries.
        await sub.expect(f"clarion: connecting to {ws}")
        await sub.expect(RETRYING)
        await sub.expect(RETRYING)
        hub = await hub_process("--port", str(port))
        await sub.expect(f"clarion: connected to {ws}", within=40)
        await asyncio.sleep(0.2)  # the subscription is made just after the connection
        code, _, err = await run("publish", "chat:lobby", '"first"', "--url", hub.http_url)
        assert code == 0, err
        assert (await sub.line())["data"] == "first"

        # The hub goes away (shutting down tells clients to reconnect), then comes back.
        hub.proc.terminate()
        await hub.proc.wait()
        await sub.expect(
            f"clarion: lost the connection to {ws} \\(4000: shutdown\\); retrying in \\d+\\.\\d s"
        )
        hub = await hub_process("--port", str(port))
        await sub.expect(f"clarion: connected to {ws}", within=40)
        await asyncio.sleep(0.2)
        code, _, err = await run("publish", "chat:lobby", '"again"', "--url", hub.http_url)
        assert code == 0, err
        # The new hub's history is not the old one's: a reset first, then the publication.
        assert "reset" in await sub.line()
        assert (await sub.line())["data"] == "again"
    finally:
        sub.proc.terminate()
        await sub.proc.wait()


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_subscribe_waits_for_the_hub_past_the_open_timeout_with_one_backoff(
    transport: str,
) -> None:
    # A client library's connect() gives up at its open_timeout (10 s); the command waits for
    # the hub as for one that went away: one run of tries whose ceiling grows to the cap, not
    # a new client (and a backoff started over) every 10 s.
    port = free_port()
    sub = await subscribe(f"http://127.0.0.1:{port}", "--transport", transport)
    refused = re.escape(
        f"cannot connect to {'ws' if transport == 'ws' else 'http'}://127.0.0.1:{port}/{transport}"
    )
    retrying = f"clarion: {refused}: connection refused; retrying in (\\d+\\.\\d) s"
    loop = asyncio.get_running_loop()
    started = loop.time()
    delays: list[float] = []
    first = transport == "ws"  # the WebSocket link says once where it connects
    try:
        assert sub.proc.stderr is not None
        while loop.time() - started < 12:
            line = await asyncio.wait_for(sub.proc.stderr.readline(), timeout(25))
            text = line.decode().rstrip("\n")
            if first:
                assert text == f"clarion: connecting to ws://127.0.0.1:{port}/ws", text
                first = False
                continue
            matched = re.fullmatch(retrying, text)
            assert matched, f"{text!r}: not a retry, after {delays}"
            delays.append(float(matched[1]))
    finally:
        sub.proc.terminate()
        await sub.proc.wait()
    assert sub.proc.returncode == -15, "still waiting when stopped"
    # Attempt n waits at most min(20, 0.5 * 2**n) s: 12 s take at least five tries.
    assert len(delays) >= 5, delays


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_subscribe_says_it_is_connected_on_every_transport(
    hub_process: Any, transport: str
) -> None:
    hub = await hub_process()
    sub = await subscribe(hub.http_url, "--transport", transport)
    try:
        await sub.expect(
            re.escape(f"clarion: connected to {hub.http_url}/{transport} (chat:lobby)")
        )
    finally:
        sub.proc.terminate()
        await sub.proc.wait()


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_url_without_the_hub_asks_whether_it_is_the_hubs(
    hub_process: Any, transport: str
) -> None:
    # As for a hub mounted at /rt in an application, and asked at the application's root.
    hub = await hub_process()
    url = f"{hub.http_url}/rt"
    code, out, err = await run("subscribe", "chat:lobby", "--url", url, "--transport", transport)
    assert (code, out) == (2, "")
    last = err.splitlines()[-1]
    assert last.endswith(f"is {url} the hub's URL, with the path an application mounted it at?")
    assert "/rt/" + transport in last, last


async def test_auto_at_a_url_without_the_hub_stops_at_once(hub_process: Any) -> None:
    """As for one transport: nothing answers there, not even /healthz; waiting would not help
    (it used to try again and again, a few times a second)."""
    hub = await hub_process()
    url = f"{hub.http_url}/rt"
    code, out, err = await run("subscribe", "chat:lobby", "--url", url, "--transport", "auto")
    assert (code, out) == (2, "")
    assert err.splitlines()[-1].endswith(f"(and nothing is at {url}/healthz either)"), err


@pytest.mark.parametrize("transport", ["ws", "auto"])
async def test_another_kind_of_server_at_the_url_stops_at_once(
    tmp_path: Path, transport: str
) -> None:
    """A plain HTTP/1.0 file server, no hub: its answer to the upgrade is no WebSocket
    handshake, and its /healthz is a 404. It used to be tried again and again."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
        "--directory", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        await until_listening(port)
        code, out, err = await run(
            "subscribe", "chat:lobby", "--url", url, "--transport", transport
        )
    finally:
        server.terminate()
        await server.wait()
    assert (code, out) == (2, "")
    assert f"nothing is at {url}/healthz either" in err.splitlines()[-1], err


async def until_listening(port: int) -> None:
    deadline = asyncio.get_running_loop().time() + timeout(10)
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert asyncio.get_running_loop().time() < deadline, "the server did not start"
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


async def test_a_reader_that_stops_reading_ends_the_subscription_quietly(
    hub_process: Any,
) -> None:
    """``clarion subscribe … | head -2``: the lines it wanted, then an exit without a word."""
    hub = await hub_process()
    command = " ".join(shlex.quote(part) for part in [*CLI, "subscribe", "chat:lobby"])
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"set -o pipefail; {command} --url {hub.http_url} | head -2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # a failure ends the pipeline's commands too, not bash alone
    )  # fmt: skip
    sub = Subscriber(proc)
    try:
        await sub.expect(re.escape(f"clarion: connected to {hub.ws_url}"))
        await asyncio.sleep(0.2)  # the subscription is made just after the connection
        for n in range(5):  # the third finds no reader
            code, _, err = await run("publish", "chat:lobby", str(n), "--url", hub.http_url)
            assert code == 0, err
        out, err = await asyncio.wait_for(proc.communicate(), timeout(15))
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            await proc.wait()
    assert [json.loads(line)["data"] for line in out.splitlines()] == [0, 1]
    assert proc.returncode == 0, err  # the subscriber's own status, with pipefail
    assert err.decode() == "", err


async def into_closed_pipe(*args: str, buffered: bool) -> tuple[int, str]:
    """Run ``clarion ARGS`` with its stdout a pipe whose reader has gone (what ``| head -1``
    leaves once it has its line): the exit status and stderr. ``buffered``: stdout as Python
    buffers it for a pipe, so the first write to fail may be the last flush; else (as with
    PYTHONUNBUFFERED) every write."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = await asyncio.create_subprocess_exec(
            *CLI, *args, stdout=write, stderr=asyncio.subprocess.PIPE, env=env
        )
    finally:
        os.close(write)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout(30))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
async def test_every_command_ends_quietly_when_its_reader_has_gone(
    hub_process: Any, buffered: bool
) -> None:
    """Output into a closed pipe: exit status 0 and not a word, whichever command writes and
    however much (`clarion subscribe` is tested beside, with `| head`)."""
    hub = await hub_process(env={"CLARION_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]'})
    url = hub.http_url
    async with httpx.AsyncClient(base_url=url) as api:
        for n in range(70):  # a listing longer than Python's buffer of stdout (8 KB)
            body = {"url": f"http://127.0.0.1:9/hook/{n}", "channels": ["chat:*"]}
            assert (await api.post("/api/webhooks", json=body)).status_code == 200
    commands = [
        ["webhooks", "list", "--url", url],
        ["webhooks", "list", "--json", "--url", url],
        ["webhooks", "add", "http://127.0.0.1:9/hook/new", "--channel", "chat:*", "--url", url],
        ["publish", "chat:lobby", "1", "--url", url],
        ["token", "--user", "42", "--channels", "chat:*", "--secret", SECRET],
        ["--help"],
        ["webhooks", "--help"],
    ]
    for args in commands:
        assert await into_closed_pipe(*args, buffered=buffered) == (0, ""), args
    # What a reader that leaves after one line sees, as a shell runs it.
    command = " ".join(shlex.quote(part) for part in [*CLI, "webhooks", "list", "--url", url])
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"set -o pipefail; {command} | head -1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # a failure ends the pipeline's commands too, not bash alone
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout(30))
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            await proc.wait()
    assert (proc.returncode, err.decode()) == (0, "")
    assert out.decode().startswith("wh_") and out.decode().count("\n") == 1


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_bad_token_is_one_line(hub_process: Any, transport: str) -> None:
    hub = await hub_process(env={"CLARION_TOKEN_SECRET": SECRET, "CLARION_API_KEY": KEY})
    code, out, err = await run(
        "subscribe", "chat:lobby", "--url", hub.http_url, "--transport", transport,
        "--token", "not-a-token",
    )  # fmt: skip
    assert (code, out) == (2, "")
    errors = [line for line in err.splitlines() if "connect" not in line]
    assert len(errors) == 1 and errors[0].startswith("clarion: "), err
    assert "token" in errors[0]


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_subscribing_without_a_token_says_how_to_give_one(
    hub_process: Any, transport: str
) -> None:
    hub = await hub_process(env={"CLARION_TOKEN_SECRET": SECRET, "CLARION_API_KEY": KEY})
    code, out, err = await run(
        "subscribe", "chat:lobby", "--url", hub.http_url, "--transport", transport
    )
    assert (code, out) == (2, "")
    errors = [line for line in err.splitlines() if "connect" not in line]
    assert errors == [
        "clarion: a token is needed to subscribe to 'chat:lobby'",
        "clarion: pass a token with --token or CLARION_TOKEN "
        "(clarion token --user NAME --channels chat:lobby mints one)",
    ]
    # The command it gives mints a token this subscription is made with.
    mint = shlex.split(errors[1].split("(", 1)[1].removesuffix(" mints one)"))
    assert mint[:2] == ["clarion", "token"]
    code, token, err = await run(*[word.replace("NAME", "ada") for word in mint[1:]],
        "--secret", SECRET)  # fmt: skip
    assert (code, err) == (0, "")
    sub = await subscribe(hub.http_url, "--transport", transport, "--token", token.strip())
    try:
        await sub.expect(r"clarion: connected to .*")
        await asyncio.sleep(0.2)  # the subscription is made just after the connection
        code, _, err = await run("publish", "chat:lobby", "1", "--url", hub.http_url,
            "--api-key", KEY)  # fmt: skip
        assert code == 0, err
        assert (await sub.line())["data"] == 1
    finally:
        sub.proc.terminate()
        await sub.proc.wait()


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_token_that_does_not_cover_the_channel_says_so(
    hub_process: Any, transport: str
) -> None:
    from clarion.core.auth import mint_token

    hub = await hub_process(env={"CLARION_TOKEN_SECRET": SECRET, "CLARION_API_KEY": KEY})
    code, out, err = await run(
        "subscribe", "news:x", "--url", hub.http_url, "--transport", transport,
        "--token", mint_token(SECRET, "ada", ["chat:*"]),
    )  # fmt: skip
    assert (code, out) == (2, "")
    errors = [line for line in err.splitlines() if "connect" not in line]
    assert errors == [
        "clarion: not allowed to subscribe to 'news:x': the token's channels claim does not "
        "cover it"
    ]


NO_KEY = (
    "clarion: pass the hub's API key: --api-key KEY, CLARION_API_KEY, or api_key in "
    "clarion.toml (or the file --config names)"
)


async def test_every_command_reports_errors_the_same_way(hub_process: Any) -> None:
    hub = await hub_process(env={"CLARION_TOKEN_SECRET": SECRET, "CLARION_API_KEY": KEY})
    url = hub.http_url
    cases = [
        (
            ["publish", "chat:lobby", "1", "--url", url],
            "clarion: publish refused (HTTP 401, unauthorized): "
            "this endpoint needs 'Authorization: apikey <key>'\n" + NO_KEY,
        ),
        (
            ["webhooks", "list", "--url", url],
            "clarion: GET /api/webhooks refused (HTTP 401, unauthorized): "
            "this endpoint needs 'Authorization: apikey <key>'\n" + NO_KEY,
        ),
        (
            ["publish", "chat:lobby", "1", "--url", url, "--api-key", "nope"],
            "clarion: publish refused (HTTP 401, unauthorized): wrong API key\n"
            "clarion: the API key from --api-key is not one of the hub's",
        ),
        (
            ["webhooks", "remove", "nope", "--url", url, "--api-key", KEY],
            "clarion: DELETE /api/webhooks/nope refused (HTTP 404, not_found): no webhook 'nope'",
        ),
        (
            ["token", "--user", "42"],
            "clarion: no token secret: pass --secret, set token_secret in the config or "
            "CLARION_TOKEN_SECRET",
        ),
        # A path nothing serves: the command says what a wrong URL usually is.
        (
            ["publish", "chat:lobby", "1", "--url", url + "/wrong", "--api-key", KEY],
            "clarion: publish refused (HTTP 404, not_found): Not Found\n"
            f"clarion: is {url}/wrong the hub's URL, with the path an application mounted it at?",
        ),
        (
            ["publish", "chat:lobby", "1", "--url", url.removeprefix("http://")],
            "clarion: --url: hub URL must be http(s):// or ws(s):// with a host, got "
            f"{url.removeprefix('http://')!r}",
        ),
    ]
    for args, expected in cases:
        code, out, err = await run(*args)
        assert (code, out, err) == (2, "", expected + "\n"), args
    # The hub's /ws URL names the hub as well as its base URL does.
    code, out, _ = await run("publish", "chat:lobby", "1", "--url", hub.ws_url, "--api-key", KEY)
    assert code == 0 and json.loads(out)["offset"] == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "clarion: the following arguments are required: command\ntry 'clarion --help'"),
        (["frobnicate"], None),
        (
            ["publish"],
            "clarion: the following arguments are required: channel, data\n"
            "try 'clarion publish --help'",
        ),
        (  # the forms it takes
            ["token", "--user", "1", "--ttl", "10x"],
            "clarion: --ttl: not a duration: '10x' (use seconds, or a number with s, m, h or d: "
            "90, 15m, 12h, 7d)\ntry 'clarion token --help'",
        ),
        (  # not float()'s other spellings: a token that never expires, or one that has
            ["token", "--user", "1", "--ttl", "inf"],
            "clarion: --ttl: not a duration: 'inf' (use seconds, or a number with s, m, h or d: "
            "90, 15m, 12h, 7d)\ntry 'clarion token --help'",
        ),
        (
            ["token", "--user", "1", "--ttl", "0"],
            "clarion: --ttl: not a duration: '0' (more than 0 seconds, and at most 36500d)\n"
            "try 'clarion token --help'",
        ),
        (  # refused before a word about the token: no warning for a token not minted
            ["token", "--user", "1", "--secret", "short", "--ttl", "0"],
            "clarion: --ttl: not a duration: '0' (more than 0 seconds, and at most 36500d)\n"
            "try 'clarion token --help'",
        ),
        (  # a pattern the hub would refuse the whole token for, in any of the claims
            ["token", "--user", "1", "--secret", "short", "--channels", "chat:*", "chat lobby"],
            "clarion: --channels: invalid channel pattern 'chat lobby': 1 to 255 characters of "
            "letters, digits, _ . : @ / = , + - and *\ntry 'clarion token --help'",
        ),
        (
            ["token", "--user", "1", "--secret", "short", "--publish", ""],
            "clarion: --publish: invalid channel pattern '': 1 to 255 characters of "
            "letters, digits, _ . : @ / = , + - and *\ntry 'clarion token --help'",
        ),
        (
            ["token", "--user", "1", "--channels", "a", "--presence", "room#1"],
            "clarion: --presence: invalid channel pattern 'room#1': 1 to 255 characters of "
            "letters, digits, _ . : @ / = , + - and *\ntry 'clarion token --help'",
        ),
        (  # not dropped from the token without a word
            ["token", "--user", "1", "--info", '"Ann"'],
            "clarion: --info: not a JSON object: '\"Ann\"'\ntry 'clarion token --help'",
        ),
        (  # the option named, and where a cursor comes from; before connecting to anything
            ["subscribe", "chat:lobby", "--since", "garbage", "--url", "http://127.0.0.1:9"],
            "clarion: --since: not a cursor: 'garbage' (cursor is truncated); "
            + CURSOR_SOURCES
            + "\ntry 'clarion subscribe --help'",
        ),
    ],
)
async def test_usage_errors(args: list[str], expected: str | None) -> None:
    code, out, err = await run(*args)
    assert (code, out) == (2, "")
    if expected is None:
        assert err.startswith("clarion: command: invalid choice: 'frobnicate'"), err
        assert err.endswith("\ntry 'clarion --help'\n")
    else:
        assert err == expected + "\n"


async def run_in(cwd: Path, *args: str, **variables: str) -> tuple[int, str, str]:
    """``clarion ARGS`` in ``cwd`` with no CLARION_* variable but ``variables``."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=cwd, env=clean_env(**variables),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout(30))
    return proc.returncode or 0, out.decode(), err.decode()


async def test_client_commands_find_the_hub_serve_runs_here(
    hub_process: Any, tmp_path: Path
) -> None:
    # One clarion.toml: `serve` listens where it says, and the client commands go there, with
    # its API key, unless told otherwise.
    port = free_port()
    (tmp_path / "clarion.toml").write_text(f'port = {port}\napi_key = "{KEY}"\n')
    await hub_process("--port", str(port), cwd=tmp_path, env=clean_env())
    code, out, err = await run_in(tmp_path, "publish", "chat:lobby", '"hi"')
    assert (code, err) == (0, ""), err
    assert "cursor" in json.loads(out)
    code, out, err = await run_in(tmp_path, "webhooks", "list", "--json")
    assert (code, err) == (0, ""), err
    # The variables count as they do for serve; explicit flags win over both.
    other = free_port()
    code, out, err = await run_in(tmp_path, "publish", "c", "1", CLARION_PORT=str(other))
    assert (code, out) == (2, "")
    assert err.startswith(f"clarion: cannot reach http://127.0.0.1:{other}: "), err
    code, out, err = await run_in(tmp_path, "publish", "c", "1", CLARION_API_KEY="nope")
    assert (code, out, err) == (
        2,
        "",
        "clarion: publish refused (HTTP 401, unauthorized): wrong API key\n"
        "clarion: the API key from CLARION_API_KEY is not one of the hub's\n",
    )
    code, out, err = await run_in(
        tmp_path, "publish", "c", "1", "--url", f"http://127.0.0.1:{other}"
    )
    assert err.startswith(f"clarion: cannot reach http://127.0.0.1:{other}: "), err
    code, out, err = await run_in(tmp_path.parent, "publish", "c", "1", "--api-key", "x",
        "--config", str(tmp_path / "clarion.toml"))  # fmt: skip
    assert err == (
        "clarion: publish refused (HTTP 401, unauthorized): wrong API key\n"
        "clarion: the API key from --api-key is not one of the hub's\n"
    )
    code, out, err = await run_in(
        tmp_path.parent, "publish", "c", "1", "--config", str(tmp_path / "clarion.toml")
    )
    assert (code, err) == (0, ""), err


SHORT_SECRET = (
    "token_secret is 5 bytes, shorter than the 32 bytes HS256 needs: a short secret can be "
    "guessed, and with it any token forged; use a random one, e.g. "
    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


async def test_a_short_token_secret_is_one_warning_in_clarions_words(hub_process: Any) -> None:
    # Allowed (a development secret), but said once, naming the setting, never PyJWT's warning.
    code, out, err = await run("token", "--user", "42", "--channels", "chat:*", "--secret", "short")
    assert (code, err) == (0, f"clarion: warning: {SHORT_SECRET}\n")
    token = out.strip()
    code, out, err = await run("token", "--user", "42", "--channels", "a", "--secret", "s" * 32)
    assert (code, err) == (0, "")
    hub = await hub_process(env={"CLARION_TOKEN_SECRET": "short", "CLARION_API_KEY": KEY})
    sub = await subscribe(hub.http_url, "--token", token)
    try:
        await sub.expect(r"clarion: connecting to .*")
        await sub.expect(r"clarion: connected to .*")
        await asyncio.sleep(0.2)  # the subscription is made just after the connection
        code, _, err = await run("publish", "chat:lobby", "1", "--url", hub.http_url,
            "--api-key", KEY)  # fmt: skip
        assert code == 0, err
        assert (await sub.line())["data"] == 1  # the token was verified
    finally:
        sub.proc.terminate()
        await sub.proc.wait()
    hub.proc.terminate()
    await asyncio.wait_for(hub.proc.wait(), timeout(20))
    await asyncio.wait_for(hub._pump, timeout(5))
    log = "".join(hub.log)
    assert [line.split("WARNING clarion.hub: ", 1)[1] for line in hub.log
        if "token_secret is" in line] == [SHORT_SECRET + "\n"], log  # fmt: skip
    assert "InsecureKeyLengthWarning" not in log and "HMAC key" not in log, log


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
@pytest.mark.parametrize("age", [0, 3600])
async def test_an_expired_token_ends_at_once(hub_process: Any, transport: str, age: int) -> None:
    # The same token cannot do better on the next attempt: no retry, one line. Just expired
    # (within the clock-skew leeway) the hub lets it connect and then closes; long expired it is
    # refused at once.
    import time

    import jwt

    now = int(time.time())
    expired = jwt.encode(
        {"sub": "1", "channels": ["chat:*"], "iat": now - age - 60, "exp": now - age}, SECRET
    )
    hub = await hub_process(env={"CLARION_TOKEN_SECRET": SECRET, "CLARION_API_KEY": KEY})
    code, out, err = await run(
        "subscribe", "chat:lobby", "--url", hub.http_url, "--transport", transport,
        "--token", expired,
    )  # fmt: skip
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert [line for line in lines if not re.match(r"clarion: connect(ing|ed) to ", line)] == [
        "clarion: token expired"
    ], err


async def test_a_cursor_of_another_channel_is_refused_before_connecting() -> None:
    cursor = encode_entries([(channel_tag("chat:other"), StreamPosition("ep", 3))])
    code, out, err = await run(
        "subscribe", "chat:lobby", "--since", cursor, "--url", "http://127.0.0.1:9"
    )
    assert (code, out) == (2, "")
    assert err == (
        "clarion: --since: the cursor holds no position for channel 'chat:lobby': it was taken "
        f"from another channel; {CURSOR_SOURCES}\n"
    )
