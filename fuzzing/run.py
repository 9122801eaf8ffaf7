"""Coverage-guided fuzzing of clarion's inbound parsers with atheris (libFuzzer).

    pip install atheris
    python fuzzing/run.py commands -- -max_total_time=600
    python fuzzing/run.py cursors|channels|patterns|tokens|wsframes -- -runs=1000000

The oracle is the same as the bounded hypothesis run in tests/fuzz: each input is accepted or
rejected with a documented ClarionError code; any other exception is a crash that libFuzzer
reports with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris

from clarion.core.auth import Authenticator
from clarion.errors import ClarionError
from clarion.protocol.channels import matches, validate_channel, validate_pattern
from clarion.protocol.cursor import Cursor
from clarion.protocol.messages import parse_command
from clarion.protocol.wsreader import FrameReader
from clarion.settings import Settings

# Coverage feedback for everything loaded so far (clarion's parsers included).
atheris.instrument_all()

DOCUMENTED = {
    "bad_request", "unknown_op", "bad_channel", "bad_cursor", "unauthorized", "token_expired",
}  # fmt: skip
AUTH = Authenticator(Settings(token_secret="fuzz-secret-fuzz-secret-fuzz-secret"))


def _text(data: bytes) -> str:
    return atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))


def _check(fn, arg) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(arg)
    except ClarionError as exc:
        if exc.code not in DOCUMENTED:
            raise


TARGETS = {
    "commands": lambda data: _check(parse_command, data),
    "cursors": lambda data: _check(Cursor.decode, _text(data)),
    "channels": lambda data: _check(validate_channel, _text(data)),
    "patterns": lambda data: _check(
        lambda t: matches(validate_pattern(t), t.replace("*", "x")), _text(data)
    ),
    "tokens": lambda data: _check(AUTH.verify, _text(data)),
    # Client frames: events (a close at most, last), never an exception.
    "wsframes": lambda data: FrameReader(1 << 16).receive_data(data),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: run.py {{{'|'.join(TARGETS)}}} [-- libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    atheris.Setup([sys.argv[0], *extra], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
