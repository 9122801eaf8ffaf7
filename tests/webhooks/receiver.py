"""A real webhook receiver for tests: a small HTTP/1.1 server on a loopback port.

Every request is verified with the ``standardwebhooks`` package and recorded; a behaviour
function decides the answer to each (a status, a redirect, silence, or a dropped connection).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from ..conftest import timeout
from ..support.loopback import LoopbackServer


@dataclass(frozen=True)
class Answer:
    status: int = 200
    location: str | None = None
    hang: bool = False  # never answer
    drop: bool = False  # close the connection without answering (a lost 2xx, seen from the hub)
    retry_after: str | None = None  # a Retry-After header
    endless: bool = False  # the status and headers, then a body that never ends
    cut: bool = False  # the status and headers, then part of the body, then the connection closed


OK = Answer()


@dataclass
class Received:
    msg_id: str
    headers: dict[str, str]
    body: bytes
    payload: Any
    verified: bool
    answer: Answer
    at: float = field(default_factory=time.monotonic)

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.answer.status < 300 and not (self.answer.hang or self.answer.drop)


class Receiver(LoopbackServer):
    def __init__(self, behave: Callable[[Received], Answer] | None = None) -> None:
        super().__init__()
        self.behave = behave or (lambda r: OK)
        self.secret: str | None = None
        self.received: list[Received] = []
        self.changed = asyncio.Condition()

    # ---- what arrived ------------------------------------------------------------------------

    @property
    def acknowledged(self) -> list[Received]:
        return [r for r in self.received if r.acknowledged]

    async def wait_until(self, predicate: Callable[[], bool], wait: float = 10) -> None:
        async def until() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        await asyncio.wait_for(until(), timeout(wait))

    async def wait_acknowledged(self, count: int, wait: float = 10) -> list[Received]:
        await self.wait_until(lambda: len(self.acknowledged) >= count, wait)
        return self.acknowledged

    # ---- serving -----------------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                answer = await self._record(headers, body)
                if answer.hang:
                    await asyncio.Event().wait()
                if answer.drop:
                    return
                if answer.endless or answer.cut:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok")
                    await writer.drain()
                    if answer.cut:
                        return
                    await asyncio.Event().wait()
                extra = f"location: {answer.location}\r\n" if answer.location else ""
                if answer.retry_after is not None:
                    extra += f"retry-after: {answer.retry_after}\r\n"
                writer.write(
                    f"HTTP/1.1 {answer.status} X\r\ncontent-length: 2\r\n{extra}\r\nok".encode()
                )
                await writer.drain()
        finally:
            writer.close()

    async def _record(self, headers: dict[str, str], body: bytes) -> Answer:
        verified = False
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        received = Received(headers.get("webhook-id", ""), headers, body, payload, verified, OK)
        received.answer = self.behave(received) if verified else Answer(status=400)
        async with self.changed:
            self.received.append(received)
            self.changed.notify_all()
        return received.answer
