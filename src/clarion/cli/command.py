"""What the ``clarion`` subcommands share when they run: logging, settings, the hub's URL.

What the parser needs is in :mod:`clarion.cli.arguments`. A subcommand's failure is a
:class:`~clarion.errors.ClarionError`; :func:`clarion.cli.main` prints it as ``clarion: …`` on
stderr and exits 2, as :class:`~clarion.cli.arguments.Parser` does for a usage error; a command
whose stdout's reader has gone (``| head -1``) ends there, quietly, with status 0.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from clarion.errors import ClarionError, LocalCode

if TYPE_CHECKING:
    # Read when a command loads settings: a client command given --url and --api-key needs
    # neither pydantic nor the settings model.
    from clarion.settings import Settings


def setup_logging(level: str, worker: int | None = None) -> None:
    # A worker's lines carry its number: the workers of one `serve --workers` share a stderr.
    who = f"[worker {worker}] " if worker is not None else ""
    chosen = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        level=chosen, format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"
    )
    # httpx logs each request at INFO, its whole URL with it: a line per webhook delivery and
    # hook call, and a secret in a webhook's query in the log. Its warnings still show, and
    # everything at DEBUG.
    logging.getLogger("httpx").setLevel(chosen if chosen <= logging.DEBUG else logging.WARNING)


def redact(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    netloc = user + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Loaded:
    """Settings with where they came from, for the start-up log."""

    def __init__(self, settings: Settings, config: Path | None, found: bool, env: list[str]):
        self.settings = settings
        self.config = config
        self.found = found  # read from the working directory without --config
        self.variables = env

    def describe(self) -> str:
        if self.config is None:
            source = "config file: none"
        else:
            source = f"config file: {self.config.resolve()}"
            if self.found:
                source += " (found in the working directory)"
        variables = ", ".join(self.variables) or "none"
        engine = redact(self.settings.engine)
        return f"{source}; environment: {variables}; engine: {engine}"


def load_settings(args: argparse.Namespace) -> Loaded:
    """The settings of a command: ``--config`` (or ``./clarion.toml``), environment, flags."""
    from clarion.settings import Settings
    from clarion.settings_sources import default_file, load

    overrides: dict[str, Any] = {}
    for name in ("host", "port", "engine"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "insecure", False):
        overrides["insecure"] = True
    config = Path(args.config) if args.config else default_file()
    settings, sourced = load(Settings, config, overrides, flags=True)
    return Loaded(settings, config, config is not None and not args.config, sourced.variables)


def local_url(settings: Settings, source: str) -> str:
    """The URL of the hub ``clarion serve`` runs with ``settings``, seen from this machine."""
    url = settings.local_url()
    if url is None:
        raise ClarionError(
            f"{source} sets port 0 (any free port): pass --url or set CLARION_URL",
            code=LocalCode.CONFIG,
        )
    return url


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine on uvloop (asyncio's loop where there is none)."""
    try:
        import uvloop

        return int(uvloop.run(main))
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        import asyncio

        return asyncio.run(main)
