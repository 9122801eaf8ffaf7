"""Run the Autobahn|Testsuite fuzzing client (``kosoku``) against clarion's server.

    .venv/bin/python tests/server/autobahn.py [kosoku options...]

starts an echo app on a free port and runs ``kosoku -m fuzzingclient`` against it with the given
options (default: every case; 12.* and 13.*, permessage-deflate, take most of the time).
HTML/JSON reports go to ``reports/clients``. Exits with kosoku's status.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any

from clarion.asgitypes import fast_websocket
from clarion.protocol import deflate
from clarion.protocol.frames import OP_BINARY, OP_TEXT, RSV1, frame_header
from clarion.server import Server

DEFAULT_ARGS: list[str] = []
MAX_MESSAGE = 16 * 1024 * 1024  # case 9.1.6 echoes a 16 MiB message


async def echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        raise RuntimeError("websocket only")
    await receive()
    await send({"type": "websocket.accept"})
    conn = fast_websocket(scope)
    bits = 0 if conn is None else conn.deflate_bits
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if bits:
            data = message["bytes"] if text is None else text.encode()
            if deflate.compress(data, bits) is None:
                # The server sends short and incompressible messages uncompressed, as RFC 7692
                # allows; kosoku 0.1.0 errs on those in a compressed session ("Strings must be
                # encoded before hashing"). Here they go compressed, whatever it costs.
                assert conn is not None
                conn.push(_compressed(data, OP_BINARY if text is None else OP_TEXT, bits))
                continue
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def _compressed(data: bytes, opcode: int, bits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    body = (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    return frame_header(len(body), opcode | RSV1) + body


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
