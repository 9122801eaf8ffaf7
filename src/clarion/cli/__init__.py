"""The ``clarion`` command: serve, publish, subscribe, token (and webhooks, demo).

The subcommands live in :mod:`clarion.cli.serve` and :mod:`clarion.cli.client`, what they share in
:mod:`clarion.cli.command`, what the parser needs in :mod:`clarion.cli.arguments`; this module
builds the parser and runs one.

Every ``clarion`` process builds the whole parser, so building it imports none of the commands:
each is imported when it runs, and ``clarion --help`` or a usage error costs what argparse does.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from clarion import __version__
from clarion.cli.arguments import (
    LOG_LEVELS,
    Parser,
    add_client_options,
    channel_pattern,
    cursor_arg,
    duration,
    json_object,
    json_or_stdin,
    port_number,
    worker_count_arg,
)

__all__ = ["build_parser", "main"]

Command = Callable[[argparse.Namespace], int]


def _command(module: str, name: str) -> Command:
    """The function ``name`` of ``module``, imported when the command runs."""

    def run(args: argparse.Namespace) -> int:
        function: Command = getattr(importlib.import_module(module), name)
        return function(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="clarion", description="clarion: a real-time messaging hub.")
    parser.add_argument("--version", action="version", version=f"clarion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the hub",
        description="Run the hub. Settings come from --config (TOML; default ./clarion.toml "
        "when there is one), then CLARION_* environment variables, then these flags. With no "
        "configuration it runs in local development mode (memory engine, no secrets, "
        "127.0.0.1:8000). See docs/configuration.md for every option.",
    )
    serve.add_argument("--config", help="path to clarion.toml (default ./clarion.toml, if any)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, help="port (default 8000; 0 picks a free one)")
    serve.add_argument(
        "--engine",
        help='"memory" (default), "redis://host:port/db", "redis+sentinel://…" or '
        '"redis+cluster://host:port,…"',
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without api_key and token_secret",
    )
    serve.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, help="default info")
    serve.add_argument(
        "--workers",
        type=worker_count_arg,
        default=1,
        metavar="N",
        help="hub processes sharing the port (SO_REUSEPORT) and the engine, which must be "
        'Redis; "auto" = one per core (default 1)',
    )
    # Set by the supervisor of --workers for each worker it starts.
    serve.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-link", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_command("clarion.cli.serve", "cmd_serve"))

    about = "publish JSON to a channel through the server API"
    publish = sub.add_parser("publish", help=about, description=about[0].upper() + about[1:])
    publish.add_argument("channel", help="the channel, e.g. chat:lobby (namespace:name)")
    publish.add_argument(
        "data",
        type=json_or_stdin,
        help='a JSON value, e.g. \'{"text": "hi"}\', or - to read it from standard input',
    )
    publish.add_argument("--id", help="idempotency key")
    add_client_options(publish, api_key=True)
    publish.set_defaults(func=_command("clarion.cli.client", "cmd_publish"))

    about = "print a channel's publications as JSON lines, resuming across dropped connections"
    subscribe = sub.add_parser("subscribe", help=about, description=about[0].upper() + about[1:])
    subscribe.add_argument("channel", help="the channel, e.g. chat:lobby (namespace:name)")
    subscribe.add_argument(
        "--since",
        type=cursor_arg,
        help='a cursor to resume from: the "cursor" of a line subscribe printed, or of /poll',
    )
    add_client_options(subscribe, api_key=False)
    subscribe.add_argument("--token", help="connection token ($CLARION_TOKEN)")
    subscribe.add_argument(
        "--transport",
        choices=["ws", "sse", "poll", "auto"],
        default="ws",
        help="default ws; auto falls back to SSE, then polling, where WebSocket is refused",
    )
    subscribe.set_defaults(func=_command("clarion.cli.client", "cmd_subscribe"))

    about = "mint a development connection token (HS256 JWT)"
    token = sub.add_parser("token", help=about, description=about[0].upper() + about[1:])
    token.add_argument("--user", required=True, help="the token's sub claim")
    token.add_argument(
        "--channels",
        nargs="+",
        default=[],
        type=channel_pattern,
        metavar="PATTERN",
        help="channels it may subscribe",
    )
    token.add_argument(
        "--publish",
        nargs="+",
        default=[],
        type=channel_pattern,
        metavar="PATTERN",
        help="channels it may publish to",
    )
    token.add_argument(
        "--presence",
        nargs="+",
        default=[],
        type=channel_pattern,
        metavar="PATTERN",
        help="may read presence without subscribing",
    )
    token.add_argument(
        "--ttl",
        type=duration,
        default=3600.0,
        help="lifetime: seconds, or a number with s, m, h or d (default: 1h)",
    )
    token.add_argument(
        "--info", type=json_object, help="JSON object shown with publications (and presence)"
    )
    token.add_argument("--secret", help="HS256 secret (default: token_secret from config/env)")
    token.add_argument("--config", help="path to clarion.toml (default ./clarion.toml, if any)")
    token.set_defaults(func=_command("clarion.cli.client", "cmd_token"))

    from clarion.demo.cli import add_parser as add_demo_parser
    from clarion.webhooks.cli import add_parser as add_webhooks_parser

    add_webhooks_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            # Here, not at the interpreter's exit, where a failed flush would be an "Exception
            # ignored" and status 120: output still buffered (or --help, which ends in
            # SystemExit) meets a reader that left as a write does.
            if sys.stdout is not None:  # None: started with stdout closed (`>&-`)
                sys.stdout.flush()
    except BrokenPipeError:
        # What read stdout stopped reading (`clarion webhooks list | head -1`): the command's
        # end, quietly, for every command and whichever write found the pipe closed. (A socket's
        # EPIPE never gets here: httpx and websockets raise their own errors for it.) The rest of
        # the output goes nowhere, so the interpreter's own last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the workers of serve
    from clarion.errors import ClarionError  # here: --help and usage errors end before it

    try:
        result: int = args.func(args)
        return result
    except ClarionError as exc:
        sys.stderr.write("".join(f"clarion: {line}\n" for line in exc.message.splitlines()))
        return 2
