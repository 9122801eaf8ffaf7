"""Key and pub/sub channel names, and the wire format of what travels through Redis.

Every key of one channel carries the channel name as a hash tag (``{chat:lobby}``), so a
channel's keys share one Redis Cluster slot and one Lua script may touch them all. Channel
names cannot contain braces (see :mod:`clarion.protocol.channels`), so the tag is exact.

Pub/sub payloads (one pub/sub channel per clarion channel, one control channel per prefix):

* ``p<offset>:<epoch>:<time>:<body>`` — a publication; ``body`` is JSON with ``data`` and the
  optional ``info`` and ``id``; offset, epoch and time are prepended by the publish script,
  which is the only place they are known.
* ``s<json>`` — an ephemeral publication: its publication object (``"ephemeral": true``, no
  offset or epoch); it travels through pub/sub only and is stored nowhere. A client's signal
  is followed by a newline and its publisher (compact JSON holds no raw newline): the nodes
  need it for the signal's slot, and its object does not show it.
* ``e<json>`` — a channel event (presence ``join``/``leave``): ``{"k": kind, "e": event}``.
* on the control channel: ``{"n": node, "c": command, "p": payload}``.

On a Redis Cluster (``sharded``) a channel's pub/sub channel is a *shard* channel
(``SSUBSCRIBE``/``SPUBLISH``) carrying the same hash tag as its keys, so that the publish
script may announce a publication in its own slot and the message travels only within the
shard that owns the channel.
"""

from __future__ import annotations

from typing import Any

import orjson

from clarion.protocol.publication import Publication, attributes_of

PUBLICATION = ord("p")
EVENT = ord("e")
SIGNAL = ord("s")  # an ephemeral publication


class Keys:
    """Names of everything clarion keeps in Redis, under one prefix."""

    __slots__ = ("control", "control_bytes", "prefix", "pubsub_prefix", "sharded")

    def __init__(self, prefix: str, *, sharded: bool = False) -> None:
        self.prefix = prefix
        self.sharded = sharded
        self.pubsub_prefix = f"{prefix}.ch."
        self.control = f"{prefix}.control"
        self.control_bytes = self.control.encode()

    def meta(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:meta"

    def stream(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:stream"

    def idempotency(self, channel: str, key: str, scope: str | None = None) -> str:
        if scope is None:  # the backend's keys
            return f"{self.prefix}:{{{channel}}}:id:{key}"
        # A client's: the scope's length keeps every (scope, key) pair apart.
        return f"{self.prefix}:{{{channel}}}:cid:{len(scope)}:{scope}:{key}"

    def presence_expiry(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:presence:z"

    def presence_entries(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:presence:h"

    def presence_users(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:presence:u"

    def presence_announced(self, channel: str) -> str:
        """Users whose ``join`` was sent (``join_leave = "user"``)."""
        return f"{self.prefix}:{{{channel}}}:presence:a"

    def presence_user(self, channel: str, user: str) -> str:
        """The leases of one user's clients on the channel."""
        return f"{self.prefix}:{{{channel}}}:presence:u:{user}"

    def presence_channels(self) -> str:
        """Channels with presence entries -> when the last lease known there ends: where the
        leaves of clients whose nodes all stopped without removing them are looked for."""
        return f"{self.prefix}:{{presence}}:channels"

    def connections(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{{conn:{kind}:{key}}}"

    def node_records(self) -> str:
        return f"{self.prefix}:{{nodes}}:records"

    def node_seen(self) -> str:
        return f"{self.prefix}:{{nodes}}:seen"

    def rate(self, key: str) -> str:
        return f"{self.prefix}:{{rate:{key}}}"

    def revocations(self) -> list[str]:
        """The revocations, their change log and its mark: one slot (the others' hash tag is
        the first's whole name)."""
        name = f"{self.prefix}:revoked"
        return [name, f"{{{name}}}:log", f"{{{name}}}:mark"]

    def pubsub(self, channel: str) -> str:
        if self.sharded:
            return f"{self.pubsub_prefix}{{{channel}}}"
        return self.pubsub_prefix + channel

    def channel_of(self, pubsub_channel: bytes) -> str | None:
        name = pubsub_channel.decode()
        if name.startswith(self.pubsub_prefix):
            name = name[len(self.pubsub_prefix) :]
            return name[1:-1] if self.sharded else name
        return None


def encode_body(
    data: Any, info: dict[str, Any] | None, key: str | None, attrs: dict[str, Any] | None = None
) -> bytes:
    body: dict[str, Any] = {"data": data}
    if info is not None:
        body["info"] = info
    if key is not None:
        body["id"] = key
    if attrs:
        body.update(attrs)
    return orjson.dumps(body)


def publication_from_body(
    channel: str, offset: int, epoch: str, time: int, body: bytes
) -> Publication:
    obj = orjson.loads(body)
    return Publication(
        channel,
        offset,
        epoch,
        obj.get("data"),
        time,
        obj.get("info"),
        obj.get("id"),
        attributes_of(obj),
    )


def decode_publication(channel: str, payload: bytes) -> Publication:
    """A ``p…`` pub/sub payload back into a :class:`Publication`."""
    offset, epoch, time, body = payload[1:].split(b":", 3)
    return publication_from_body(channel, int(offset), epoch.decode(), int(time), body)


def entry_offset(entry: list[Any]) -> int:
    """The offset of a stream entry ``[b"<offset>-0", fields]``."""
    return int(entry[0].split(b"-", 1)[0])


def decode_entry(channel: str, epoch: str, entry: list[Any]) -> Publication:
    """A stream entry ``[b"<offset>-0", [b"t", time, b"d", body]]``."""
    fields = entry[1]
    return publication_from_body(channel, entry_offset(entry), epoch, int(fields[1]), fields[3])


def encode_signal(pub: Publication) -> bytes:
    """An ephemeral publication on pub/sub: ``s``, its object (it is nowhere else) and, for a
    client's, ``\n`` and its publisher."""
    if pub.publisher is None:
        return b"s" + pub.json()
    return b"s" + pub.json() + b"\n" + pub.publisher.encode()


def decode_signal(channel: str, payload: bytes) -> Publication:
    body, _, publisher = payload[1:].partition(b"\n")
    obj = orjson.loads(body)
    obj["channel"] = channel
    pub = Publication.from_dict(obj)
    pub.publisher = publisher.decode() if publisher else None
    return pub


def encode_event(kind: str, event: dict[str, Any]) -> bytes:
    return b"e" + orjson.dumps({"k": kind, "e": event})


def decode_event(payload: bytes) -> tuple[str, dict[str, Any]]:
    obj = orjson.loads(payload[1:])
    return str(obj["k"]), dict(obj["e"])
