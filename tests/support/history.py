"""A history checker: what every client received, checked against what was acknowledged.

Jepsen-style: clients and publishers only record; :func:`check` judges afterwards, with no
knowledge of the hub. A :class:`ClientLog` holds, per client and in arrival order, each
subscribe answer (the position the hub started it from), each publication and each reset
(with the position it moved the client to). A :class:`PublisherLog` holds each acknowledged
publication (channel, epoch, offset and the data it carried) and each refusal.

Findings, per client and channel, each at the first offending position:

- ``gap``: an offset above the previous one + 1 in the same epoch, with no reset between;
- ``silent_epoch``: a publication in a new epoch that no reset announced;
- ``duplicate``: a position received twice since the client last moved to it;
- ``reordered``: an offset below the previous one that was not received before;
- ``needless_reset``: a reset where nothing was missed (it moved the client nowhere new in
  its epoch, or the next publication was the one right after the client's old position);
- ``lost``: a publication acknowledged to a publisher, inside the span the client followed,
  that it neither received nor was told it missed (a reset over it);
- ``conflict`` (publisher side, client ``"publishers"``): one position acknowledged for two
  different publications.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Position = tuple[str, int]  # (epoch, offset)


@dataclass(frozen=True, slots=True)  # a soak holds millions
class Entry:
    kind: str  # "subscribed", "publication" or "reset"
    channel: str
    epoch: str
    offset: int
    cursor: str | None = None
    reason: str | None = None


@dataclass
class ClientLog:
    """What one client received, across all its connections, in arrival order."""

    name: str
    entries: list[Entry] = field(default_factory=list)

    def subscribed(self, channel: str, epoch: str, offset: int, cursor: str | None = None) -> None:
        """The subscribe answer: the position the client follows from (a fresh subscribe, or a
        resume whose reset, if any, is recorded separately)."""
        self.entries.append(Entry("subscribed", channel, epoch, offset, cursor))

    def publication(self, channel: str, epoch: str, offset: int, cursor: str | None = None) -> None:
        self.entries.append(Entry("publication", channel, epoch, offset, cursor))

    def reset(
        self, channel: str, epoch: str, offset: int, reason: str, cursor: str | None = None
    ) -> None:
        """A reset that moved the client to ``(epoch, offset)``: what lies between its old
        position and this one is announced as missed."""
        self.entries.append(Entry("reset", channel, epoch, offset, cursor, reason))


@dataclass
class PublisherLog:
    """What one publisher was told: each acknowledged position, and each refusal."""

    name: str = "publisher"
    acked: list[tuple[str, str, int, str]] = field(default_factory=list)  # ch, epoch, off, data
    refused: list[str] = field(default_factory=list)

    def ack(self, channel: str, epoch: str, offset: int, data: Any = None) -> None:
        self.acked.append((channel, epoch, offset, json.dumps(data, sort_keys=True)))

    def refuse(self, reason: str) -> None:
        self.refused.append(reason)


@dataclass(frozen=True)
class Finding:
    client: str
    channel: str
    kind: str
    at: Position  # the first offending position
    detail: str

    def __str__(self) -> str:
        return f"{self.client} {self.channel} {self.kind} at {self.at}: {self.detail}"


@dataclass
class _Follow:
    """One client's view of one channel while the checker walks its log."""

    last: Position | None = None
    seen: set[Position] = field(default_factory=set)  # every publication received
    # Per epoch: the offset the client started following from (exclusive), and the ranges a
    # reset announced as missed (lo exclusive, hi inclusive).
    start: dict[str, int] = field(default_factory=dict)
    announced: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    pending_reset: tuple[Position, Position] | None = None  # (old, new) awaiting judgement


def check(clients: Iterable[ClientLog], publishers: Iterable[PublisherLog] = ()) -> list[Finding]:
    """Every finding in the logs, in client order then arrival order."""
    findings: list[Finding] = []
    publishers = list(publishers)
    acked = _acked(publishers, findings)
    for client in clients:
        follows: dict[str, _Follow] = {}
        for entry in client.entries:
            f = follows.setdefault(entry.channel, _Follow())
            _walk(client.name, entry, f, findings)
        for channel, f in follows.items():
            _judge_pending_reset(client.name, channel, f, None, findings)
            _lost(client.name, channel, f, acked.get(channel, {}), findings)
    return findings


def first_findings(findings: Iterable[Finding]) -> dict[tuple[str, str], Finding]:
    """The first finding of each kind for each client: what a failing test prints."""
    out: dict[tuple[str, str], Finding] = {}
    for finding in findings:
        out.setdefault((finding.client, finding.kind), finding)
    return out


def assert_no_findings(
    clients: Iterable[ClientLog], publishers: Iterable[PublisherLog] = ()
) -> None:
    findings = check(clients, publishers)
    if findings:
        firsts = "\n".join(str(f) for f in list(first_findings(findings).values())[:20])
        raise AssertionError(f"{len(findings)} history findings; first of each kind:\n{firsts}")


def _acked(
    publishers: list[PublisherLog], findings: list[Finding]
) -> dict[str, dict[Position, str]]:
    acked: dict[str, dict[Position, str]] = {}
    for publisher in publishers:
        for channel, epoch, offset, data in publisher.acked:
            positions = acked.setdefault(channel, {})
            before = positions.setdefault((epoch, offset), data)
            if before != data:
                findings.append(
                    Finding(
                        "publishers",
                        channel,
                        "conflict",
                        (epoch, offset),
                        f"acknowledged for {before} and for {data}",
                    )
                )
    return acked


def _move(f: _Follow, to: Position) -> None:
    f.last = to
    f.start.setdefault(to[0], to[1])


def _walk(name: str, entry: Entry, f: _Follow, findings: list[Finding]) -> None:
    here = (entry.epoch, entry.offset)
    if entry.kind == "subscribed":
        if f.last is None:
            _move(f, here)
        # A resume answers the position resumed from (or the reset's, recorded after it).
        return
    if entry.kind == "reset":
        _judge_pending_reset(name, entry.channel, f, None, findings)
        old = f.last
        if old is not None:
            if old[0] == here[0]:
                f.announced.setdefault(old[0], []).append((old[1], here[1]))
            else:
                # Everything after the old position in the old epoch is announced as gone.
                f.announced.setdefault(old[0], []).append((old[1], float("inf")))
            f.pending_reset = (old, here)
        _move(f, here)
        return
    _judge_pending_reset(name, entry.channel, f, here, findings)
    last = f.last
    if last is None:
        f.seen.add(here)
        _move(f, here)
        return
    if here[0] != last[0]:
        findings.append(
            Finding(name, entry.channel, "silent_epoch", here, f"after {last} with no reset")
        )
        f.seen.add(here)
        _move(f, here)
        return
    if here in f.seen:
        findings.append(Finding(name, entry.channel, "duplicate", here, f"after {last}"))
        return
    if here[1] <= last[1]:
        findings.append(Finding(name, entry.channel, "reordered", here, f"after {last}"))
        f.seen.add(here)
        return
    if here[1] != last[1] + 1:
        findings.append(
            Finding(
                name,
                entry.channel,
                "gap",
                here,
                f"after {last}: offsets {last[1] + 1}..{here[1] - 1} missing",
            )
        )
    f.seen.add(here)
    _move(f, here)


def _judge_pending_reset(
    name: str, channel: str, f: _Follow, next_pub: Position | None, findings: list[Finding]
) -> None:
    """A reset is needless when it moved the client nowhere past its old position in the
    same epoch, or when the next publication is the one right after the old position."""
    if f.pending_reset is None:
        return
    old, new = f.pending_reset
    f.pending_reset = None
    nothing_skipped = old[0] == new[0] and new[1] <= old[1]
    continues = next_pub is not None and next_pub == (old[0], old[1] + 1)
    if nothing_skipped or continues:
        findings.append(
            Finding(name, channel, "needless_reset", new, f"from {old}: nothing was missed")
        )


def _lost(
    name: str, channel: str, f: _Follow, acked: dict[Position, str], findings: list[Finding]
) -> None:
    """Acknowledged publications after the point the client started following their epoch
    that it neither received nor was told it missed. Checked once the clients caught up:
    one still on its way to the last publication has lost what it has not received yet."""
    lost: list[Position] = []
    for epoch, offset in sorted(acked):
        start = f.start.get(epoch)
        if start is None or offset <= start or (epoch, offset) in f.seen:
            continue
        if any(lo < offset <= hi for lo, hi in f.announced.get(epoch, [])):
            continue
        lost.append((epoch, offset))
    if lost:
        findings.append(
            Finding(
                name,
                channel,
                "lost",
                lost[0],
                f"{len(lost)} acknowledged publication(s) never received nor reset over",
            )
        )
