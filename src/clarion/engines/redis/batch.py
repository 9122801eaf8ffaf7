"""Commands go to Redis together: one pipeline, one round trip, for all that queued meanwhile.

A burst of sessions (a thousand clients connecting at once) makes each node issue thousands of
small commands — count the connection, read history, add presence — over a few loop iterations.
Sent one by one, each costs a pooled connection, a round trip and most of the client library's
per-command overhead; queued and sent as one non-transactional pipeline on one connection, they
cost a fraction of that, and the pool stays free for the rest. Commands of one loop iteration
go together; while ``IN_FLIGHT`` pipelines are under way, those of later iterations wait and go
together in the next. A lone command (a quiet node) goes out at once, as without batching.

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
# Pipelines under way at once. While that many are, new commands wait and go together in the
# next: under a burst the round trips per command fall as the load rises (each one a write and
# a read on the node and a read on Redis, which dominate a small command's cost), while a
# quiet node's lone command goes out at once. Redis runs one command at a time anyway.
IN_FLIGHT = 2
NO_CONNECTION = "no free connection to Redis in time"


class Call:
    """One queued command; its arguments may still change until :attr:`sent`."""

    __slots__ = ("args", "at", "future", "keys", "script", "sent")

    def __init__(self, script: Any, keys: list[Any], args: list[Any]) -> None:
        self.script = script  # a registered Script, or None for a plain command
        self.keys = keys
        self.args = args
        loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = loop.create_future()
        self.at = loop.time()  # when queued: a call that waited too long fails
        self.sent = False

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
    """Queues commands; sends them as pipelines of ≤ MAX_BATCH, ≤ IN_FLIGHT at a time."""

    def __init__(self, client: Any, limit: int | None = None, timeout: float = 10.0) -> None:
        self._client = client
        # A cluster client's per-node pools fail rather than wait when full: each batch under
        # way holds one connection per node it touches, so ``limit`` (the pool size) bounds
        # them too. A command queued longer than ``timeout`` seconds fails unsent.
        self._room = IN_FLIGHT if limit is None else max(1, min(IN_FLIGHT, limit))
        self._timeout = timeout
        self._queued: list[Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None  # fails what waits too long
        self._closed = False

    async def script(self, script: Any, keys: list[Any], args: list[Any] | None = None) -> Any:
        """Run a registered script (``client.register_script``) in the next batch."""
        return await self.queue(script, keys, args or []).future

    async def command(self, *args: Any) -> Any:
        """Run a plain command (e.g. ``"ZREM", key, member``) in the next batch."""
        return await self.queue(None, [], list(args)).future

    def queue(self, script: Any, keys: list[Any], args: list[Any]) -> Call:
        """Queue a script call (``script`` None: ``args`` is a plain command) and return it;
        its result is its ``future``."""
        call = Call(script, keys, args)
        if self._closed:  # e.g. a session's cleanup after the engine closed: no new connection
            call.future.set_exception(RedisConnectionError("the redis engine is closed"))
            return call
        self._queued.append(call)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return call

    def _flush(self) -> None:
        self._scheduled = False
        while self._queued and len(self._sending) < self._room:
            calls, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
            task = asyncio.create_task(self._send(calls))
            self._sending.add(task)
            task.add_done_callback(self._sent)
        if self._queued and self._expiry is None:
            # Every pipeline is waiting on Redis: bound the wait of what queues behind them.
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_at(self._queued[0].at + self._timeout, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        late = asyncio.get_running_loop().time() - self._timeout
        kept = []
        for call in self._queued:
            if call.at > late:
                kept.append(call)
            elif not call.future.done():
                call.future.set_exception(RedisConnectionError(NO_CONNECTION))
        self._queued = kept
        if kept:
            self._flush()  # arms the next expiry, unless a pipeline has room now

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._queued and not self._scheduled:
            self._flush()  # what queued meanwhile goes now, together

    async def _send(self, calls: list[Call]) -> None:
        live = []
        for call in calls:
            call.sent = True
            if not call.future.done():  # else its caller was cancelled meanwhile
                live.append(call)
        if not live:
            return
        try:
            if len(live) == 1:
                results = [await live[0].run_alone(self._client)]
            else:
                results = await _pipeline(self._client, live)
        except Exception as exc:
            for call in live:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        except BaseException:
            for call in live:
                call.future.cancel()
            raise
        for call, result in zip(live, results, strict=True):
            if call.future.done():
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)

    async def now(self, scripts: list[tuple[Any, list[Any], list[Any]]]) -> None:
        """Run ``(script, keys, args)`` calls at once, as one pipeline (periodic refreshes);
        raises the first error."""
        for result in await _pipeline(self._client, [Call(*call) for call in scripts]):
            if isinstance(result, Exception):
                raise result

    async def close(self, timeout: float) -> None:
        """Refuse new commands; let those queued or under way finish, for at most ``timeout``."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._flush()
        while self._sending and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._sending), timeout=left)
        queued, self._queued = self._queued, []
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for call in queued:
            if not call.future.done():
                call.future.set_exception(RedisConnectionError("the redis engine is closed"))


async def _pipeline(client: Any, calls: list[Call], *, reloaded: bool = False) -> list[Any]:
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
