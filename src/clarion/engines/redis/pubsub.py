"""The node's one pub/sub connection to Redis: subscriptions in call order, reconnect, heartbeat.

Redis pub/sub is at-most-once: a message published while this connection is down, or dropped
by Redis (output buffer limit, killed client), is gone. The link therefore reports every
(re)connection through ``on_resubscribed`` once all wanted channels are subscribed again, so
that the engine can compare each channel's stored position with the last one it saw.

Subscribe and unsubscribe calls for one channel may interleave; they are queued in call order
and go out in that order, so Redis ends in the state of the last call. The calls of one loop
iteration go out together, in one write (a stream of many channels, a burst of sessions): the
adjacent ones of one kind as one command of many channels. ``subscribe`` returns once
Redis has confirmed the subscription: from then on, every publication reaches this node (or
its loss is detectable), which is what lets the hub read history right after without a gap.

On a Redis Cluster each link holds the *shard* channels (``SSUBSCRIBE``) of one primary, one
``SSUBSCRIBE`` per channel (a command's channels must share a slot), and reports every lost
connection through ``on_lost`` so that its owner can re-read the topology: a ``MOVED`` answer
or a ``sunsubscribe`` Redis sends on its own (the slot moved away, the node is no longer a
primary) ends the connection too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from clarion.engines.redis.batch import pack_command
from clarion.engines.redis.keys import Keys
from clarion.errors import EngineUnavailable
from clarion.tasks import stop

log = logging.getLogger("clarion.engines.redis")

SUBSCRIBE_BATCH = 500  # channels per SUBSCRIBE (or UNSUBSCRIBE) command
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class PubSubLink:
    def __init__(
        self,
        keys: Keys,
        connection_factory: Callable[[], Any],
        on_message: Callable[[bytes, bytes], None],
        on_resubscribed: Callable[[list[str]], None],
        client_name: str,
        *,
        sharded: bool = False,
        control: bool = True,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._keys = keys
        self._sharded = sharded
        self._subscribe_cmd = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._control = control
        self._on_lost = on_lost
        self._factory = connection_factory
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._client_name = client_name
        self.wanted: set[str] = set()
        self._order = asyncio.Lock()  # a reconnect's batch and the queued commands, in turn
        self._queued: list[tuple[str, str]] = []  # (command, argument), in call order
        self._sender: asyncio.Task[None] | None = None  # sends what is queued, then ends
        self._conn: Any = None
        # Per channel, groups of subscribe() calls, each satisfied by one confirmation.
        self._pending: dict[str, deque[list[asyncio.Future[None]]]] = {}
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._generation = 0
        self._pings_sent = 0
        self._pongs_seen = 0
        self.last_error: BaseException | None = None

    @property
    def up(self) -> bool:
        return self._up.is_set() and not self._closed

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        self._task = asyncio.create_task(self._run(), name="clarion-redis-pubsub")
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for may lose a cancel of start()
            # (see clarion.tasks), which would then return as if nothing had cancelled it.
            async with asyncio.timeout(timeout):
                await self._up.wait()
            if self._closed:  # close() came first and woke this wait
                raise EngineUnavailable("the Redis pub/sub link was closed before it came up")
        except TimeoutError:
            await self.close()
            raise EngineUnavailable(
                f"Redis pub/sub connection did not come up within {timeout:g} s "
                f"({self.last_error or 'no answer'})"
            ) from None
        except BaseException:
            # Cancelled (or failed): the caller drops the link, and nobody else stops its task.
            await self.close()
            raise

    async def close(self) -> None:
        self._closed = True
        self._up.set()  # a start() still waiting gives up now, not at its timeout
        await stop([task for task in (self._task, self._sender) if task is not None])
        self._task = None
        self._queued.clear()
        for groups in self._pending.values():
            for group in groups:
                for fut in group:
                    fut.cancel()
        self._pending.clear()

    # ---- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, channel: str, timeout: float) -> None:
        """Subscribe and wait for Redis to confirm (raises :class:`EngineUnavailable`).

        On failure the channel stays wanted: the caller unsubscribes to undo it.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wanted.add(channel)
        self._pending.setdefault(channel, deque()).append([fut])
        self._queue(self._subscribe_cmd, self._keys.pubsub(channel))
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise EngineUnavailable(
                f"Redis did not confirm the subscription to {channel!r} within {timeout:g} s"
            ) from None

    async def unsubscribe(self, channel: str) -> None:
        self.wanted.discard(channel)
        self._queue("S" * self._sharded + "UNSUBSCRIBE", self._keys.pubsub(channel))

    async def heartbeat(self) -> None:
        """Called periodically: a PING left unanswered since the last call means a dead link."""
        conn = self._conn
        if conn is None:
            return
        if self._pongs_seen < self._pings_sent:
            log.warning("redis pub/sub connection does not answer: reconnecting")
            await conn.disconnect(nowait=True)
            return
        self._pings_sent += 1
        self._queue("PING", f"hb-{self._pings_sent}")

    def _queue(self, command: str, argument: str) -> None:
        if self._closed:
            return
        self._queued.append((command, argument))
        if self._sender is None:
            # Its first step comes after this iteration's other calls: they go with this one.
            self._sender = asyncio.get_running_loop().create_task(
                self._send_queued(), name="clarion-redis-pubsub-send"
            )

    async def _send_queued(self) -> None:
        """Send what is queued on the live connection, one write at a time; when it is down,
        the next one's batch covers it (``wanted``)."""
        try:
            while self._queued:
                async with self._order:
                    queued, self._queued = self._queued, []
                    conn = self._conn
                    if conn is None or not queued:  # down, or a reconnect's batch took them
                        continue
                    try:
                        await conn.send_packed_command(
                            self._packed(conn, queued), check_health=False
                        )
                    except Exception as exc:
                        # The reader fails on the same connection and reconnects.
                        log.debug("redis pub/sub send failed: %s", exc)
        finally:
            self._sender = None

    def _packed(self, conn: Any, queued: list[tuple[str, str]]) -> list[bytes]:
        # Adjacent (un)subscriptions as one command, except a cluster's: one slot per command.
        commands: list[list[str]] = []
        for command, argument in queued:
            last = commands[-1] if commands else None
            if (
                last is not None
                and last[0] == command
                and command.endswith("SUBSCRIBE")
                and not self._sharded
                and len(last) <= SUBSCRIBE_BATCH
            ):
                last.append(argument)
            else:
                commands.append([command, argument])
        if pack_command is None:  # pragma: no cover - an older hiredis: the client library packs
            packed: list[bytes] = conn.pack_commands(commands)
            return packed
        return [pack_command(tuple(command)) for command in commands]

    # ---- the connection ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        while not self._closed:
            conn = self._factory()
            was_up = False
            try:
                await self._open(conn)
                if self._closed:
                    # Closed during the setup, and the cancel lost in it (see clarion.tasks): the
                    # read below would wait for good.
                    return
                was_up = True
                delay = BACKOFF_MIN
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                if was_up:
                    log.warning("redis pub/sub connection lost (%s): reconnecting", exc)
                else:
                    log.debug("redis pub/sub connect failed: %s", exc)
                if self._on_lost is not None:
                    self._on_lost()
            finally:
                self._conn = None
                self._up.clear()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _open(self, conn: Any) -> None:
        await conn.connect()
        await conn.send_command("CLIENT", "SETNAME", self._client_name, check_health=False)
        await conn.read_response()
        # From here reads wait as long as the channels stay quiet; liveness is the heartbeat's.
        conn.socket_timeout = None
        async with self._order:
            # Settled before the first write, which may wait on a full socket: what is queued
            # is covered by this batch of the channels wanted, and every subscribe() waiting
            # takes the batch's one confirmation of its channel. A call made during the writes
            # then queues behind the batch, with its own command and its own confirmation.
            self._queued.clear()
            wanted = list(self.wanted)
            pending, self._pending = self._pending, {}
            for channel in wanted:
                groups = pending.pop(channel, ())
                self._pending[channel] = deque([[fut for group in groups for fut in group]])
            for groups in pending.values():  # superseded by a later unsubscribe
                for group in groups:
                    for fut in group:
                        if not fut.done():
                            fut.set_result(None)
            if self._control:
                await conn.send_command("SUBSCRIBE", self._keys.control)
            names = [self._keys.pubsub(c) for c in wanted]
            step = 1 if self._sharded else SUBSCRIBE_BATCH
            for i in range(0, len(names), step):
                await conn.send_command(self._subscribe_cmd, *names[i : i + step])
            self._generation += 1
            # Answered after every SUBSCRIBE above has taken effect.
            await conn.send_command("PING", f"resync-{self._generation}")
            self._pings_sent = self._pongs_seen = 0
            self._conn = conn

    async def _read(self, conn: Any) -> None:
        while True:
            msg = await conn.read_response()
            if isinstance(msg, bytes):  # a PING's answer before any subscription
                self._pong(msg)
                continue
            kind = msg[0]
            if kind == b"message" or kind == b"smessage":
                self._on_message(msg[1], msg[2])
            elif kind == b"subscribe" or kind == b"ssubscribe":
                self._confirmed(msg[1])
            elif kind == b"pong":
                self._pong(msg[1])
            elif kind == b"sunsubscribe" and self._keys.channel_of(msg[1]) in self.wanted:
                # Redis dropped a channel we still want: its slot lives elsewhere now.
                raise ConnectionError(f"Redis moved {msg[1].decode()!r} away from this node")

    def _confirmed(self, pubsub_channel: bytes) -> None:
        channel = self._keys.channel_of(pubsub_channel)
        if channel is None:
            return
        groups = self._pending.get(channel)
        if not groups:
            return
        for fut in groups.popleft():
            if not fut.done():
                fut.set_result(None)
        if not groups:
            del self._pending[channel]

    def _pong(self, data: bytes) -> None:
        if data.startswith(b"hb-"):
            self._pongs_seen = int(data[3:])
        elif data == f"resync-{self._generation}".encode() and not self._up.is_set():
            self._up.set()
            self._on_resubscribed(sorted(self.wanted))
