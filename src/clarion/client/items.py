"""What the client hands back: the items a subscription yields and the results of requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clarion.errors import BadCursor
from clarion.protocol.cursor import Cursor, encode_single
from clarion.protocol.publication import Publication, StreamPosition


@dataclass(frozen=True, slots=True, repr=False)
class Message:
    """A publication received on a subscription, with the cursor that resumes just after it.

    An ephemeral one (a live signal, :attr:`ephemeral`) has no place in the stream: its
    ``cursor`` is the subscription's position when it came, which it does not move.
    """

    publication: Publication
    cursor: str

    def __repr__(self) -> str:
        # What a reader printing messages wants to see: where it is and what it says.
        return (
            f"Message(channel={self.channel!r}, offset={self.offset}, data={self.data!r}, "
            f"cursor={self.cursor!r})"
        )

    @classmethod
    def from_wire(cls, obj: dict[str, Any], cursor: str | None = None) -> Message:
        """From a publication object as the hub sends it (with ``cursor``, unless given apart;
        an ephemeral one has none)."""
        if obj.get("ephemeral") is True:
            return cls(Publication.from_dict(obj), cursor or "")
        token = cursor if cursor else obj["cursor"]
        if not isinstance(token, str):
            raise ValueError("cursor must be a string")
        return cls(Publication.from_dict(obj), token)

    @property
    def channel(self) -> str:
        return self.publication.channel

    @property
    def data(self) -> Any:
        return self.publication.data

    @property
    def offset(self) -> int:
        return self.publication.offset

    @property
    def epoch(self) -> str:
        return self.publication.epoch

    @property
    def time(self) -> int:
        return self.publication.time

    @property
    def info(self) -> dict[str, Any] | None:
        return self.publication.info

    @property
    def id(self) -> str | None:
        return self.publication.id

    @property
    def ephemeral(self) -> bool:
        """A live signal: never stored, no offset (``offset`` 0, ``epoch`` empty)."""
        return self.publication.ephemeral

    @property
    def key(self) -> str | None:
        """A live signal's key, when its publisher gave one."""
        return self.publication.key

    @property
    def position(self) -> StreamPosition:
        return self.publication.position

    def before(self) -> str:
        """The cursor that resumes with this message (just before it)."""
        return encode_single(self.channel, self.epoch, self.offset - 1)


@dataclass(frozen=True, slots=True)
class Reset:
    """Publications on ``channel`` were missed and cannot be recovered.

    ``reason`` is the hub's: ``"trimmed"`` (older than the history still holds), ``"epoch"`` (the
    history was lost), ``"position"`` (a position the stream never reached), ``"lost"``.
    ``cursor`` is where the stream continues; the subscription goes on from there.
    """

    channel: str
    reason: str
    cursor: str

    @property
    def position(self) -> StreamPosition | None:
        return position_of(self.channel, self.cursor)


@dataclass(frozen=True, slots=True)
class Published:
    """Where a publication landed in its channel's stream (an ephemeral one lands nowhere:
    ``offset`` 0, ``epoch`` empty, no ``cursor``)."""

    channel: str
    offset: int
    epoch: str
    cursor: str | None = None
    ephemeral: bool = False

    @classmethod
    def from_wire(cls, channel: str, ok: dict[str, Any]) -> Published:
        """From a publish reply."""
        if ok.get("ephemeral") is True:
            return cls(channel, 0, "", None, True)
        return cls(channel, int(ok["offset"]), str(ok["epoch"]), ok.get("cursor"))


@dataclass(frozen=True, slots=True)
class History:
    """A page of a channel's history, oldest first (newest first when read in ``reverse``).

    ``cursor`` continues after the last publication of the page (pass it as ``since`` for the
    next page while ``more`` is true; in reverse, it is the page's oldest publication, and the
    next page holds those before it). ``reset`` is set when ``since`` pointed before what the
    history still holds: the page then starts at the oldest publication kept.
    """

    channel: str
    publications: list[Message]
    cursor: str
    more: bool = False
    reset: Reset | None = None

    @classmethod
    def from_wire(cls, channel: str, body: dict[str, Any]) -> History:
        cursor = str(body["cursor"])
        publications = [Message.from_wire(p) for p in body.get("publications", ())]
        reset = body.get("reset")
        if isinstance(reset, dict):
            # The stream continues with the page's first publication, or after the page.
            after = publications[0].before() if publications else cursor
            found = Reset(channel, str(reset.get("reason", "")), str(reset.get("cursor", after)))
        return cls(
            channel=channel,
            publications=publications,
            cursor=cursor,
            more=bool(body.get("more", False)),
            reset=found if isinstance(reset, dict) else None,
        )


@dataclass(frozen=True, slots=True)
class Member:
    """One client present on a channel."""

    client: str
    user: str | None
    transport: str
    info: dict[str, Any] | None = None

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> Member:
        user = obj.get("user")
        info = obj.get("info")
        return cls(
            client=str(obj["client"]),
            user=user if isinstance(user, str) else None,
            transport=str(obj.get("transport", "")),
            info=info if isinstance(info, dict) else None,
        )


@dataclass(frozen=True, slots=True)
class PresentUser:
    """One user present on a channel: its clients (tabs, devices) and the union of their
    ``info`` (``None`` where the hub does not share it)."""

    user: str
    clients: list[str]
    info: dict[str, Any] | None = None

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> PresentUser:
        info = obj.get("info")
        return cls(
            user=str(obj["user"]),
            clients=[str(c) for c in obj.get("clients", ())],
            info=info if isinstance(info, dict) else None,
        )


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """How many clients are present on a channel, and how many distinct users they are."""

    clients: int
    users: int


def position_of(channel: str, cursor: str | None) -> StreamPosition | None:
    """The position ``cursor`` holds for ``channel``; ``None`` if it holds none or is unreadable."""
    if cursor is None:
        return None
    try:
        return Cursor.decode(cursor).get(channel)
    except BadCursor:
        return None
