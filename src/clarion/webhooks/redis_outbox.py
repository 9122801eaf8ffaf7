"""The outbox of the Redis engine: one outbox shared by every node, one deliverer per endpoint.

Its keys, their layout and the scripts that change them are in
:mod:`clarion.webhooks.redis_outbox_store`.

The lease (``SET lease <node> NX PX ttl``) says which node delivers the endpoint; it is renewed
while the node lives and released when it stops, and a crashed node's lease lapses after
``ttl`` — the engine URL's ``presence_ttl``, the time any claim of a vanished node outlives it.

Enqueueing never blocks the event loop: what the hub's listeners enqueue in one loop
iteration goes to Redis as one pipeline, written by a task while the next iteration's
deliveries gather behind it, and each publish call waits for its own deliveries to be stored —
so that a publication whose publish call has answered survives the node being killed, and is
queued before one made afterwards through another node. A failed write is tried again
(``WRITE_TRIES``, backing off); when that is spent the publish call is answered all the same
and the loss is logged.

Long on purpose: it is the whole ``Outbox`` protocol on Redis (intake, delivery, dead letters,
endpoints, leases) over one shared state; the keys and scripts are the store module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import NoScriptError, RedisError

from clarion.protocol.jsonkeep import dumps_to_keep
from clarion.tasks import stop
from clarion.webhooks.endpoint import Delivery, Endpoint
from clarion.webhooks.kinds import PUBLICATION
from clarion.webhooks.redis_outbox_store import (
    BURY,
    CLAIM,
    DELIVERED,
    ENDPOINT_KEYS,
    ENQUEUE,
    HEAD,
    RELEASE,
    UNBURY,
    UPDATE,
    as_int,
    as_text,
    decode_delivery,
    encode_delivery,
)
from clarion.webhooks.signing import event_msg_id

if TYPE_CHECKING:
    from clarion.engines.redis.engine import RedisEngine

log = logging.getLogger("clarion.webhooks")

OPEN_TIMEOUT = 5.0  # seconds to reach Redis when the outbox opens
WRITE_TRIES = 5  # a failed enqueue pipeline is tried again this many times, backing off
BURY_KEYS = ("q", "d", "dseq", "dead", "bytes", "dbytes")
WRITE_BACKOFF = 0.1  # seconds before the first retry; doubles


# KEYS: the lifecycle event counter; ARGV: events to number, the floor of a counter started
_EVENT_VERSIONS = """
local n = tonumber(ARGV[1])
local top = redis.call('INCRBY', KEYS[1], n)
if top == n then
  top = redis.call('INCRBY', KEYS[1], ARGV[2])
end
return top
"""


@dataclass(slots=True)
class _Pending:
    deliveries: list[Delivery]
    event: bool
    done: asyncio.Future[list[Delivery]]
    versioned: bool = False


class RedisOutbox:
    """The :class:`~clarion.webhooks.outbox.Outbox` of the Redis engine, shared by all nodes."""

    shared = True

    def __init__(
        self,
        engine: RedisEngine,
        *,
        max_dead_letters: int = 10_000,
        max_dead_letter_bytes: int = 1 << 28,
    ) -> None:
        # A client of its own, made like the engine's (same URL, Sentinel, options): the engine
        # closes its client before the webhook service stops, and stopping still needs Redis
        # to write the last deliveries and release this node's leases.
        self._target = engine.target
        self.prefix = engine.keys.prefix
        self.node = engine.node_id
        self.lease_ttl = engine.presence_ttl
        # How often a node that does not hold a lease looks again, and how often the holder
        # looks for deliveries queued by other nodes.
        self.poll_interval: float | None = min(1.0, self.lease_ttl / 4)
        self._keep_dead = max_dead_letters
        self._keep_dead_bytes = max_dead_letter_bytes
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._held: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None
        # Told which endpoints have new deliveries once they are in Redis (wakes their workers).
        self.on_written: Callable[[set[str]], None] | None = None
        # Told when another node announces a change of the endpoint registry.
        self.on_registry_changed: Callable[[], None] | None = None
        self.on_dead_counted: Callable[[str, int], None] | None = None  # counts are read instead

    # ---- keys ----------------------------------------------------------------------------------

    def _global(self, name: str) -> str:
        return f"{self.prefix}:{{wh}}:{name}"

    def _key(self, endpoint_id: str, name: str) -> str:
        return f"{self.prefix}:{{wh:{endpoint_id}}}:{name}"

    # ---- lifecycle -------------------------------------------------------------------------

    def in_use(self) -> bool:
        return True  # other nodes may register endpoints at any time

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("the webhook outbox is not open")
        return self._client

    async def open(self) -> None:
        client = self._target.client()
        for name, source in (
            ("enqueue", ENQUEUE),
            ("bury", BURY),
            ("unbury", UNBURY),
            ("update", UPDATE),
            ("delivered", DELIVERED),
            ("head", HEAD),
            ("claim", CLAIM),
            ("release", RELEASE),
        ):
            self._scripts[name] = client.register_script(source)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await client.ping()
        except BaseException:
            with contextlib.suppress(Exception):
                await client.aclose()
            raise
        self._client = client
        self._renewer = asyncio.create_task(self._renew_forever(), name="clarion-webhook-leases")
        self._watcher = asyncio.create_task(self._watch_forever(), name="clarion-webhook-watch")

    @property
    def _announce(self) -> str:
        return f"{self.prefix}.wh.registry"

    async def _watch_forever(self) -> None:
        # Best effort: a missed announcement is caught by the service's periodic look.
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self._announce)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is not None and self.on_registry_changed is not None:
                        self.on_registry_changed()
            except (RedisError, OSError) as exc:
                log.debug("webhook registry announcements interrupted: %s", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Wait until every delivery handed to :meth:`enqueue` so far is written (or given up)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def aclose(self) -> None:
        """Write what is pending, give up this node's leases, and disconnect."""
        if self._client is None:
            return
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for may lose a cancel of aclose()
        # itself (see clarion.tasks).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(OPEN_TIMEOUT):
                await self.flush()
        # Bounded, re-cancelling: both await redis-py, which may lose a cancel.
        await stop(task for task in (self._renewer, self._watcher) if task is not None)
        self._renewer = self._watcher = None
        for endpoint_id in list(self._held):
            with contextlib.suppress(Exception):
                await self.release(endpoint_id)
        client, self._client = self._client, None
        with contextlib.suppress(Exception):
            await client.aclose()

    def close(self) -> None:
        """Synchronous close for callers that cannot await: leases lapse after their TTL."""
        for task in (self._renewer, self._watcher):
            if task is not None:
                task.cancel()
        self._renewer = self._watcher = None
        self._client = None

    # ---- enqueueing ------------------------------------------------------------------------

    def enqueue(
        self, deliveries: list[Delivery], event_version: int | None = None
    ) -> asyncio.Future[list[Delivery]]:
        """Queue the deliveries for the writer's next pipeline; all are returned (a message id
        already pending is skipped in Redis). Lifecycle events get their version from Redis as
        they are stored, so versions grow across all nodes."""
        self.client  # noqa: B018 - raises when closed
        loop = asyncio.get_running_loop()
        pending = _Pending(deliveries, event_version is not None, loop.create_future())
        self._pending.append(pending)
        if self._writer is None or self._writer.done():
            # Starts at the next iteration: whatever else this one enqueues joins the batch.
            self._writer = loop.create_task(self._write_pending(), name="clarion-webhook-writer")
        return pending.done

    def _commands(self, batch: list[_Pending]) -> list[tuple[str, list[str], list[Any], str]]:
        """``(script, keys, args, endpoint or "")`` for each delivery, in order."""
        out: list[tuple[str, list[str], list[Any], str]] = []
        for pending in batch:
            for d in pending.deliveries:
                if d.dead_at is None:
                    keys = [self._key(d.endpoint, n) for n in ("seq", "q", "d", "bytes")]
                    out.append(("enqueue", keys, [d.msg_id, encode_delivery(d)], d.endpoint))
                else:
                    keys = [self._key(d.endpoint, n) for n in BURY_KEYS]
                    bounds = [self._keep_dead, self._keep_dead_bytes]
                    out.append(("bury", keys, ["", encode_delivery(d), *bounds], ""))
        return out

    def _unversioned(self, batch: list[_Pending]) -> list[_Pending]:
        return [p for p in batch if p.event and not p.versioned and p.deliveries]

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            for attempt in range(WRITE_TRIES):
                try:
                    written = await self._write(batch)
                except (RedisError, OSError) as exc:
                    if attempt == WRITE_TRIES - 1 or self._client is None:
                        _settle(batch, exc)
                        break
                    await asyncio.sleep(WRITE_BACKOFF * 2**attempt)
                except BaseException as exc:
                    _settle(batch, exc)
                    raise
                else:
                    _settle(batch, None)
                    if written and self.on_written is not None:
                        self.on_written(written)
                    break

    async def _write(self, batch: list[_Pending]) -> set[str]:
        client = self.client
        events = self._unversioned(batch)
        if events:
            # A counter Redis no longer has (new, or lost with Redis's data) starts past the
            # clock in microseconds: versions, and the event ids made of them, never come
            # back, and receivers deduplicate on the ids.
            floor = time.time_ns() // 1000
            top = int(
                await client.eval(_EVENT_VERSIONS, 1, self._global("events"), len(events), floor)
            )
            for version, pending in enumerate(events, top - len(events) + 1):
                _set_version(pending.deliveries, version)
                pending.versioned = True
        commands = self._commands(batch)
        results = await self._run_scripts(client, commands)
        return {c[3] for c, seq in zip(commands, results, strict=True) if c[3] and seq}

    async def _run_scripts(
        self, client: Any, commands: list[tuple[str, list[str], list[Any], str]]
    ) -> list[Any]:
        """One pipeline of ``EVALSHA``: one round trip (a pipeline of registered scripts would
        first ask Redis whether it has them, every time). Scripts Redis lost (a restart) did
        not run: they are loaded and those commands alone run again, in order."""
        pipe = client.pipeline(transaction=False)
        for name, keys, args, _ in commands:
            # Not pipe.evalsha: a cluster's pipeline refuses it, though it routes this by key.
            pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for name in {commands[i][0] for i in missing}:
                await client.script_load(self._scripts[name].script)
            pipe = client.pipeline(transaction=False)
            for i in missing:
                name, keys, args, _ = commands[i]
                pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
            for i, result in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    # ---- deliveries ------------------------------------------------------------------------

    async def head(self, endpoint_id: str, limit: int) -> list[Delivery]:
        keys = [self._key(endpoint_id, "q"), self._key(endpoint_id, "d")]
        flat = await self._scripts["head"](keys=keys, args=[limit], client=self.client)
        out = []
        for i in range(0, len(flat), 2):
            if flat[i + 1]:
                d = decode_delivery(endpoint_id, int(float(flat[i])), flat[i + 1])
                d.dead_at = None
                out.append(d)
        return out

    async def delivered(self, delivery: Delivery, endpoint: Endpoint) -> None:
        channel, position = "", b""
        if delivery.channel is not None and delivery.offset is not None:
            channel = delivery.channel
            position = orjson.dumps([delivery.epoch, delivery.offset, time.time()])
        keys = [self._key(endpoint.id, n) for n in ("q", "d", "pos", "state", "bytes")]
        args = [
            delivery.msg_id,
            channel,
            position,
            endpoint.last_msg_id or delivery.msg_id,
            endpoint.last_delivered_at or 0,
        ]
        await self._scripts["delivered"](keys=keys, args=args, client=self.client)

    async def failed(self, delivery: Delivery, endpoint: Endpoint) -> None:
        keys = [self._key(endpoint.id, n) for n in ("q", "d", "state", "bytes")]
        args = [
            delivery.msg_id,
            encode_delivery(delivery),
            endpoint.last_error or "",
            endpoint.last_error_at or 0,
        ]
        await self._scripts["update"](keys=keys, args=args, client=self.client)

    async def bury(self, delivery: Delivery) -> None:
        e = delivery.endpoint
        keys = [self._key(e, n) for n in BURY_KEYS]
        bounds = [self._keep_dead, self._keep_dead_bytes]
        args = [delivery.msg_id, encode_delivery(delivery), *bounds]
        await self._scripts["bury"](keys=keys, args=args, client=self.client)

    async def _counts(self, name: str) -> dict[str, int]:
        ids = [as_text(i) or "" for i in await self.client.hkeys(self._global("endpoints"))]
        pipe = self.client.pipeline(transaction=False)
        for endpoint_id in ids:
            pipe.zcard(self._key(endpoint_id, name))
        counts = await pipe.execute()
        return {i: int(c) for i, c in zip(ids, counts, strict=True) if c}

    async def backlog(self) -> dict[str, int]:
        return await self._counts("q")

    async def backlog_bytes(self) -> dict[str, int]:
        ids = [as_text(i) or "" for i in await self.client.hkeys(self._global("endpoints"))]
        pipe = self.client.pipeline(transaction=False)
        for endpoint_id in ids:
            pipe.hget(self._key(endpoint_id, "bytes"), "n")
        held = await pipe.execute()
        return {i: int(n) for i, n in zip(ids, held, strict=True) if n and int(n) > 0}

    async def dead_count(self) -> dict[str, int]:
        return await self._counts("dead")

    async def dead_letters(self, endpoint_id: str, after_seq: int, limit: int) -> list[Delivery]:
        raw = await self.client.zrangebyscore(
            self._key(endpoint_id, "dead"), f"({after_seq}", "+inf", start=0, num=limit
        )
        return [self._dead(endpoint_id, member) for member in raw]

    def _dead(self, endpoint_id: str, member: bytes) -> Delivery:
        seq, _, body = member.partition(b":")
        return decode_delivery(endpoint_id, int(seq), body)

    async def revive(self, endpoint_id: str, ids: list[str] | None) -> tuple[int, int]:
        dead_key = self._key(endpoint_id, "dead")
        wanted = None if ids is None else set(ids)
        revived = size = 0
        for member in await self.client.zrange(dead_key, 0, -1):
            letter = self._dead(endpoint_id, member)
            if wanted is not None and letter.msg_id not in wanted:
                continue
            fresh = Delivery(
                endpoint=endpoint_id,
                msg_id=letter.msg_id,
                kind=letter.kind,
                body=letter.body,
                channel=letter.channel,
                epoch=letter.epoch,
                offset=letter.offset,
                created_at=letter.created_at,
            )
            keys = [self._key(endpoint_id, n) for n in ("seq", "q", "d", "bytes")]
            # In dead-letter order; a message id still pending stays where it is.
            seq = await self._scripts["enqueue"](
                keys=keys, args=[fresh.msg_id, encode_delivery(fresh)], client=self.client
            )
            keys = [dead_key, self._key(endpoint_id, "dbytes")]
            await self._scripts["unbury"](keys=keys, args=[member], client=self.client)
            if seq:
                revived += 1
                size += len(fresh.body)
        return revived, size

    async def positions(self, endpoint_id: str, limit: int) -> list[tuple[str, str, int]]:
        raw = await self.client.hgetall(self._key(endpoint_id, "pos"))
        rows = []
        for channel, value in raw.items():
            epoch, offset, at = orjson.loads(value)
            rows.append((at, as_text(channel) or "", str(epoch), int(offset)))
        rows.sort(reverse=True)
        return [(channel, epoch, offset) for _, channel, epoch, offset in rows[:limit]]

    async def event_version(self) -> int:
        return int(await self.client.get(self._global("events")) or 0)

    # ---- endpoints -------------------------------------------------------------------------

    async def registry_version(self) -> int:
        """Changes with every endpoint saved or deleted by any node."""
        return int(await self.client.get(self._global("registry")) or 0)

    async def load_endpoints(self) -> list[Endpoint]:
        raw = await self.client.hgetall(self._global("endpoints"))
        configs = [orjson.loads(value) for value in raw.values()]
        pipe = self.client.pipeline(transaction=False)
        for config in configs:
            pipe.hgetall(self._key(config["id"], "state"))
        states = await pipe.execute()
        endpoints = []
        for config, state in zip(configs, states, strict=True):
            s = {as_text(k): as_text(v) for k, v in state.items()}
            endpoints.append(
                Endpoint(
                    id=config["id"],
                    url=config["url"],
                    channels=tuple(config["channels"]),
                    events=tuple(config["events"]),
                    secret=config["secret"],
                    source=config["source"],
                    created_at=config["created_at"],
                    disabled_reason=s.get("disabled_reason") or None,
                    last_error=s.get("last_error") or None,
                    last_error_at=as_int(s.get("last_error_at")),
                    last_msg_id=s.get("last_msg_id") or None,
                    last_delivered_at=as_int(s.get("last_delivered_at")),
                )
            )
        endpoints.sort(key=lambda e: (e.created_at, e.id))
        return endpoints

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        config = {
            "id": endpoint.id,
            "url": endpoint.url,
            "channels": list(endpoint.channels),
            "events": list(endpoint.events),
            "secret": endpoint.secret,
            "source": endpoint.source,
            "created_at": endpoint.created_at,
        }
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self._global("endpoints"), endpoint.id, orjson.dumps(config))
        if endpoint.disabled_reason is None:
            pipe.hdel(self._key(endpoint.id, "state"), "disabled_reason")
        else:
            pipe.hset(self._key(endpoint.id, "state"), "disabled_reason", endpoint.disabled_reason)
        pipe.incr(self._global("registry"))
        await pipe.execute()
        # Announced once stored (not in the pipeline: a cluster's pipelines refuse PUBLISH).
        await self.client.publish(self._announce, endpoint.id)

    async def delete_endpoint(self, endpoint_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(self._global("endpoints"), endpoint_id)
        pipe.delete(*(self._key(endpoint_id, name) for name in ENDPOINT_KEYS))
        pipe.incr(self._global("registry"))
        await pipe.execute()
        await self.client.publish(self._announce, endpoint_id)
        self._held.discard(endpoint_id)

    # ---- leases ----------------------------------------------------------------------------

    async def claim(self, endpoint_id: str) -> bool:
        """Take or renew this node's lease on the endpoint; ``False`` while another node has it."""
        held = await self._scripts["claim"](
            keys=[self._key(endpoint_id, "lease")],
            args=[self.node, max(1, int(self.lease_ttl * 1000))],
            client=self.client,
        )
        if held:
            self._held.add(endpoint_id)
        else:
            self._held.discard(endpoint_id)
        return bool(held)

    async def release(self, endpoint_id: str) -> None:
        self._held.discard(endpoint_id)
        if self._client is not None:
            await self._scripts["release"](
                keys=[self._key(endpoint_id, "lease")], args=[self.node], client=self._client
            )

    async def _renew_forever(self) -> None:
        # A worker renews its lease before every attempt; this covers the long waits between
        # retries and attempts that take longer than the lease lasts.
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            for endpoint_id in list(self._held):
                try:
                    await self.claim(endpoint_id)
                except (RedisError, OSError) as exc:
                    log.warning("webhook lease renewal failed for %s: %s", endpoint_id, exc)


def _set_version(deliveries: list[Delivery], version: int) -> None:
    """Put the cluster-wide ``version`` into an event's body and message ids."""
    body = orjson.loads(deliveries[0].body)
    body["version"] = version
    encoded = dumps_to_keep(body)  # queued until delivered
    for d in deliveries:
        if d.kind != PUBLICATION:
            d.body = encoded
            d.msg_id = event_msg_id(d.endpoint, version)


def _settle(batch: list[_Pending], failure: BaseException | None) -> None:
    for pending in batch:
        if pending.done.done():
            continue
        if failure is None:
            pending.done.set_result(pending.deliveries)
        elif isinstance(failure, asyncio.CancelledError):
            pending.done.cancel()
        else:
            pending.done.set_exception(failure)
