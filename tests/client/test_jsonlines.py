"""``clarion subscribe`` output: one JSON line per item, as the hub pushes them."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from clarion.client import Disconnected, run_subscribe
from clarion.protocol.codes import CloseCode

from ..conftest import RunningHub, timeout
from .conftest import session_of


async def test_lines_until_the_hub_says_stop(hub: RunningHub) -> None:
    first = await hub.publish("chat:lobby", {"n": 1})
    await hub.publish("chat:lobby", {"n": 2})
    out = io.StringIO()
    task = asyncio.create_task(
        run_subscribe(hub.http_url, "chat:lobby", since=first["cursor"], out=out)
    )
    session = await session_of(hub, "ws", "chat:lobby")
    async with asyncio.timeout(timeout(5)):
        while out.getvalue().count("\n") < 1:
            await asyncio.sleep(0.01)
    session.close(CloseCode.DISCONNECTED)
    with pytest.raises(Disconnected):
        await asyncio.wait_for(task, timeout(5))
    (line,) = out.getvalue().splitlines()
    obj = json.loads(line)
    assert (obj["data"], obj["offset"], obj["channel"]) == ({"n": 2}, 2, "chat:lobby")
    assert isinstance(obj["cursor"], str)
