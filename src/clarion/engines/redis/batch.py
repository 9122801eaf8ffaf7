"""Commands made in one event-loop iteration go to Redis together: one pipeline, one round trip.

A burst of sessions (a thousand clients connecting at once) makes each node issue thousands of
small commands — count the connection, read history, add presence — in a few loop iterations.
Sent one by one, each costs a pooled connection, a round trip and most of the client library's
per-command overhead; queued for the iteration and sent as one non-transactional pipeline on
one connection, they cost a fraction of that, and the pool stays free for the rest. A lone
command (a quiet node) goes out at once, as it would without batching.

Each command still succeeds or fails on its own: a script error fails its caller only; a lost
connection fails every caller of that pipeline (as :class:`~redis.exceptions.RedisError`), and
none is retried. Scripts are sent by SHA; those Redis no longer holds (it restarted) are loaded
and run again — a script Redis did not know has not run.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

MAX_BATCH = 256  # commands per pipeline: bounds one write, one reply and one caller's wait


class _Call:
    __slots__ = ("args", "future", "keys", "script")

    def __init__(self, script: Any, keys: list[Any], args: list[Any]) -> None:
        self.script = script  # a registered Script, or None for a plain command
        self.keys = keys
        self.args = args
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def queue(self, pipe: Any) -> None:
        if self.script is None:
            pipe.execute_command(*self.args)
        else:
            # Not pipe.evalsha: a cluster's pipeline refuses it, though it routes this by key.
            pipe.execute_command("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)

    async def run_alone(self, client: Any) -> Any:
        if self.script is None:
            return await client.execute_command(*self.args)
        return await self.script(keys=self.keys, args=self.args)


class Batcher:
    """Queues commands for the current loop iteration; sends them as pipelines of ≤ MAX_BATCH."""

    def __init__(self, client: Any, limit: int | None = None, timeout: float = 10.0) -> None:
        self._client = client
        # A cluster client's per-node pools fail rather than wait when full: with ``limit``,
        # at most that many batches are under way (each holds one connection per node it
        # touches) and the rest wait for one, ``timeout`` seconds at most.
        self._slots = asyncio.Semaphore(limit) if limit is not None else None
        self._timeout = timeout
        self._queued: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._closed = False

    async def script(self, script: Any, keys: list[Any], args: list[Any] | None = None) -> Any:
        """Run a registered script (``client.register_script``) in the next batch."""
        return await self._add(_Call(script, keys, args or []))

    async def command(self, *args: Any) -> Any:
        """Run a plain command (e.g. ``"ZREM", key, member``) in the next batch."""
        return await self._add(_Call(None, [], list(args)))

    def _add(self, call: _Call) -> asyncio.Future[Any]:
        if self._closed:  # e.g. a session's cleanup after the engine closed: no new connection
            call.future.set_exception(RedisConnectionError("the redis engine is closed"))
            return call.future
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append(call)
        return call.future

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        for i in range(0, len(queued), MAX_BATCH):
            task = asyncio.create_task(self._send(queued[i : i + MAX_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        calls = [c for c in calls if not c.future.done()]  # callers cancelled meanwhile
        if not calls:
            return
        try:
            if self._slots is not None:
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._slots.acquire()
                except TimeoutError:
                    raise RedisConnectionError("no free connection to Redis in time") from None
            try:
                if len(calls) == 1:
                    results = [await calls[0].run_alone(self._client)]
                else:
                    results = await self._pipeline(calls)
            finally:
                if self._slots is not None:
                    self._slots.release()
        except Exception as exc:
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        except BaseException:
            for call in calls:
                call.future.cancel()
            raise
        for call, result in zip(calls, results, strict=True):
            if call.future.done():
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        return await _pipeline(self._client, calls)

    async def now(self, scripts: list[tuple[Any, list[Any], list[Any]]]) -> None:
        """Run ``(script, keys, args)`` calls at once, as one pipeline (periodic refreshes);
        raises the first error."""
        for result in await _pipeline(self._client, [_Call(*call) for call in scripts]):
            if isinstance(result, Exception):
                raise result

    async def close(self, timeout: float) -> None:
        """Refuse new commands; let those queued or under way finish, for at most ``timeout``."""
        self._closed = True
        if self._queued:
            self._flush()
        if self._sending:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._sending), timeout=timeout)


async def _pipeline(client: Any, calls: list[_Call], *, reloaded: bool = False) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for call in calls:
        call.queue(pipe)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing and not reloaded:
        for script in {calls[i].script for i in missing}:
            await client.script_load(script.script)
        again = await _pipeline(client, [calls[i] for i in missing], reloaded=True)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results
