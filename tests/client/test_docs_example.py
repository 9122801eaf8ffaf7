"""The example in docs/client.md runs, as written, against a real hub."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from clarion.client import connect

from ..conftest import RunningHub, timeout

DOC = Path(__file__).parents[2] / "docs" / "client.md"


async def test_the_documented_example_runs(hub: RunningHub) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    example = blocks[0]
    assert 'URL = "http://127.0.0.1:8000"' in example
    code = example.replace("http://127.0.0.1:8000", hub.http_url)
    # A channel with a past, as a reader who did the README has: the history it shows is the
    # newest, not the oldest kept.
    async with connect(hub.http_url) as client:
        for n in range(12):
            await client.publish("chat:lobby", {"text": f"earlier {n}"})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout(30))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[:3] == [f"{n + 13} {{'text': 'hello {n}'}}" for n in range(3)]
    # Read while subscribed: its own connection is in the channel's presence.
    assert lines[3].startswith("[Member(client=") and "transport='ws'" in lines[3], lines[3]
    newest = [f"hello {n}" for n in (2, 1, 0)] + [f"earlier {n}" for n in range(11, 4, -1)]
    assert lines[4] == str([{"text": text} for text in newest])
