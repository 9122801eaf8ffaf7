"""What the ``clarion`` parser needs: its error style, argument types and shared options.

Every ``clarion`` process builds the whole parser, whichever command it runs (and ``--help``
runs none): this module imports nothing but :mod:`argparse` (and :mod:`re`, which argparse
imports), and an argument type imports what it checks with only when it is given.
"""

from __future__ import annotations

import argparse
import re
from typing import Any, NoReturn

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """Usage errors in the style of every other error: ``clarion: …`` on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(2, f"clarion: {message}\ntry '{self.prog} --help'\n")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_FORMS = "seconds, or a number with s, m, h or d: 90, 15m, 12h, 7d"
# A hundred years: a longer lifetime is a slip of the finger (and past the year 9999, a hub
# refuses the token's exp).
MAX_DURATION = 36500 * 86400
# ASCII digits only: float() also took "inf", "nan", "1e3", "1_000" and "-5".
_DURATION = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)([smhd]?)", re.ASCII)


def duration(text: str) -> float:
    """``90``, ``90s``, ``1.5h``, ``15m``, ``2d`` → seconds, more than 0, at most 100 years."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use {DURATION_FORMS})")
    seconds = float(found.group(1)) * DURATION_UNITS[found.group(2) or "s"]
    if not 0 < seconds <= MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (more than 0 seconds, and at most 36500d)"
        )
    return seconds


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0 to 65535): {text!r}")
    return port


def json_value(text: str) -> Any:
    import orjson

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        hint = ""
        if text[:1] not in ('"', "{", "[", "-", *"0123456789") and "'" not in text:
            # A bare word is a string without its quotes, which the shell took off.
            hint = f""" (a JSON string keeps its quotes: '"{text}"')"""
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r}{hint}") from None


class _Stdin:
    """Read from standard input when the command runs (``-`` on the command line)."""


STDIN = _Stdin()


def json_or_stdin(text: str) -> Any:
    """A JSON value, or ``-``: read it from standard input (a payload too large for a command
    line, or made by another program). The JSON string ``"-"`` is a value like any other."""
    return STDIN if text == "-" else json_value(text)


def json_object(text: str) -> dict[str, Any]:
    value = json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def channel_pattern(text: str) -> str:
    """A pattern of a token's claim, checked as the hub checks it: a hub refuses every token
    with one it cannot read, so one is a usage error, not a token minted in vain."""
    from clarion.errors import BadChannel
    from clarion.protocol.channels import validate_pattern

    try:
        return validate_pattern(text)
    except BadChannel as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


CURSOR_SOURCES = (
    'a cursor is the "cursor" of a line clarion subscribe prints, or of a /poll answer, '
    "or the id: of an SSE event"
)


def cursor_arg(text: str) -> str:
    """A cursor to resume from, read before connecting: a typo is a usage error then, not a
    refusal after the connection."""
    from clarion.errors import BadCursor
    from clarion.protocol.cursor import Cursor

    try:
        Cursor.decode(text)
    except BadCursor as exc:
        raise argparse.ArgumentTypeError(
            f"not a cursor: {text[:40]!r}{'…' if len(text) > 40 else ''} ({exc.message}); "
            f"{CURSOR_SOURCES}"
        ) from None
    return text


def worker_count_arg(text: str) -> int:
    from clarion.workers import worker_count

    try:
        return worker_count(text.strip().lower())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--workers takes ")) from None


def add_client_options(parser: argparse.ArgumentParser, *, api_key: bool) -> None:
    """``--url``, ``--config`` (and ``--api-key``): how a client command finds the hub."""
    parser.add_argument(
        "--url",
        help="hub base URL (default $CLARION_URL, else http://HOST:PORT of the configuration, "
        "http://127.0.0.1:8000 without one)",
    )
    parser.add_argument(
        "--config", help="clarion.toml for the default URL and key (default ./clarion.toml)"
    )
    if api_key:
        parser.add_argument(
            "--api-key",
            help="server API key (default $CLARION_API_KEY, else api_key of the config)",
        )
