"""The memory engine's revocations: who is refused until when, read by marks, kept on disk.

Members are ``"user:<id>"`` and ``"jti:<id>"``. An application that revokes a token at every
logout keeps one per logout for a day, so nothing here walks them all per call: lapsed ones
leave through a heap, a read with the last mark returns only what changed since (members kept
in the order of their last change), and a store writes the whole file once for every
revocation made while the write before it ran (a group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import secrets
import time
from pathlib import Path

import orjson

from clarion.engines.base import RevocationMark
from clarion.errors import ConfigError, EngineUnavailable
from clarion.protocol.numbers import ascii_int

FILE = "revocations.json"


class RevocationTable:
    def __init__(self, data_dir: str | os.PathLike[str] | None) -> None:
        self.path = Path(data_dir) / FILE if data_dir is not None else None
        self._until: dict[str, float] = {}
        self._changed: dict[str, int] = {}  # member -> change number, oldest change first
        self._lapse: list[tuple[float, str]] = []  # (until, member), a heap
        self._changes = 0
        # A new table per process: a mark of another one reads everything.
        self._name = secrets.token_hex(6)
        self._stored = 0  # the change number the file holds
        self._lock = asyncio.Lock()

    def load(self) -> None:
        if self.path is not None:
            for member, until in _read(self.path).items():
                self._set(member, until)
            self._stored = self._changes

    async def revoke(self, member: str, until: float) -> None:
        """Store the later of ``until`` and the member's current one; raise
        :class:`EngineUnavailable` when the file cannot hold it."""
        self.drop_lapsed()
        if until > max(time.time(), self._until.get(member, 0.0)):
            self._set(member, until)
        if self.path is None:
            return
        wanted = self._changes
        async with self._lock:
            if self._stored >= wanted:
                return  # a write that began after this change holds it
            changes, snapshot = self._changes, orjson.dumps(self._until)
            try:
                await asyncio.to_thread(_write_atomically, self.path, snapshot)
            except OSError as exc:  # data_dir unwritable, disk full: not stored, say so
                raise EngineUnavailable(
                    f"the revocation could not be stored in {self.path}: {exc.strerror or exc}"
                ) from None
            self._stored = changes

    def since(
        self, mark: RevocationMark | None
    ) -> tuple[RevocationMark, list[tuple[str, str, float]]]:
        self.drop_lapsed()
        name, _, number = (mark or "").partition(":")
        after = (ascii_int(number, max_digits=20) or 0) if name == self._name else 0
        out: list[tuple[str, str, float]] = []
        for member in reversed(self._changed):  # newest change first
            if self._changed[member] <= after:
                break
            kind, _, key = member.partition(":")
            out.append((kind, key, self._until[member]))
        out.reverse()
        return f"{self._name}:{self._changes}", out

    def drop_lapsed(self) -> None:
        now = time.time()
        lapse = self._lapse
        while lapse and lapse[0][0] <= now:
            until, member = heapq.heappop(lapse)
            if self._until.get(member) == until:  # not extended since
                del self._until[member]
                del self._changed[member]

    def _set(self, member: str, until: float) -> None:
        self._changes += 1
        self._until[member] = until
        self._changed.pop(member, None)  # to the end: the newest change
        self._changed[member] = self._changes
        heapq.heappush(self._lapse, (until, member))


def _read(path: Path) -> dict[str, float]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        loaded = orjson.loads(raw)
        revoked = {str(k): float(v) for k, v in loaded.items()}
    except (ValueError, TypeError, AttributeError):
        # Never start as if nothing were revoked: the operator decides what to do with it.
        raise ConfigError(f"{path} is not a revocations file; move it away to start") from None
    now = time.time()
    return {member: until for member, until in revoked.items() if until > now}


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers and crashes see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the rename itself reaches the disk (POSIX)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
