"""Subscribe churners, run as a process of their own (``python -m tests.security.churn URL N
SECONDS``, then a line on stdin to start): what the tests measure is what churn costs the hub,
and clients of the test's own process would share the hub's event loop, their work counted as
the hub's.

Each churner is one anonymous ``/ws`` connection sending subscribe/unsubscribe back to back,
never waiting for a reply, until it is closed or the seconds pass. Prints one JSON list:
``[[{outcome: count}, close code], ...]``, one entry per churner.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import websockets
from websockets.exceptions import ConnectionClosed

CHANNEL = "chat:watch"


def churn_commands(n: int, channel: str = CHANNEL) -> list[str]:
    """``n`` commands: subscribe, unsubscribe, subscribe... to ``channel``."""
    ops = ("subscribe", "unsubscribe")
    return [json.dumps({"id": i, "op": ops[i % 2], "channel": channel}) for i in range(n)]


async def churner(url: str, seconds: float) -> tuple[Counter[str], int | None, float]:
    """One connection churning until closed or ``seconds`` pass: its replies by outcome, its
    close code and how long it was open (what its budget refilled for)."""
    outcomes: Counter[str] = Counter()
    opened = time.monotonic()
    async with websockets.connect(url, subprotocols=["clarion.v1"], open_timeout=30) as conn:  # type: ignore[list-item]

        async def read() -> None:
            async for raw in conn:
                msg = json.loads(raw)
                if "id" in msg:
                    outcomes["ok" if "ok" in msg else msg["error"]["code"]] += 1

        reader = asyncio.create_task(read())
        deadline = time.monotonic() + seconds
        batch = churn_commands(100)
        try:
            while time.monotonic() < deadline and not reader.done():
                for command in batch:
                    await conn.send(command)
                await asyncio.sleep(0.005)
        except ConnectionClosed:
            pass
        try:
            await asyncio.wait_for(reader, 30)
        except TimeoutError:
            reader.cancel()
        except ConnectionClosed:
            pass
        return outcomes, conn.close_code, time.monotonic() - opened


async def main(url: str, count: int, seconds: float) -> None:
    # Started early, the process says it is ready and waits for a line on stdin: its start-up
    # (the interpreter, the imports) must not fall in the window a test measures.
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    results = await asyncio.gather(*(churner(url, seconds) for _ in range(count)))
    print(json.dumps([[dict(outcomes), code, open_for] for outcomes, code, open_for in results]))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
