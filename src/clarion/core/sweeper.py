"""The hub's two timers: the sweep over sessions, and the read of the engine's revocations.

There is no timer per session: once a second one sweep sends heartbeats, closes silent, idle,
unauthenticated and expired sessions, and ends conflation once a backlog has drained. It looks
only at the sessions that may be due. Each session waits in a wheel of one-second slots, in the
slot of the earliest time one of its checks could act (a ping, a missing pong, the handshake,
idleness); it is checked at that second's sweep, exactly as before, and put in the slot of its
next such time. A session's activity only moves its times later, so it is rechecked (and
moved on) when its old slot comes; what can make a time earlier (losing its last subscription)
schedules it again at once. Tokens wait in a heap by their ``exp``, on the wall clock they are
judged by, so that a step of that clock closes the sessions it overtakes at the next sweep.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from typing import TYPE_CHECKING

from clarion import tasks
from clarion.core.auth import expired
from clarion.core.transport import Backlogged
from clarion.protocol.codes import CloseCode

if TYPE_CHECKING:
    from clarion.core.hub import Hub
    from clarion.core.session import Session

log = logging.getLogger("clarion.hub")

TICK = 1.0  # seconds between heartbeat / idle / expiry sweeps over sessions
# Seconds between reads of the engine's revocations: what a node missed (it was cut off from the
# others when a revocation was announced) is refused at the latest this long after.
REVOCATION_SYNC = 5.0


class Sweeper:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._timers: list[asyncio.Task[None]] = []
        # Slot -> ids of the sessions to check at that slot's sweep: a wheel of one-second
        # slots (a sweep is once a second, so finer is of no use), in phase with the sweeps:
        # slot n is swept by the first sweep at or after n + the phase (the fraction of a
        # second of the last sweep's time). Ids, not sessions: an ended session's entry holds
        # nothing of it until it comes up.
        self._slots: dict[int, list[str]] = {}
        now = time.monotonic()
        self._phase = now % 1.0
        self._swept = math.floor(now)  # the last slot swept
        # (exp, session id), by the wall clock: the sessions' tokens.
        self._expiry: list[tuple[float, str]] = []
        # Sessions whose conflation may end: looked at on every sweep.
        self.conflating: set[Session] = set()

    def start(self) -> None:
        self._timers = [
            asyncio.create_task(self._tick_forever(), name="clarion-hub-tick"),
            asyncio.create_task(self._sync_revocations_forever(), name="clarion-revocation-sync"),
        ]

    async def stop(self) -> None:
        timers, self._timers = self._timers, []
        # Bounded, re-cancelling: the revocation sync reads through the engine, which may lose
        # a cancel (see clarion.tasks).
        await tasks.stop(timers)

    async def _tick_forever(self) -> None:
        while True:
            await tasks.tick(TICK)  # after a stall, what peers sent meanwhile is read first
            try:
                self.hub.stats.roll()
                self.tick(time.monotonic())
            except Exception:
                log.exception("session sweep failed")

    def watch(self, session: Session, *, token: bool = False) -> None:
        """Schedule ``session``'s checks (a new session, or one whose times may be earlier);
        ``token``: it has new credentials, whose expiry is watched too."""
        self._schedule(session, self._next(session, time.monotonic()))
        expires = session.credentials.expires_at
        if token and expires is not None:
            heapq.heappush(self._expiry, (expires, session.id))

    def _schedule(self, session: Session, when: float) -> None:
        # The first sweep at or after ``when`` (sweeps come a little over a second apart; one
        # that comes before ``when`` finds nothing to do and moves the session on to the next),
        # and never a slot already swept.
        # (Less a microsecond: rounding must not push a session one sweep late.)
        slot = max(math.ceil(when - self._phase - 1e-6), self._swept + 1)
        if slot < session.sweep_at:
            session.sweep_at = slot
            held = self._slots.get(slot)
            if held is None:
                self._slots[slot] = [session.id]
            else:
                held.append(session.id)

    def tick(self, now: float) -> None:
        """Heartbeats, idle sessions and expired tokens, for the sessions due by ``now``."""
        hub = self.hub
        if self.conflating:
            for conflated in list(self.conflating):
                transport = conflated.transport
                if conflated.conflating and isinstance(transport, Backlogged):
                    hub.local_channels.end_conflation(conflated, transport)
                if conflated.closed or not conflated.conflating:
                    self.conflating.discard(conflated)
        sessions = hub.sessions
        slots = self._slots
        self._phase = now % 1.0
        last = math.floor(now)
        if slots and last > self._swept:
            first = self._swept + 1
            if last - first > len(slots):  # the loop stood still a long while: only held slots
                due = sorted(slot for slot in slots if slot <= last)
            else:
                due = [slot for slot in range(first, last + 1) if slot in slots]
            self._swept = last
            for slot in due:
                for sid in slots.pop(slot):
                    session = sessions.get(sid)
                    if session is None or session.sweep_at != slot:
                        continue  # ended, or scheduled again since
                    session.sweep_at = math.inf
                    when = self._check(session, now)
                    if when is not None:
                        self._schedule(session, when)
        else:
            self._swept = max(self._swept, last)
        self._expire(sessions)

    def _expire(self, sessions: dict[str, Session]) -> None:
        expiry = self._expiry
        if len(expiry) > 2 * len(sessions) + 1024:  # mostly ended sessions' entries: rebuilt
            expiry[:] = [
                (s.credentials.expires_at, sid)
                for sid, s in sessions.items()
                if s.credentials.expires_at is not None
            ]
            heapq.heapify(expiry)
        wall = time.time()
        while expiry and expired(expiry[0][0], wall):
            expires, sid = heapq.heappop(expiry)
            session = sessions.get(sid)
            if session is not None and session.credentials.expires_at == expires:
                session.close(CloseCode.TOKEN_EXPIRED)

    def _check(self, session: Session, now: float) -> float | None:
        """The checks of one session; the time of its next one, or ``None`` if it was closed."""
        limits = self.hub.settings.limits
        transport = session.transport
        last = transport.last_activity
        pinged = session.pinged_at
        if pinged is not None and pinged > last:
            # Dead: silent since a ping that had its time to be answered. Silence alone is
            # not enough: after a stall of the hub's own, its peers were silent because it
            # sent them no ping.
            if now - pinged >= limits.pong_timeout:
                session.close(CloseCode.NO_PONG)
                return None
        elif now - last > limits.ping_interval:
            session.pinged_at = now
            transport.ping()
            last = transport.last_activity  # a pong may be in already (or a stream's write)
        if (
            self.hub.auth.enabled
            and session.user is None
            and not session.began
            and now - session.connected_at > limits.handshake_timeout
        ):
            session.close(CloseCode.HANDSHAKE_TIMEOUT)
            return None
        if session.idle_since is not None and now - session.idle_since > limits.idle_timeout:
            session.close(CloseCode.IDLE)
            return None
        return self._next(session, now, last)

    def _next(self, session: Session, now: float, last: float | None = None) -> float:
        """The earliest time one of ``session``'s checks could act, as things stand."""
        limits = self.hub.settings.limits
        if last is None:
            last = session.transport.last_activity
        pinged = session.pinged_at
        if pinged is not None and pinged > last:
            when = pinged + limits.pong_timeout  # its ping's answer is due
        else:
            when = last + limits.ping_interval  # the next ping
        if self.hub.auth.enabled and session.user is None and not session.began:
            when = min(when, session.connected_at + limits.handshake_timeout)
        if session.idle_since is not None:
            when = min(when, session.idle_since + limits.idle_timeout)
        return when

    async def _sync_revocations_forever(self) -> None:
        while True:
            await asyncio.sleep(REVOCATION_SYNC)
            try:
                await self.hub.registry.sync_revocations()
            except Exception:
                log.exception("revocation sync failed")
