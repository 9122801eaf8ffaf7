"""The ``clarion.fast_websocket`` extension: pre-built frames, one coalesced write per iteration.

A publication's frame is built once (server frames are unmasked, so the whole frame is the same
bytes for every receiver) and handed to N connections with :meth:`Outbox.push`, which appends it
to a list and counts it against the send limit. The first push on a clean connection puts it on
its event loop's :class:`Flusher`, which runs once at the end of the current loop iteration and
writes each dirty connection's frames with ONE ``transport.write``: a thousand frames pushed to
one connection in one iteration cost one syscall, not a thousand.

Frames the ``websockets`` protocol object produces itself (handshake response, pongs, close
frames) go through the same buffer, so the order on the wire is the order of the calls.

The two loops that run per connection — :func:`push_many`'s append and the flush — have a
compiled twin, ``clarion.server._fastloop``, built when clarion is installed with a C compiler
at hand; it takes their common case (a connection with frames to write and nothing else to do)
and hands every other to the Python code here, which stays the reference. :data:`COMPILED` says
which runs; the server's ``compiled=False`` (the setting ``compiled = false``) keeps the Python
loops. :data:`NO_RING` says whether the compiled flush's sends go through io_uring, many in one
system call (``io_uring = false`` keeps them one by one).

Long on purpose: the outbox's send limit, its Python loops and the choice of their compiled
twin are one rule and its two implementations, kept in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from clarion.asgitypes import FAST_WEBSOCKET, FastWebSocket
from clarion.protocol.frames import Latest, Slot, text_frame
from clarion.server import flusher
from clarion.server.flusher import Flusher, flusher_for

__all__ = [
    "COMPILED",
    "FAST_WEBSOCKET_EXTENSION",
    "NO_RING",
    "FastWebSocket",
    "Flusher",
    "Outbox",
    "push_many",
    "use_compiled",
]

FAST_WEBSOCKET_EXTENSION = FAST_WEBSOCKET  # the name clarion.server has always exported
MAX_HELD = 1024  # keyed signals held per connection that is behind; more queue as usual
HELD_CHECK = 0.05  # seconds between checks of whether a connection holding signals caught up

log = logging.getLogger("clarion.server.fastws")


class _Discard(list[bytes]):
    """Where a sealed connection's pushes go: appending does nothing, and it is never empty,
    so the fan-out's inner loop never takes the "first frame" branch for it."""

    def append(self, frame: bytes) -> None:
        return None

    def __bool__(self) -> bool:
        return True


_DISCARD = _Discard()


def _push_many(boxes: Iterable[Outbox], frame: bytes) -> None:
    """Push one shared frame to many connections: the fan-out's inner loop, kept tight.

    Per connection it is one list append and the running count; the first frame of an
    iteration also marks the connection for the flush. Only a connection the count takes over
    its limit goes to :meth:`Outbox._admit`.
    """
    if type(frame) is Latest:
        for box in boxes:
            box.push(frame)  # a keyed signal may wait in its slot instead
        return
    size = len(frame)
    for box in boxes:
        out = box._out
        queued = box._out_bytes + size
        if queued + box._backlog > box._limit and not box._admit(size):
            continue
        if out:
            if out is _DISCARD:
                continue
            out.append(frame)
        else:
            box._first_push(frame)
        box._out_bytes = queued


class Outbox:
    """A connection's outgoing frames between two flushes, and its send limit.

    Subclasses set :attr:`transport` and call :meth:`init_outbox` before anything is queued, and
    implement :meth:`on_eof_flushed` (the protocol asked for the TCP half-close),
    :meth:`on_overflow_default` (the limit was hit and nobody asked to be told) and
    :meth:`on_hard_overflow` (past twice the limit, and the app did not close), and may
    implement :meth:`on_backlog` (e.g. stop reading a peer that does not read). They do not
    override :meth:`flush` or the push methods: the compiled loops do their common case
    without calling them, from these slots.

    One rule bounds every path that queues bytes (:meth:`push`, :meth:`push_pair`, the held
    signals, :func:`push_many` and its compiled twin): ``_out_bytes``, a running count of all
    that is queued here, plus the transport's buffer seen at the last look, against the limit.
    Over it, :meth:`_admit` looks again and applies it; past twice it, nothing more is taken.
    """

    __slots__ = (
        "_backlog",
        "_cut",
        "_direct",
        "_dirty",
        "_eof",
        "_fd",
        "_flusher",
        "_held",
        "_held_bytes",
        "_held_check",
        "_limit",
        "_on_overflow",
        "_out",
        "_out_bytes",
        "_overflowed",
        "_pushed",
        "_sealed",
        "_tail",
        "_told",
        "transport",
    )

    transport: asyncio.Transport
    push_many = staticmethod(_push_many)  # the compiled loop when there is one (below)

    def init_outbox(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        # Frames in wire order. Once sealed, what was queued moves to _tail (followed by the
        # protocol's own frames, e.g. the close frame) and pushes go to _DISCARD.
        self._out: list[bytes] = []
        self._tail: list[bytes] = []
        # Bytes queued here and not yet handed to the transport: _out, _tail and the held
        # signals (of which _held_bytes), kept as they change, so that no check sums a queue.
        self._out_bytes = 0
        self._held_bytes = 0
        # The transport's write buffer size at the last flush: push compares against it
        # without a call per frame; a suspected overflow is re-checked exactly.
        self._backlog = 0
        self._dirty = False
        self._eof = 0  # 1: half-close requested once the queue is written; 2: done
        self._sealed = False  # no more application frames (a close frame is queued)
        self._overflowed = False  # the app is told, or about to be
        self._told = False  # the app's overflow callback ran
        # Past twice the limit: pushes are dropped from then on, and the connection ends.
        self._cut = False
        self._pushed = False  # pushed since the last flush: the limit applies to it
        self._limit = limit
        # None: on_overflow_default (a bound method kept here would be a reference cycle of
        # this object with itself, left for the garbage collector when the connection ends).
        self._on_overflow: Callable[[], None] | None = None
        self._flusher = flusher_for(loop)
        # Keyed signals waiting while the connection is behind: the newest per slot, in the
        # order their slots first came; written once the transport's buffer is empty.
        self._held: dict[Slot, bytes] | None = None
        self._held_check: asyncio.TimerHandle | None = None
        # The compiled flush may write to this socket itself, skipping the transport, while
        # the transport's buffer is empty: only for a connection every byte of which goes
        # through this outbox (see allow_direct_writes), and only to this transport.
        self._direct: asyncio.Transport | None = None
        self._fd = -1

    def allow_direct_writes(self) -> None:
        """Every byte of this connection goes through the outbox: the compiled flush may write
        to its socket directly while the transport's buffer is empty (what the transport's own
        ``write`` would do first, for less)."""
        transport = self.transport
        sock = transport.get_extra_info("socket")
        # A TLS transport names the socket under it, which carries records, not our bytes.
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._fd = sock.fileno()
            self._direct = transport
            # An upgrade handed over behind a response the transport still holds: direct
            # writes wait until a write through the transport finds it empty.
            self._backlog = transport.get_write_buffer_size()

    def _first_push(self, frame: bytes) -> None:
        if self._sealed:
            return
        self._out.append(frame)
        self._pushed = True
        if not self._dirty:
            self._dirty = True
            self._flusher.mark(self)

    def push(self, frame: bytes) -> None:
        if type(frame) is Latest and (self._backlog or self._held is not None):
            self._hold(frame)  # behind: the frame waits in its slot
            return
        queued = self._out_bytes + len(frame)
        if queued + self._backlog > self._limit and not self._admit(len(frame)):
            return
        out = self._out
        if out:
            if out is _DISCARD:
                return
            out.append(frame)
        else:
            self._first_push(frame)
        self._out_bytes = queued

    def push_pair(self, head: bytes, body: bytes) -> None:
        """One frame given as two buffers, ``head`` then ``body`` (a large body shared by many
        frames is not copied): both are queued, or neither."""
        size = len(head) + len(body)
        queued = self._out_bytes + size
        if queued + self._backlog > self._limit and not self._admit(size):
            return
        out = self._out
        if out is _DISCARD:
            return
        if out:
            out.append(head)
        else:
            self._first_push(head)
        out.append(body)
        self._out_bytes = queued

    def push_text(self, payload: bytes) -> None:
        self.push(text_frame(payload))

    def _hold(self, frame: Latest) -> None:
        """A keyed signal's frame while the connection is behind (the transport's buffer held
        bytes at the last write): it waits in its slot, replacing the one of the same slot
        that waited there, until the buffer is empty."""
        if self._sealed or self._cut:
            return
        held = self._held
        if held is None:
            held = self._held = {}
        old = held.get(frame.slot)
        if old is None and len(held) >= MAX_HELD:
            # Keys beyond the bound queue as usual (still in its slot's type: the flush writes
            # bytes of any kind), against the limit like any frame.
            queued = self._out_bytes + len(frame)
            if queued + self._backlog > self._limit and not self._admit(len(frame)):
                return
            self._out.append(frame)
            self._out_bytes = queued
        else:
            # A replacement counts by the difference: a smaller signal frees what it replaced.
            grow = len(frame) - (0 if old is None else len(old))
            if (
                grow > 0
                and self._out_bytes + grow + self._backlog > self._limit
                and not self._admit(grow)
            ):
                return
            held[frame.slot] = frame
            self._out_bytes += grow
            self._held_bytes += grow
        self._pushed = True
        if not self._dirty:  # the flush decides whether it may go out already
            self._dirty = True
            self._flusher.mark(self)

    def _release_held(self) -> None:
        """At a flush: the held signals go out once the transport's buffer is empty."""
        held = self._held
        assert held is not None
        transport = self.transport
        if self._sealed or transport.is_closing():
            self._drop_held()
            return
        if transport.get_write_buffer_size():
            if self._held_check is None:
                self._held_check = self._flusher._loop.call_later(HELD_CHECK, self._check_held)
            return
        self._held = None
        self._held_bytes = 0  # still counted, in _out now
        self._out.extend(held.values())
        self._pushed = True

    def _check_held(self) -> None:
        self._held_check = None
        if self._held is not None and not self._dirty:
            self._dirty = True
            self._flusher.mark(self)

    def _drop_held(self) -> None:
        self._held = None
        self._out_bytes -= self._held_bytes
        self._held_bytes = 0
        if self._held_check is not None:
            self._held_check.cancel()
            self._held_check = None

    @property
    def buffered_bytes(self) -> int:
        transport = self.transport
        pending = 0 if transport.is_closing() else transport.get_write_buffer_size()
        return self._out_bytes + pending

    @property
    def cut(self) -> bool:
        """Past twice the limit: what is pushed is dropped, and the connection is ending."""
        return self._cut

    def set_send_limit(self, limit: int, on_overflow: Callable[[], None]) -> None:
        self._limit = limit
        self._on_overflow = on_overflow
        self._overflowed = False
        self._told = False

    def queue_raw(self, data: bytes, *, counted: bool = False) -> None:
        """Queue bytes past the seal: the handshake, ``websocket.send``, the protocol's frames.

        They are never dropped, and count in ``_out_bytes`` like all that is queued.
        ``counted``: the flush holds them against the send limit, like pushes. Frames the
        protocol object makes on its own (pongs, close frames, pings) are counted: a peer that
        sends pings and never reads would otherwise grow the write buffer without bound. What
        ``websocket.send`` queues is not: that path waits for the transport to drain instead.
        """
        if self._eof:
            return
        (self._tail if self._sealed else self._out).append(data)
        self._out_bytes += len(data)
        if not self._dirty:
            self._dirty = True
            self._flusher.mark(self)
        if counted:
            self._pushed = True

    def flush_if_over(self) -> None:
        """Write now if what is queued takes the connection over its limit.

        The event loop may hand a connection many reads before the next flush (libuv reads a
        socket up to 32 times in a row): what each read makes us queue (pongs) is written at
        once, so that a peer that does not take it hits the limit before more is read.
        """
        if self._pushed and self._out_bytes + self._backlog > self._limit:
            self.flush()

    def queue_eof(self) -> None:
        """Half-close the TCP connection once everything queued is written."""
        self.seal()
        if not self._eof:
            self._eof = 1
        if not self._dirty:
            self._dirty = True
            self._flusher.mark(self)

    def seal(self) -> None:
        if not self._sealed:
            self._sealed = True
            self._tail = self._out
            self._out = _DISCARD

    def flush(self) -> None:
        self._dirty = False
        transport = self.transport
        if self._held is not None:
            self._release_held()
        chunks = self._tail if self._sealed else self._out
        if chunks:
            if transport.is_closing():
                self._clear()
                return
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._clear()
            transport.write(data)
            self._backlog = transport.get_write_buffer_size()
            # Only pushed and counted frames count against the limit: websocket.send waits
            # for the transport to drain instead, however large one message is.
            if self._pushed:
                self._pushed = False
                if self._backlog > self._limit:
                    self._over_limit()
        if self._eof == 1 and not transport.is_closing():
            self._eof = 2
            self.on_eof_flushed()

    def _over_limit(self) -> None:
        self.on_backlog()
        if not self._cut and self._out_bytes + self._backlog > 2 * self._limit:
            self._cut_off()  # the protocol's own frames (pongs) took it there
        self._overflow()

    def _clear(self) -> None:
        if self._out is not _DISCARD:
            self._out.clear()
        self._tail.clear()
        self._out_bytes = self._held_bytes  # what is held waits on

    def discard_outbox(self) -> None:
        self._direct = None
        # The owner's callback holds the owner, which holds this connection: let go of it now,
        # so that reference counting frees the ended connection, not the collector.
        self._on_overflow = None
        self.seal()
        self._drop_held()
        self._tail.clear()
        self._out_bytes = 0

    def _admit(self, size: int) -> bool:
        """Whether ``size`` more bytes may be queued, now that the running count suggests the
        limit is passed: looks at the transport's buffer again and applies the limit.

        Over the limit, the app is told (soon, from the loop); past twice it the bytes are
        refused, and so is everything after them (:meth:`_cut_off`), synchronously: one
        publication's fan-out to a connection with many subscriptions cannot grow it further.
        """
        if self._cut or self._sealed:
            return False
        transport = self.transport
        self._backlog = 0 if transport.is_closing() else transport.get_write_buffer_size()
        total = self._out_bytes + size + self._backlog
        if total > 2 * self._limit:
            self._cut_off()
            return False
        if total > self._limit:
            self._overflow()
        return True

    def _overflow(self) -> None:
        # Deferred: push() runs inside fan-out loops that the callback (closing a session) may
        # mutate.
        if not self._overflowed:
            self._overflowed = True
            self._told = False
            self._flusher._loop.call_soon(self._tell)

    def _cut_off(self) -> None:
        self._cut = True
        self._overflowed = True  # the app is told once, by _end_cut if not before
        # Sealed already: the peer makes the hub write (pongs to its pings) while it does not
        # read what is queued, the close included: the close handshake cannot finish.
        self._flusher._loop.call_soon(self.on_hard_overflow if self._sealed else self._end_cut)

    def _end_cut(self) -> None:
        # The app decides how its connection ends (the hub closes it as slow, whatever its
        # policy, seeing `cut`); one that was told before, or does not close, is closed here.
        if not self._told and not self._sealed:
            self._tell()
        if self._cut and not self._sealed:
            self.on_hard_overflow()

    def on_backlog(self) -> None:
        """What was written is over the limit and waits in the transport's buffer."""
        return None

    def _tell(self) -> None:
        if self._told:
            return
        self._told = True
        self._pushed = False
        on_overflow = self._on_overflow
        if on_overflow is None:
            self.on_overflow_default()
        else:
            on_overflow()

    def on_eof_flushed(self) -> None:
        raise NotImplementedError

    def on_overflow_default(self) -> None:
        raise NotImplementedError

    def on_hard_overflow(self) -> None:
        raise NotImplementedError


FASTLOOP_VERSION = 5  # the VERSION of _fastloop.c this code calls: a module of another is not used


def _compiled() -> tuple[Any, str]:
    try:
        import clarion.server._fastloop as _fastloop
    except ImportError:  # installed without a C compiler: the Python loops run
        return None, "not built"
    if getattr(_fastloop, "VERSION", None) != FASTLOOP_VERSION:
        return None, "built from an older source: reinstall clarion to rebuild them"
    _fastloop.bind(Outbox, Flusher, flusher.flush_one, _push_many, flusher.report)
    return _fastloop, ""


_FASTLOOP, NOT_COMPILED = _compiled()  # NOT_COMPILED: why the compiled loops are not available
COMPILED = False  # whether the compiled loops run (use_compiled sets it)
NO_RING = ""  # "" when their sends go through io_uring, else why not (use_compiled sets it)
push_many = _push_many


def use_compiled(enabled: bool = True, ring: bool = True) -> bool:
    """Run the compiled loops (if built) or the Python ones, from the next connection on, the
    compiled flush's sends batched through io_uring (``ring``) where the kernel allows it;
    returns whether the compiled ones run. For tests and benchmarks of both."""
    global COMPILED, NO_RING, push_many
    COMPILED = enabled and _FASTLOOP is not None
    if COMPILED:
        NO_RING = _FASTLOOP.use_ring(ring) or ("" if ring else "switched off")
    else:
        NO_RING = "no compiled loops"
    push_many = _FASTLOOP.push_many if COMPILED else _push_many
    flusher.flush_boxes = _FASTLOOP.flush_boxes if COMPILED else flusher.flush_each
    Outbox.push_many = staticmethod(push_many)
    return COMPILED


use_compiled(ring=False)  # a ring is opened by a server that starts (Server.start asks)
