"""Run the Autobahn|Testsuite fuzzing client (``kosoku``) against clarion's server.

    .venv/bin/python tests/server/autobahn.py [kosoku options...]

starts an echo app on a free port and runs ``kosoku -m fuzzingclient`` against it with the given
options (default: every case but 12.* and 13.*, permessage-deflate, which the server does not
offer). HTML/JSON reports go to ``reports/clients``. Exits with kosoku's status.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

from clarion.server import Server

DEFAULT_ARGS = ["-x", "12.*", "-x", "13.*"]
MAX_MESSAGE = 16 * 1024 * 1024  # case 9.1.6 echoes a 16 MiB message


async def echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        raise RuntimeError("websocket only")
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def kosoku_path() -> str | None:
    beside = Path(sys.executable).parent / "kosoku"
    return str(beside) if beside.exists() else shutil.which("kosoku")


async def run_kosoku(port: int, args: list[str]) -> tuple[int, str]:
    """Run kosoku against 127.0.0.1:port; its exit status and output."""
    exe = kosoku_path()
    if exe is None:
        raise FileNotFoundError("kosoku is not installed: pip install kosoku")
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-m",
        "fuzzingclient",
        *args,
        f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def main(args: list[str]) -> int:
    server = Server(echo, host="127.0.0.1", port=0, max_message_bytes=MAX_MESSAGE)
    await server.start()
    try:
        status, output = await run_kosoku(server.port, args or DEFAULT_ARGS)
    finally:
        await server.shutdown(timeout=1)
    print(output, end="")
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
