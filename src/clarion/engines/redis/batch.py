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

A *durable* call (a publication, with the engine's ``wait_replicas``) is answered only once
enough replicas acknowledged its write: its pipeline ends with ``WAIT replicas timeout`` on the
connection that ran it (WAIT counts the acknowledgements of that connection's own writes), and
with fewer the call fails with :class:`NotReplicated`. On a cluster each primary that ran
durable calls gets its own WAIT, after them, on the same connection; a redirected call is not
followed by the client (it would run elsewhere, unwaited) but sent again once, after the slot
map is read again. Without durable calls nothing changes: no WAIT, no round trip. Once
confirmed, a durable call's ``confirmed`` callback runs (the engine then queues the
publication's announcement, which goes with the next pipeline).

The per-session writes of a burst go further: the items queued for the same keys (one channel's
presence entries, one address's connection count) while their call waits are *merged* into that
one script call (:meth:`Batcher.join`), which handles them in call order and answers each its
own result. A session then costs its node a fraction of a command: the client library's
per-command CPU (packing, parsing, a timer per reply) and Redis' (one ``TIME``, one ``PEXPIRE``
per call, not per session) stay flat as the burst grows. Every such call touches the keys of one
slot, so it stays valid on a cluster.

Long on purpose: queueing, merging and sending (on one connection, on a cluster's shards, with
WAIT) are the one path every call takes; apart, each part would reach into the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from clarion.tasks import stop

pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:  # in C; hiredis (an install requirement of the Redis extra) has it from 2.1
    from hiredis import pack_command
except ImportError:  # pragma: no cover - an older hiredis: the client library packs
    pack_command = None

MAX_BATCH = 256  # commands per pipeline: bounds one write, one reply and one caller's wait
MAX_MERGED = 256  # items in one merged script call: bounds the time Redis spends in one script
JOIN_AGE = 1.0  # seconds an unsent merged call takes new items (it fails as its oldest waited)
# Pipelines under way at once. While that many are, new commands wait and go together in the
# next: under a burst the round trips per command fall as the load rises (each one a write and
# a read on the node and a read on Redis, which dominate a small command's cost), while a
# quiet node's lone command goes out at once. Redis runs one command at a time anyway.
IN_FLIGHT = 2
NO_CONNECTION = "no free connection to Redis in time"
CLOSED = "the redis engine is closed"
REDIRECTED = (AskError, MovedError, TryAgainError)  # the command did not run on that node

Wait = tuple[int, int]  # WAIT's arguments: replicas, timeout in ms
Confirmed = Callable[[Any], None]


class NotReplicated(RedisError):
    """A durable call's write ran on the primary, but fewer replicas than asked acknowledged it
    in time: it may be lost in a failover, so its caller is not told it succeeded."""


class Call:
    """One queued command; its arguments may still change until :attr:`sent`."""

    __slots__ = ("args", "at", "confirmed", "durable", "future", "keys", "script", "sent")

    def __init__(
        self,
        script: Any,
        keys: list[Any],
        args: list[Any],
        durable: bool = False,
        confirmed: Confirmed | None = None,
    ) -> None:
        self.script = script  # a registered Script, or None for a plain command
        self.keys = keys
        self.args = args
        self.durable = durable  # answered once the replicas acknowledged it (module doc)
        self.confirmed = confirmed  # called with a durable call's result once acknowledged
        loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = loop.create_future()
        self.at = loop.time()  # when queued: a call that waited too long fails
        self.sent = False

    def command(self) -> tuple[Any, ...]:
        if self.script is None:
            return tuple(self.args)
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)

    def queue(self, pipe: Any) -> None:
        # Not pipe.evalsha: a cluster's pipeline refuses it, though it routes this by key.
        pipe.execute_command(*self.command())

    async def run_alone(self, client: Any) -> Any:
        if self.script is None:
            return await client.execute_command(*self.args)
        return await self.script(keys=self.keys, args=self.args)

    def live(self) -> bool:
        """Someone still waits for the result (else every caller was cancelled)."""
        return not self.future.done()

    def settle(self, result: Any) -> None:
        """Hand over the result (an exception instance: the call failed)."""
        if self.future.done():
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)

    def cancel(self) -> None:
        self.future.cancel()


class Merged(Call):
    """One script call carrying the items of many callers, each with its own future.

    The script gets ``keys`` then each item's own keys, and ``args`` then each item's
    arguments; it answers a list with one result per item, in the order they joined, or one
    result (not a list) for all. With no script, ``args`` then the items' arguments are one
    plain command (e.g. ``ZREM key`` and the members).
    """

    __slots__ = ("family", "items", "waiters")

    def __init__(self, family: Any, script: Any, keys: list[Any], args: list[Any]) -> None:
        # No future of its own: the waiters are the callers'.
        self.script = script
        self.keys = keys
        self.args = args
        self.at = asyncio.get_running_loop().time()
        self.sent = False
        self.durable = False
        self.confirmed = None
        self.family = family
        self.items: list[tuple[asyncio.Future[Any], list[Any], list[Any]]] = []
        self.waiters: list[asyncio.Future[Any]] = []

    def seal(self) -> None:
        """Sent now: the items of callers cancelled meanwhile are left out, the others'
        keys and arguments appended to the call's."""
        for waiter, keys, args in self.items:
            if not waiter.done():
                self.waiters.append(waiter)
                self.keys += keys
                self.args += args
        self.items = []

    def live(self) -> bool:
        return bool(self.waiters)

    def settle(self, result: Any) -> None:
        if isinstance(result, BaseException):
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_exception(result)
            return
        if not isinstance(result, list):
            result = [result] * len(self.waiters)
        for waiter, one in zip(self.waiters, result, strict=True):
            if not waiter.done():
                waiter.set_result(one)

    def cancel(self) -> None:
        for waiter in self.waiters:
            waiter.cancel()


class Batcher:
    """Queues commands; sends them as pipelines of ≤ MAX_BATCH, ≤ IN_FLIGHT at a time."""

    def __init__(
        self,
        client: Any,
        limit: int | None = None,
        timeout: float = 10.0,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self._client = client
        # What a durable call waits for; None: nothing (durable calls are plain ones).
        self._wait: Wait | None = (replicas, _ms(replica_timeout)) if replicas > 0 else None
        # A cluster client's per-node pools fail rather than wait when full: each batch under
        # way holds one connection per node it touches, so ``limit`` (the pool size) bounds
        # them too. A command queued longer than ``timeout`` seconds fails unsent.
        self._room = IN_FLIGHT if limit is None else max(1, min(IN_FLIGHT, limit))
        self._timeout = timeout
        self._queued: list[Call] = []
        self._open: dict[Any, Merged] = {}  # family -> the unsent merged call items may join
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None  # fails what waits too long
        self._closed = False

    async def script(
        self,
        script: Any,
        keys: list[Any],
        args: list[Any] | None = None,
        durable: bool = False,
        confirmed: Confirmed | None = None,
    ) -> Any:
        """Run a registered script (``client.register_script``) in the next batch; a durable
        one is answered once the replicas asked for acknowledged its writes, and only then is
        ``confirmed`` called with its result (even if its caller has gone meanwhile)."""
        return await self.queue(script, keys, args or [], durable, confirmed).future

    async def command(self, *args: Any) -> Any:
        """Run a plain command (e.g. ``"ZREM", key, member``) in the next batch."""
        return await self.queue(None, [], list(args)).future

    def queue(
        self,
        script: Any,
        keys: list[Any],
        args: list[Any],
        durable: bool = False,
        confirmed: Confirmed | None = None,
    ) -> Call:
        """Queue a script call (``script`` None: ``args`` is a plain command) and return it;
        its result is its ``future``."""
        durable = durable and self._wait is not None
        call = Call(script, keys, args, durable, confirmed if durable else None)
        if self._closed:  # e.g. a session's cleanup after the engine closed: no new connection
            call.future.set_exception(RedisConnectionError(CLOSED))
            return call
        self._push(call)
        return call

    def _push(self, call: Call) -> None:
        self._queued.append(call)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def join(
        self,
        family: Any,
        script: Any,
        keys: list[Any],
        args: list[Any],
        item_keys: list[Any],
        item_args: list[Any],
    ) -> asyncio.Future[Any]:
        """Queue one item of a merged script call (see :class:`Merged`); its own result is
        the returned future's.

        ``family`` names the keys the call writes (one slot). The item joins the unsent call
        of its family when that is a call of the same ``script``; otherwise it starts a new
        one, which closes the family's earlier call to later items: the writes to one
        family's keys run in Redis in the order they were asked for, whatever the script.
        ``keys`` and ``args`` are the call's own, set by the item that starts it.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            waiter.set_exception(RedisConnectionError(CLOSED))
            return waiter
        call = self._open.get(family)
        if (
            call is None
            or call.sent
            or call.script is not script
            or len(call.items) >= MAX_MERGED
            or call.at + JOIN_AGE < loop.time()  # a late item must not fail early with it
        ):
            call = Merged(family, script, list(keys), list(args))
            self._open[family] = call
            self._push(call)
        call.items.append((waiter, item_keys, item_args))
        return waiter

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
            else:
                call.sent = True  # failed unsent: no item joins it any more
                if isinstance(call, Merged):
                    # Forgotten too: a family seen once, in an outage, is not kept for good.
                    if self._open.get(call.family) is call:
                        del self._open[call.family]
                    call.seal()
                call.settle(RedisConnectionError(NO_CONNECTION))
        self._queued = kept
        if kept:
            self._flush()  # arms the next expiry, unless a pipeline has room now

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._queued and not self._scheduled:
            self._flush()  # what queued meanwhile goes now, together

    async def _send(self, calls: list[Call]) -> None:
        live = []
        opened = self._open
        for call in calls:
            call.sent = True
            if isinstance(call, Merged):
                if opened.get(call.family) is call:
                    del opened[call.family]
                call.seal()
            if call.live():  # else every caller was cancelled meanwhile
                live.append(call)
        if not live:
            return
        try:
            if len(live) == 1 and not live[0].durable:
                results = [await live[0].run_alone(self._client)]
            else:
                results = await _pipeline(self._client, live, self._wait)
        except Exception as exc:
            for call in live:
                call.settle(exc)
            return
        except BaseException:
            for call in live:
                if self._closed:  # stopped by close(): the callers were not cancelled
                    call.settle(RedisConnectionError(CLOSED))
                else:
                    call.cancel()
            raise
        for call, result in zip(live, results, strict=True):
            call.settle(result)
            if call.confirmed is not None and not isinstance(result, BaseException):
                # After the caller's wake-up is scheduled: what it queues next (the next
                # publication) goes in the same pipeline as what this queues.
                call.confirmed(result)

    async def now(self, scripts: list[tuple[Any, list[Any], list[Any]]]) -> list[Any]:
        """Run ``(script, keys, args)`` calls at once, as one pipeline (periodic refreshes);
        returns their results, or raises the first error."""
        results = await _pipeline(self._client, [Call(*call) for call in scripts])
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)

    async def commands(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Run plain commands at once, as one pipeline (periodic checks); returns their raw
        replies, or raises the first error."""
        if isinstance(self._client, Redis) and pack_command is not None:
            results = await _exchange(self._client.connection_pool, commands)
        else:  # a cluster's: routed by key
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)

    async def close(self, timeout: float) -> None:
        """Refuse new commands; let those queued or under way finish, for at most ``timeout``;
        fail the others."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._flush()
        while self._sending and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._sending), timeout=left)
        queued, self._queued = self._queued, []
        self._open.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for call in queued:
            if isinstance(call, Merged):
                call.seal()
            call.settle(RedisConnectionError(CLOSED))
        # The pipelines still waiting for Redis are stopped, not left to run on after the
        # engine closed. After the queue is emptied: a pipeline that ends sends what queued.
        await stop(self._sending)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


async def _pipeline(
    client: Any, calls: list[Call], wait: Wait | None = None, *, reloaded: bool = False
) -> list[Any]:
    results: list[Any]
    if wait is not None and not any(call.durable for call in calls):
        wait = None
    if isinstance(client, Redis) and pack_command is not None:
        results = await _on_one_connection(client.connection_pool, calls, wait)
    elif wait is not None and not isinstance(client, Redis):
        results = await _on_shards(client, calls, wait)
    else:  # a cluster client routes calls; a plain one keeps a pipeline on one connection
        pipe = client.pipeline(transaction=False)
        for call in calls:
            call.queue(pipe)
        if wait is not None:
            pipe.execute_command("WAIT", *wait)
        results = await pipe.execute(raise_on_error=False)
        if wait is not None:
            results = _acknowledged(calls, results[:-1], results[-1], wait)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing and not reloaded:
        for script in {calls[i].script for i in missing}:
            await client.script_load(script.script)
        again = await _pipeline(client, [calls[i] for i in missing], wait, reloaded=True)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results


def _acknowledged(calls: list[Call], results: list[Any], acked: Any, wait: Wait) -> list[Any]:
    """The results, with those of the durable calls that ran failed when ``acked`` (WAIT's
    reply on their connection) counts fewer replicas than asked for."""
    if isinstance(acked, int) and acked >= wait[0]:
        return results
    if isinstance(acked, BaseException):
        error = NotReplicated(f"WAIT for the write's replicas failed: {acked}")
    else:
        error = NotReplicated(
            f"the write reached {acked} of the {wait[0]} replicas asked for within {wait[1]} ms"
        )
    return [
        error if call.durable and not isinstance(result, BaseException) else result
        for call, result in zip(calls, results, strict=True)
    ]


async def _on_shards(
    client: Any, calls: list[Call], wait: Wait, *, redirected: bool = False
) -> list[Any]:
    """A cluster's pipeline whose durable calls are each sent to their slot's primary and
    followed there by one WAIT (see the module's doc); the other calls are routed as usual."""
    pipe = client.pipeline(transaction=False)
    shard_of: list[str | None] = []  # per call: the primary a durable call was sent to
    shards: dict[str, Any] = {}
    unplaced: dict[int, RedisError] = {}
    for i, call in enumerate(calls):
        if not call.durable:
            shard_of.append(None)
            call.queue(pipe)
            continue
        try:
            node = client.get_node_from_key(call.keys[0])
        except RedisClusterException as exc:  # no owner known for its slot: not sent
            unplaced[i] = RedisConnectionError(str(exc))
            shard_of.append(None)
            continue
        shards[node.name] = node
        shard_of.append(node.name)
        pipe.execute_command(*call.command(), target_nodes=node)
    for node in shards.values():
        pipe.execute_command("WAIT", *wait, target_nodes=node)
    sent = [call for i, call in enumerate(calls) if i not in unplaced]
    replies = await pipe.execute(raise_on_error=False, allow_redirections=False)
    acked = dict(zip(shards, replies[len(sent) :], strict=True))
    replies = iter(replies[: len(sent)])
    results: list[Any] = []
    for i, (call, shard) in enumerate(zip(calls, shard_of, strict=True)):
        if i in unplaced:
            results.append(unplaced[i])
            continue
        result = next(replies)
        if shard is not None:
            result = _acknowledged([call], [result], acked[shard], wait)[0]
        results.append(result)
    moved = [i for i, r in enumerate(results) if isinstance(r, REDIRECTED)]
    if moved and not redirected:
        # A redirected call did not run there: read the slot map again, send them once more.
        if any(isinstance(results[i], MovedError) for i in moved):
            await client.nodes_manager.initialize()
        again = await _on_shards(client, [calls[i] for i in moved], wait, redirected=True)
        for i, result in zip(moved, again, strict=True):
            results[i] = result
    return results


async def _on_one_connection(pool: Any, calls: list[Call], wait: Wait | None = None) -> list[Any]:
    """The calls as one write and their replies in order, on one pooled connection; with
    ``wait``, followed by WAIT, whose reply decides the durable calls' results."""
    commands = [c.command() for c in calls]
    if wait is None:
        return await _exchange(pool, commands)
    results = await _exchange(pool, [*commands, ("WAIT", *wait)], wait[1] / 1000)
    return _acknowledged(calls, results[:-1], results[-1], wait)


async def _exchange(pool: Any, commands: list[tuple[Any, ...]], longer: float = 0.0) -> list[Any]:
    """The commands as one write and their replies in order, on one pooled connection.

    What the client library's non-transactional pipeline does, without its per-command
    layers (packing in Python, response callbacks, retries, observability): the batcher's
    calls are scripts and plain commands whose raw replies are what the callers want, and a
    reconnect storm sends thousands of them. An error reply is that command's result; anything
    else (a lost connection, a timeout) fails them all and closes the connection, whose
    replies would no longer match what was asked. ``longer``: seconds a command may take
    beyond the connection's timeout (WAIT answers after up to its own).
    """
    assert pack_command is not None
    deadline = None
    connection = await pool.get_connection()
    if connection.socket_timeout is not None:
        deadline = connection.socket_timeout + longer
    try:
        await connection.send_packed_command(b"".join(pack_command(c) for c in commands))
        results: list[Any] = []
        # One deadline for all the replies, not a timer per reply (the client library's own,
        # set up and torn down for each of up to MAX_BATCH replies).
        async with asyncio.timeout(deadline):
            for _ in commands:
                try:
                    results.append(await connection.read_response(timeout=math.inf))
                except ResponseError as exc:
                    results.append(exc)
    except TimeoutError:  # the deadline above, said as the client library says its own
        await connection.disconnect()
        raise RedisTimeoutError("timeout reading from Redis") from None
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    return results
