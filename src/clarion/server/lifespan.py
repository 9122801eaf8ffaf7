"""The ASGI ``lifespan`` protocol: startup before the first connection, shutdown at the end.

An app that does not speak lifespan (raises or returns before answering ``lifespan.startup``)
is served anyway, as the ASGI spec asks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from clarion.asgitypes import ASGIApp, Message
from clarion.server.config import ASGI_VERSION

log = logging.getLogger("clarion.server.lifespan")

STARTUP_FAILED_GRACE = 1.0  # seconds an app that answered startup.failed has to end


class LifespanFailed(RuntimeError):
    """The app answered ``lifespan.startup.failed`` (or ``shutdown.failed``)."""


class Lifespan:
    """Runs the app's lifespan task and waits for its answers."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self._app = app
        self._state = state
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._answers: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.supported = True
        self._startup_error: Exception | None = None

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._main(), name="clarion-lifespan")
        answer = await self._ask({"type": "lifespan.startup"})
        if answer is None:
            return
        if answer["type"] == "lifespan.startup.failed":
            # An app may also raise what failed (Starlette does, right after answering): give
            # it a moment to, and chain it, so that callers can word the error themselves.
            await asyncio.wait({self._task}, timeout=STARTUP_FAILED_GRACE)
            message = answer.get("message") or "lifespan startup failed"
            raise LifespanFailed(message) from self._startup_error

    async def shutdown(self, timeout: float) -> None:
        if not self.supported or self._task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                answer = await self._ask({"type": "lifespan.shutdown"})
        except TimeoutError:
            log.warning("lifespan shutdown did not finish within %.1f s", timeout)
            self._task.cancel()
            return
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: %s", answer.get("message", ""))

    async def _ask(self, event: Message) -> Message | None:
        """Send ``event``; the app's answer, or None once the app has ended."""
        assert self._task is not None
        await self._events.put(event)
        answer = asyncio.ensure_future(self._answers.get())
        await asyncio.wait({answer, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        answer.cancel()
        return None

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self._state}
        started = failed = False

        async def receive() -> Message:
            return await self._events.get()

        async def send(message: Message) -> None:
            nonlocal started, failed
            if message["type"] == "lifespan.startup.complete":
                started = True
            elif message["type"] == "lifespan.startup.failed":
                failed = True  # startup() raises it; the app may raise too (Starlette does)
            await self._answers.put(message)

        try:
            await self._app(scope, receive, send)
        except Exception as exc:
            if started:
                log.exception("exception in ASGI lifespan")
            elif failed:
                self._startup_error = exc
            else:
                # The usual way an app says it has no lifespan support.
                self.supported = False
                log.info("ASGI lifespan unsupported by the app; continuing without it")
        else:
            if not started:
                self.supported = False
