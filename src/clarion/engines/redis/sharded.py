"""Pub/sub on a Redis Cluster: one link per primary for its shard channels, one for control.

Sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``, Redis >= 7) keeps a publication within the shard
that owns its channel's slot, so the node subscribes to each channel on that channel's
primary. The control channel stays classic pub/sub, which a cluster carries to every node:
one link to any primary holds it.

When a primary's link is lost (the node died, a ``MOVED`` answer, Redis dropped a channel
because its slot moved), the topology is read again and every channel whose slot now belongs
to another primary moves to that primary's link. Publications made meanwhile are not lost
for good: once a moved channel is subscribed again the engine compares its stored position
with the last one seen and reads the difference back from the stream (or, if the new primary
never received writes the old one acknowledged, the next history read starts a new epoch and
subscribers get a reset).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.crc import key_slot

from clarion.engines.redis.connect import RedisTarget
from clarion.engines.redis.keys import Keys
from clarion.engines.redis.pubsub import PubSubLink
from clarion.errors import EngineUnavailable
from clarion.tasks import stop

log = logging.getLogger("clarion.engines.redis")

REHOME_RETRY = 0.25  # seconds between attempts to place channels after a topology change


class ShardedLink:
    """The interface of :class:`PubSubLink`, over every primary of a cluster."""

    def __init__(
        self,
        keys: Keys,
        target: RedisTarget,
        client: Any,
        on_message: Callable[[bytes, bytes], None],
        on_resubscribed: Callable[[list[str]], None],
        client_name: str,
    ) -> None:
        self._keys = keys
        self._target = target
        self._client = client  # a RedisCluster: its view of the slots
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._client_name = client_name
        self._links: dict[str, PubSubLink] = {}  # primary "host:port" -> its link
        self._home: dict[str, str] = {}  # channel -> primary it is subscribed on
        self._next = 0  # which primary the control link tries next
        self._rehoming: asyncio.Task[None] | None = None
        self._closed = False
        self._control = PubSubLink(
            keys,
            self._control_connection,
            on_message,
            on_resubscribed,
            client_name,
            on_lost=self._topology_changed,
        )

    @property
    def up(self) -> bool:
        return self._control.up

    @property
    def wanted(self) -> set[str]:
        return set(self._home)

    async def start(self, timeout: float) -> None:
        await self._control.start(timeout)

    async def close(self) -> None:
        self._closed = True
        if self._rehoming is not None:
            await stop([self._rehoming])
        links = [self._control, *self._links.values()]
        self._links.clear()
        # Together: each may wait (bounded) for a task that lost its cancel.
        await asyncio.gather(*(link.close() for link in links))

    async def heartbeat(self) -> None:
        for link in [self._control, *self._links.values()]:
            await link.heartbeat()

    # ---- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, channel: str, timeout: float) -> None:
        owner = self._owner(channel)
        self._home[channel] = owner
        link = await self._link(owner, timeout)
        await link.subscribe(channel, timeout)

    async def unsubscribe(self, channel: str) -> None:
        owner = self._home.pop(channel, None)
        link = self._links.get(owner) if owner is not None else None
        if link is not None:
            await link.unsubscribe(channel)

    def _owner(self, channel: str) -> str:
        slot = key_slot(self._keys.pubsub(channel).encode())
        node = self._client.nodes_manager.get_node_from_slot(slot)
        return str(node.name)

    async def _link(self, name: str, timeout: float) -> PubSubLink:
        link = self._links.get(name)
        if link is None:
            if self._closed:
                # close() has taken the links it stops: one started now would run on.
                raise EngineUnavailable("the redis engine is closed")
            host, _, port = name.rpartition(":")
            link = self._links[name] = PubSubLink(
                self._keys,
                lambda: self._target.connection(host, int(port)),
                self._on_message,
                self._on_resubscribed,
                self._client_name,
                sharded=True,
                control=False,
                on_lost=self._topology_changed,
            )
            try:
                await link.start(timeout)
            except BaseException:
                if self._links.get(name) is link:
                    del self._links[name]
                raise
        return link

    def _control_connection(self) -> Any:
        primaries = self._client.get_primaries() or [
            type("Node", (), {"host": h, "port": p})() for h, p in self._target.cluster
        ]
        node = primaries[self._next % len(primaries)]
        self._next += 1
        return self._target.connection(node.host, node.port)

    # ---- topology changes -------------------------------------------------------------------

    def _topology_changed(self) -> None:
        if self._closed or (self._rehoming is not None and not self._rehoming.done()):
            return
        self._rehoming = asyncio.create_task(self._rehome(), name="clarion-redis-rehome")

    async def _rehome(self) -> None:
        """Re-read the slots; move every channel to its primary's link, until all are placed."""
        while not self._closed:
            try:
                await self._client.nodes_manager.initialize()
                moved = await self._move()
            except Exception as exc:
                log.debug("redis cluster topology not settled yet: %s", exc)
            else:
                if not moved:
                    return
            await asyncio.sleep(REHOME_RETRY)

    async def _move(self) -> bool:
        """Move misplaced channels; whether some are still to place (their primary is down)."""
        misplaced = [(c, h) for c, h in self._home.items() if self._owner(c) != h]
        moved: list[str] = []
        left = False
        for channel, old in misplaced:
            new = self._owner(channel)
            if old in self._links:
                self._links[old].wanted.discard(channel)  # down: nothing to send
            try:
                link = await self._link(new, 5.0)
                await link.subscribe(channel, 5.0)
            except EngineUnavailable:
                left = True  # it stays homed on the old one: the next round tries again
                continue
            home = self._home.get(channel)
            if home != old:
                # Unsubscribed meanwhile: undone here, unless subscribed again meanwhile, on
                # this same link (a second SSUBSCRIBE of one connection is the same one).
                if home != new:
                    await link.unsubscribe(channel)
                continue
            self._home[channel] = new
            moved.append(channel)
        for name, link in list(self._links.items()):
            if not link.wanted and name not in self._home.values():
                del self._links[name]
                await link.close()
        if moved:
            log.info("redis cluster: %d channel(s) moved to their new primaries", len(moved))
            self._on_resubscribed(moved)
        return left
