"""Publications and stream positions: the values every layer passes around.

Besides its ``data``, a publication may carry **attributes** (:data:`ATTRIBUTES`), shown as
fields of the publication object on every transport and kept in history:

* ``headers``: an object of string values, the user headers of a STOMP ``SEND``;
* ``encoding``: the publication is a raw body, not a JSON value: ``data`` is a string holding
  it, ``"utf-8"`` text as is or ``"base64"`` binary in base64 (RFC 4648, with padding);
* ``content_type``: the body's type, as the publisher gave it.

An **ephemeral** publication (a live signal: a cursor position, a typing flag) is delivered to
live subscribers and nothing else: it is never stored, takes no offset (``offset`` 0, ``epoch``
empty) and moves no cursor. Its object carries ``"ephemeral": true`` and, when given, the
publisher's ``key`` (what a backlogged subscriber keeps only the latest signal of) instead of
``offset`` and ``epoch``. The key is the publisher's own: a signal replaces only one of the same
``publisher`` (known to the hub, never shown) with the same key (:meth:`Publication.slot`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from clarion.protocol.jsonkeep import dumps_to_keep

ATTRIBUTES = ("headers", "encoding", "content_type")
ENCODINGS = ("utf-8", "base64")
MAX_KEY_CHARS = 128  # an ephemeral publication's key
_UNSET = object()  # not encoded yet (an encoding may be anything, None too)
# ``_data`` of a packed publication (:meth:`Publication.pack`): its data is read from its JSON.
_PACKED = object()


# Told the bytes of each encoding a packed publication keeps after it was packed.
Meter = Callable[["Publication", int], None]


def _uncounted(pub: Publication, size: int) -> None:
    pass


def _bytes_of(value: Any) -> int | None:
    """What an encoding holds, for a packed publication's count: ``None`` for one that cannot
    be told (it is then made again each time rather than kept uncounted)."""
    if isinstance(value, bytes | bytearray | str):
        return len(value)
    if isinstance(value, tuple) and all(isinstance(v, bytes | bytearray | str) for v in value):
        return sum(len(v) for v in value)
    return None


def payload_size(data: Any, attrs: dict[str, Any] | None = None) -> int:
    """The bytes a publication's payload counts against ``max_message_bytes``: its JSON
    encoding, or the raw body's own length for a publication with an ``encoding``."""
    encoding = attrs.get("encoding") if attrs else None
    if encoding == "utf-8" and isinstance(data, str):
        return len(data.encode())
    if encoding == "base64" and isinstance(data, str):
        return len(data) // 4 * 3 - data[-2:].count("=")
    return len(orjson.dumps(data))


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a reader is in one channel's stream.

    ``offset`` counts publications from 1 within one ``epoch``; offset 0 means "before the first
    publication". A different epoch means the history the offset referred to is gone.
    """

    epoch: str
    offset: int


class Publication:
    """One message on one channel, with its place in the channel's stream.

    Publications are immutable once made, but for what is memoised on them: ``encoded`` keeps
    wire encodings so that a publication delivered to many subscribers of one wire format is
    serialised once, and ``cursor`` and the JSON are kept once made.

    A stored publication is :meth:`pack`-ed once delivered: it keeps its JSON and its wire
    encodings, not the objects its data decodes to (compact JSON of many small containers
    takes twenty times its length as Python objects), and ``data`` is decoded from the JSON
    again when asked.
    """

    __slots__ = (
        "_data",
        "_json",
        "_key",
        "_meter",
        "_more",
        "_value",
        "attrs",
        "channel",
        "cursor",
        "ephemeral",
        "epoch",
        "held",
        "id",
        "info",
        "key",
        "offset",
        "publisher",
        "repeated",
        "time",
    )

    def __init__(
        self,
        channel: str,
        offset: int,
        epoch: str,
        data: Any,
        time: int,
        info: dict[str, Any] | None = None,
        id: str | None = None,
        attrs: dict[str, Any] | None = None,
        *,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> None:
        self.channel = channel
        self.offset = offset
        self.epoch = epoch
        self._data = data
        self.time = time
        self.info = info
        self.id = id
        self.attrs = attrs or None  # see ATTRIBUTES
        self.ephemeral = ephemeral
        self.key = key  # ephemeral only: signals of one key replace each other in a backlog
        # Ephemeral only: who sent the signal, for its slot (None: the backend).
        self.publisher: str | None = None
        # The single-channel cursor just after it, once encoded (core.fanout.publication_cursor);
        # it and the JSON are slots, not entries of _encodings: every publication gets both.
        self.cursor: str | None = None
        self._json: bytes | None = None  # the publication object as JSON, once encoded
        # True when a publish was answered with this earlier publication (same idempotency key
        # within the window): nothing new was published.
        self.repeated = False
        # Encodings (see encoded): the first one's key and value, the others by key.
        self._key: object = None
        self._value: Any = None
        self._more: dict[object, Any] | None = None
        # Set by pack(), read only once packed (a slot left unset costs nothing to make):
        # ``held``, the bytes it holds (its JSON and its encodings), and ``_meter``.
        self.held: int
        self._meter: Meter

    def as_repeat(self) -> Publication:
        """A copy marked :attr:`repeated`, to answer a repeated publish with."""
        copy = Publication(
            self.channel,
            self.offset,
            self.epoch,
            self._data,  # packed or not, as this one: the JSON goes with it
            self.time,
            self.info,
            self.id,
            self.attrs,
        )
        copy._json = self._json
        if self._data is _PACKED:  # a copy for its answer: held by no engine, counted nowhere
            copy.held = 0
            copy._meter = _uncounted
        copy.repeated = True
        return copy

    @property
    def data(self) -> Any:
        """The published value; a packed publication's is decoded from its JSON at each read
        (not kept: a history read would make the objects packing saved again)."""
        data = self._data
        if data is _PACKED:
            return orjson.loads(self._json)["data"]  # type: ignore[arg-type]
        return data

    def pack(self, meter: Meter) -> int:
        """Keep this publication as bytes from now on: its JSON and its wire encodings (what a
        resume sends again), not the objects its data decodes to. Returns the bytes it holds
        (also :attr:`held`); an encoding made later is kept too, encoded once for every reader
        in its format, and its bytes told to ``meter``."""
        body = self._json
        if body is None:
            body = self.json()
        self._data = _PACKED
        held = len(body)
        value = self._value
        if type(value) is bytes:  # nearly always: the frame of its one format
            held += len(value)
        elif self._key is not None:
            size = _bytes_of(value)
            if size is None:
                self._key = self._value = None
            else:
                held += size
        more = self._more
        if more:
            for key, value in list(more.items()):
                size = _bytes_of(value)
                if size is None:
                    del more[key]
                else:
                    held += size
        self.held = held
        self._meter = meter
        return held

    @property
    def packed(self) -> bool:
        return self._data is _PACKED

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.offset)

    @classmethod
    def signal(
        cls,
        channel: str,
        data: Any,
        time: int,
        info: dict[str, Any] | None = None,
        attrs: dict[str, Any] | None = None,
        key: str | None = None,
        publisher: str | None = None,
    ) -> Publication:
        """An ephemeral publication: no place in the stream, never stored. ``publisher`` is
        who sent it: a client's user, or its session when it has none; ``None`` for the
        backend."""
        pub = cls(channel, 0, "", data, time, info, None, attrs, ephemeral=True, key=key)
        pub.publisher = publisher
        return pub

    def slot(self) -> tuple[str, str, str]:
        """Where a reader that is behind keeps only the newest of this keyed signal: channel,
        publisher and key. Clients choose keys freely: without the publisher, anyone's signal
        of another's key would replace theirs. The backend's is ``""``, which no client's
        publisher is."""
        assert self.key is not None
        return (self.channel, self.publisher or "", self.key)

    def to_dict(self) -> dict[str, Any]:
        return self._as_dict(self.data)

    def _as_dict(self, data: Any) -> dict[str, Any]:
        out: dict[str, Any]
        if self.ephemeral:
            out = {"channel": self.channel, "ephemeral": True, "data": data, "time": self.time}
            if self.key is not None:
                out["key"] = self.key
        else:
            out = {
                "channel": self.channel,
                "offset": self.offset,
                "epoch": self.epoch,
                "data": data,
                "time": self.time,
            }
        if self.info is not None:
            out["info"] = self.info
        if self.id is not None:
            out["id"] = self.id
        if self.attrs is not None:
            out.update(self.attrs)
        return out

    def json(self) -> bytes:
        """The publication object as JSON, encoded once."""
        cached = self._json
        if cached is None:
            # Not packed (a packed one has its JSON): its data is at hand.
            cached = self._json = dumps_to_keep(self._as_dict(self._data))  # kept as it is
        return cached

    def encoded(self, key: object, encode: Any) -> Any:
        """``encode(self)`` memoised under ``key`` (one entry per wire format)."""
        # Nearly every publication is encoded for one format (its frame): that one is kept in
        # two slots, and a dictionary is made only for a second. One allocation less per
        # publication, and a smaller one in every history.
        if key == self._key:
            return self._value
        more = self._more
        if more is not None:
            value = more.get(key, _UNSET)  # a lookup: raising a KeyError would cost more
            if value is not _UNSET:
                return value
        value = encode(self)
        if value is not self:  # kept, the publication itself would make it a cycle
            if self._data is _PACKED:  # what it keeps is counted
                size = _bytes_of(value)
                if size is None:
                    return value
                self.held += size
                self._meter(self, size)
            if self._key is None:
                self._key, self._value = key, value
            elif more is None:
                self._more = {key: value}
            else:
                more[key] = value
        return value

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Publication:
        if obj.get("ephemeral") is True:
            key = obj.get("key")
            return cls.signal(
                obj["channel"],
                obj.get("data"),
                int(obj.get("time", 0)),
                obj.get("info"),
                attributes_of(obj),
                key if isinstance(key, str) else None,
            )
        return cls(
            channel=obj["channel"],
            offset=int(obj["offset"]),
            epoch=str(obj["epoch"]),
            data=obj.get("data"),
            time=int(obj.get("time", 0)),
            info=obj.get("info"),
            id=obj.get("id"),
            attrs=attributes_of(obj),
        )

    def __repr__(self) -> str:
        return f"Publication({self.channel!r}, offset={self.offset}, epoch={self.epoch!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Publication):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def attributes_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The attributes among the fields of a publication object, or ``None``."""
    attrs = {name: obj[name] for name in ATTRIBUTES if name in obj}
    return attrs or None
