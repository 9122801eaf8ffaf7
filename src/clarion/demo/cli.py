"""``clarion demo``: the command.

Every ``clarion`` command builds its parser (:func:`add_parser`): what the demo runs is imported
when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_demo(args: argparse.Namespace) -> int:
    import logging
    import tempfile

    from clarion.cli.command import Loaded, run, setup_logging
    from clarion.cli.serve import serve
    from clarion.demo.app import demo_settings
    from clarion.errors import ClarionError, LocalCode

    setup_logging(args.log_level or "info")
    if args.log_level != "debug":  # the devices' comings and goings are the dashboard's to show
        logging.getLogger("clarion.client").setLevel(logging.WARNING)
    # Durable state of the run (revocations) goes with the run.
    with tempfile.TemporaryDirectory(prefix="clarion-demo-") as data_dir:
        settings = demo_settings(args.host, args.port, data_dir)
        if not settings.binds_loopback() and not args.insecure:
            raise ClarionError(
                f"refusing to serve the demo on {settings.host}: its token endpoint gives a "
                "token to anyone who asks. Bind 127.0.0.1, or pass --insecure.",
                code=LocalCode.INSECURE_BIND,
            )
        return run(serve(Loaded(settings, None, False, []), demo=True))


def add_parser(sub: Any) -> None:
    from clarion.cli.arguments import LOG_LEVELS, port_number

    demo = sub.add_parser(
        "demo",
        help="run a local hub with the demo apps at http://127.0.0.1:8000/demo/",
        description="Run a hub with the demo apps — chat, ticker, board, dashboard — at "
        "/demo/, the ticker's prices and simulated devices publishing beside it. Demo only: "
        "every run has a fresh token secret and API key, and /demo/token gives a token to "
        "whoever asks, so it binds 127.0.0.1 unless told otherwise. It reads no clarion.toml. "
        "See docs/demo.md.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    demo.add_argument(
        "--port", type=port_number, default=8000, help="port (default 8000; 0 picks a free one)"
    )
    demo.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind: anyone who can reach it can get a token",
    )
    demo.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, help="default info")
    demo.set_defaults(func=cmd_demo)
