"""What every ``clarion`` subcommand shares: usage errors, argument types, logging, settings.

A subcommand's failure is a :class:`~clarion.errors.ClarionError`; :func:`clarion.cli.main` prints
it as ``clarion: …`` on stderr and exits 2, as :class:`Parser` does for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import orjson

from clarion.errors import BadCursor, ClarionError, LocalCode
from clarion.settings import Settings

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """Usage errors in the style of every other error: ``clarion: …`` on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(2, f"clarion: {message}\ntry '{self.prog} --help'\n")


def setup_logging(level: str, worker: int | None = None) -> None:
    # A worker's lines carry its number: the workers of one `serve --workers` share a stderr.
    who = f"[worker {worker}] " if worker is not None else ""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
    )


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0 to 65535): {text!r}")
    return port


def json_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        hint = ""
        if text[:1] not in ('"', "{", "[", "-", *"0123456789") and "'" not in text:
            # A bare word is a string without its quotes, which the shell took off.
            hint = f""" (a JSON string keeps its quotes: '"{text}"')"""
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r}{hint}") from None


def json_object(text: str) -> dict[str, Any]:
    value = json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


CURSOR_SOURCES = (
    'a cursor is the "cursor" of a line clarion subscribe prints, or of a /poll answer, '
    "or the id: of an SSE event"
)


def cursor_arg(text: str) -> str:
    """A cursor to resume from, read before connecting: a typo is a usage error then, not a
    refusal after the connection."""
    from clarion.protocol.cursor import Cursor

    try:
        Cursor.decode(text)
    except BadCursor as exc:
        raise argparse.ArgumentTypeError(
            f"not a cursor: {text[:40]!r}{'…' if len(text) > 40 else ''} ({exc.message}); "
            f"{CURSOR_SOURCES}"
        ) from None
    return text


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
    if settings.port == 0:
        raise ClarionError(
            f"{source} sets port 0 (any free port): pass --url or set CLARION_URL",
            code=LocalCode.CONFIG,
        )
    host = settings.host
    if host in ("", "0.0.0.0"):  # every interface: loopback is one of them
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine on uvloop (asyncio's loop where there is none)."""
    try:
        import uvloop

        return int(uvloop.run(main))
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main)
