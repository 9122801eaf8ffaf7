"""``clarion serve`` refusing to start: one or two plain lines on stderr, naming the file or
variable, the key and what is wanted, and exit status 2 — checked on real processes."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from ..conftest import timeout

CLI = [sys.executable, "-m", "clarion.cli"]
# What an error about a whsec_ secret adds: how to make one.
MAKE_ONE = (
    "; make one with: python3 -c 'import base64, os; "
    'print("whsec_" + base64.b64encode(os.urandom(24)).decode())\''
)


def clean_env(**variables: str) -> dict[str, str]:
    """This environment without any CLARION_* variable, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    return {**env, **variables}


async def serve(*args: str, cwd: Path, **variables: str) -> tuple[int, list[str]]:
    """Run ``clarion serve ARGS`` to its end: exit status and stderr lines (log lines apart)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=clean_env(**variables), cwd=cwd,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout(30))
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("clarion serve did not exit") from None
    assert out == b""
    return proc.returncode or 0, err.decode().splitlines()


def errors(lines: list[str]) -> list[str]:
    """The lines that are not timestamped log lines."""
    return [line for line in lines if not line[:4].isdigit()]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "port = \n",
            ["clarion: clarion.toml: not valid TOML: line 1, column 8: invalid value"],
        ),
        (
            "[limits]\nmax_conections = 5\n",
            [
                "clarion: clarion.toml: unknown key limits.max_conections "
                "(did you mean limits.max_connections?)"
            ],
        ),
        (
            'port = "abc"\n',
            ['clarion: clarion.toml: port = "abc": must be a valid integer'],
        ),
        (
            "[namespaces.chat]\nslow_consumer = 'drop'\n",
            [
                'clarion: clarion.toml: namespaces.chat.slow_consumer = "drop": '
                'must be "disconnect" or "conflate"'
            ],
        ),
        (  # a union: what it accepts, not pydantic's attempt at each member
            "[namespaces.chat]\njoin_leave = 'users'\n",
            [
                'clarion: clarion.toml: namespaces.chat.join_leave = "users": '
                'must be true, false, "user" or "client"'
            ],
        ),
        (
            "api_key = 5\n",
            [
                "clarion: clarion.toml: api_key (value not shown): "
                "must be a string or a list of strings"
            ],
        ),
        (  # a value of a member's type: that member's rule
            "api_key = ['k1', 5]\n",
            ["clarion: clarion.toml: api_key[1] (value not shown): must be a valid string"],
        ),
        ("limits = 5\n", ["clarion: clarion.toml: limits = 5: must be a table"]),
        (
            "[[webhooks]]\nchannels = ['a']\n",
            ["clarion: clarion.toml: webhooks[0].url: required"],
        ),
        (
            'engine = "redis://:hunter2@localhost:99999/0"\n',
            [
                'clarion: clarion.toml: engine = "redis://***@localhost:99999/0": '
                "not a valid URL: Port out of range 0-65535"
            ],
        ),
        (
            'api_key = "   "\n',
            [
                "clarion: clarion.toml: api_key (value not shown): "
                "must not be empty: remove the setting to leave it unset"
            ],
        ),
        (
            "[hooks]\nconnect_url = 'ftp://u:p@h.example.com/x'\n"
            "secret = 'whsec_ocnkZmpksmdS2tsgPBYHTW0AdY4tLNfN'\n",
            [
                'clarion: clarion.toml: hooks.connect_url = "ftp://***@h.example.com/x": '
                "must be an http:// or https:// URL"
            ],
        ),
        (
            "[hooks]\nconnect_url = 'http://127.0.0.1:9/hook'\nsecret = 'whsec_QUJD'\n",
            [
                "clarion: clarion.toml: hooks.secret (value not shown): "
                "'secret' must hold 24 to 64 bytes, not 3" + MAKE_ONE
            ],
        ),
        (
            "[hooks]\nconnect_url = 'http://127.0.0.1:9/hook'\n",
            [
                'clarion: clarion.toml: hooks = {"connect_url": "http://127.0.0.1:9/hook"}: '
                "[hooks] needs a secret (whsec_...) to sign its requests" + MAKE_ONE
            ],
        ),
        (
            'api_key = ""\n',
            [
                "clarion: clarion.toml: api_key (value not shown): "
                "must not be empty: remove the setting to leave it unset"
            ],
        ),
        (
            "[[webhooks]]\nurl = 'https://example.com/h'\nsecret = 'whsec_not base64'\n",
            [
                "clarion: clarion.toml: webhooks[0].secret (value not shown): "
                "'secret' is not valid base64 after whsec_" + MAKE_ONE
            ],
        ),
        (
            "[[webhooks]]\nurl = 'https://example.com/h'\nsecret = 'whsec_c2hvcnQ='\n",
            [
                "clarion: clarion.toml: webhooks[0].secret (value not shown): "
                "'secret' must hold 24 to 64 bytes, not 5" + MAKE_ONE
            ],
        ),
    ],
)
async def test_bad_config_file(tmp_path: Path, toml: str, expected: list[str]) -> None:
    (tmp_path / "clarion.toml").write_text(toml)
    code, lines = await serve("--config", "clarion.toml", cwd=tmp_path)
    assert (code, lines) == (2, expected)


async def test_a_file_that_is_not_there(tmp_path: Path) -> None:
    code, lines = await serve("--config", "missing.toml", cwd=tmp_path)
    assert (code, lines) == (2, ["clarion: config file not found: missing.toml"])


async def test_clarion_toml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "clarion.toml").write_text("[limits]\nmax_conections = 5\n")
    code, lines = await serve(cwd=tmp_path)
    assert code == 2
    assert lines == [
        "clarion: clarion.toml: unknown key limits.max_conections "
        "(did you mean limits.max_connections?)"
    ]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"CLARION_PORT": "abc"}, ["clarion: CLARION_PORT=abc: must be a valid integer"]),
        (
            {"CLARION_PORT": "70000"},
            ["clarion: CLARION_PORT=70000: must be less than or equal to 65535"],
        ),
        (
            {"CLARION_PORTT": "8001"},
            ["clarion: CLARION_PORTT: unknown setting (did you mean CLARION_PORT?)"],
        ),
        ({"CLARION_FOO": "1"}, ["clarion: CLARION_FOO: unknown setting"]),
        (  # a setting named by its last word
            {"CLARION_ORIGINS": "https://app.example.com"},
            ["clarion: CLARION_ORIGINS: unknown setting (did you mean CLARION_ALLOWED_ORIGINS?)"],
        ),
        (  # the one setting ending so, not the nearest spelling (insecure)
            {"CLARION_SECRET": "x"},
            ["clarion: CLARION_SECRET: unknown setting (did you mean CLARION_TOKEN_SECRET?)"],
        ),
        (
            {"CLARION_ENGINE": "foo://x"},
            [
                'clarion: CLARION_ENGINE=foo://x: must be "memory" or a Redis URL '
                "(redis://, rediss://, unix://, redis+sentinel://, redis+cluster://)"
            ],
        ),
        (
            {"CLARION_ENGINE": "redis://127.0.0.1:notaport/0"},
            [
                "clarion: CLARION_ENGINE=redis://127.0.0.1:notaport/0: "
                "not a valid URL: Port could not be cast to integer value as 'notaport'"
            ],
        ),
        (
            {"CLARION_LIMITS__MAX_CONECTIONS": "5"},
            [
                "clarion: CLARION_LIMITS__MAX_CONECTIONS: unknown setting "
                "(did you mean CLARION_LIMITS__MAX_CONNECTIONS?)"
            ],
        ),
        (
            {"CLARION_LOG_LEVEL": "verbose"},
            ['clarion: CLARION_LOG_LEVEL=verbose: must be "debug", "info", "warning" or "error"'],
        ),
        (
            {"CLARION_NAMESPACES__CHAT__JOIN_LEAVE": "users"},
            [
                "clarion: CLARION_NAMESPACES__CHAT__JOIN_LEAVE=users: "
                'must be true, false, "user" or "client"'
            ],
        ),
        (
            {"CLARION_API_KEY": '{"k": 1}'},
            ["clarion: CLARION_API_KEY (value not shown): must be a string or a list of strings"],
        ),
        (
            {"CLARION_ALLOWED_ORIGINS": '["https://app.example.com"'},
            [
                "clarion: CLARION_ALLOWED_ORIGINS: not valid JSON: "
                "Expecting ',' delimiter: line 1 column 27 (char 26)"
            ],
        ),
        (
            {"CLARION_LIMITS": '{"max_connections": 0}'},
            ["clarion: CLARION_LIMITS: limits.max_connections: must be greater than or equal to 1"],
        ),
        (
            {"CLARION_PORT": "abc", "CLARION_FOO": "1"},
            [
                "clarion: CLARION_PORT=abc: must be a valid integer",
                "clarion: CLARION_FOO: unknown setting",
            ],
        ),
    ],
)
async def test_bad_environment(
    tmp_path: Path, variables: dict[str, str], expected: list[str]
) -> None:
    code, lines = await serve(cwd=tmp_path, **variables)
    assert (code, lines) == (2, expected)


async def test_the_environment_names_the_variable_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "clarion.toml").write_text("[limits]\nmax_connections = 5\n")
    code, lines = await serve(cwd=tmp_path, CLARION_LIMITS__MAX_CONNECTIONS_PER_IP="0")
    assert (code, lines) == (
        2,
        ["clarion: CLARION_LIMITS__MAX_CONNECTIONS_PER_IP=0: must be greater than or equal to 1"],
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--log-level", "verbose"],
            "clarion: --log-level: invalid choice: 'verbose' "
            "(choose from 'debug', 'info', 'warning', 'error')",
        ),
        (["--port", "abc"], "clarion: --port: not a port number (0 to 65535): 'abc'"),
        (["--port", "70000"], "clarion: --port: not a port number (0 to 65535): '70000'"),
        (["--bogus"], "clarion: unrecognized arguments: --bogus"),
    ],
)
async def test_bad_flags(tmp_path: Path, args: list[str], expected: str) -> None:
    code, lines = await serve(*args, cwd=tmp_path)
    hint = "try 'clarion --help'" if args == ["--bogus"] else "try 'clarion serve --help'"
    assert (code, lines) == (2, [expected, hint])


async def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = await serve("--port", str(port), cwd=tmp_path)
    assert code == 2
    assert errors(lines) == [
        f"clarion: cannot listen on 127.0.0.1:{port}: address already in use; "
        "choose another with --port N (or port in clarion.toml / CLARION_PORT)"
    ]
    # Nothing started, so nothing stops: the only log line says what was being tried.
    assert len(lines) == 2
    assert lines[0].endswith(
        "INFO clarion.cli: config file: none; environment: none; engine: memory"
    )


async def test_an_address_not_of_this_machine_gets_no_port_advice(tmp_path: Path) -> None:
    # Another port would not help: the advice is for a port in use only.
    code, lines = await serve("--host", "192.0.2.1", "--port", "0", "--insecure", cwd=tmp_path)
    assert code == 2
    assert errors(lines) == [
        "clarion: cannot listen on 192.0.2.1:0: cannot assign requested address"
    ]


async def test_a_refused_webhook_url_is_shown_without_its_credentials(tmp_path: Path) -> None:
    (tmp_path / "clarion.toml").write_text(
        '[[webhooks]]\nurl = "https://user:PASSWORD@r.example.com/x?sig=QUERYSECRET"\n'
        'channels = ["a:*"]\n'
    )
    code, lines = await serve("--config", "clarion.toml", "--port", "0", cwd=tmp_path)
    assert code == 2
    assert not [line for line in lines if "PASSWORD" in line or "QUERYSECRET" in line]
    assert "[[webhooks]] 'https://r.example.com/x': 'url' must not hold credentials" in "\n".join(
        lines
    )


async def test_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        code, lines = await serve(
            "--port", "0", "--engine", f"redis://127.0.0.1:{port}/0", cwd=tmp_path
        )
    assert code == 2
    assert errors(lines) == [
        f"clarion: the hub could not start: cannot reach Redis at redis://127.0.0.1:{port}/0: "
        f"Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    ]
    assert not [line for line in lines if "Traceback" in line or "lifespan" in line]


async def test_the_start_up_log_says_what_is_in_use(hub_process: Any, tmp_path: Path) -> None:
    (tmp_path / "clarion.toml").write_text("[limits]\nmax_connections = 50\n")
    hub = await hub_process(
        cwd=tmp_path,
        env=clean_env(
            CLARION_ALLOWED_ORIGINS="https://a.example, https://b.example",
            CLARION_ENGINE="memory",
        ),
    )
    config = (tmp_path / "clarion.toml").resolve()
    expected = (
        f"INFO clarion.cli: config file: {config} (found in the working directory); "
        "environment: CLARION_ALLOWED_ORIGINS, CLARION_ENGINE; engine: memory"
    )
    assert [line.rstrip()[24:] for line in hub.log if "config file:" in line] == [expected]
    # The comma-separated list reached the settings: a listed origin is let in, others not.
    import websockets

    for origin, allowed in [("https://b.example", True), ("https://c.example", False)]:
        try:
            async with websockets.connect(
                hub.ws_url, origin=origin, subprotocols=["clarion.v1"], open_timeout=timeout(5)
            ):
                opened = True
        except websockets.InvalidStatus:
            opened = False
        assert opened is allowed, origin


@pytest.mark.parametrize(
    ("variables", "missing"),
    [
        ({}, "api_key and token_secret (or token_public_key_file): anyone could publish and "
         "subscribe. Configure them"),
        ({"CLARION_TOKEN_SECRET": "s" * 32}, "api_key: the server API (/api/*, /metrics) "
         "would refuse every call. Configure it"),
        ({"CLARION_API_KEY": "k" * 32}, "token_secret (or token_public_key_file): every token "
         "would be refused, and clients could connect only anonymously, to namespaces with "
         "anonymous = true. Configure it"),
    ],
)  # fmt: skip
async def test_a_public_bind_names_the_missing_credential_and_what_it_means(
    tmp_path: Path, variables: dict[str, str], missing: str
) -> None:
    code, lines = await serve("--host", "0.0.0.0", "--port", "0", cwd=tmp_path, **variables)
    assert (code, lines) == (
        2,
        [
            f"clarion: refusing to listen on 0.0.0.0 without {missing}, bind 127.0.0.1, or "
            "pass --insecure."
        ],
    )
