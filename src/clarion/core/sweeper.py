"""The hub's two timers: the sweep over sessions, and the read of the engine's revocations.

There is no timer per session: once a second one sweep sends heartbeats, closes silent, idle,
unauthenticated and expired sessions, and ends conflation once a backlog has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from clarion.core.auth import expired
from clarion.core.session import Backlogged
from clarion.protocol.codes import CloseCode

if TYPE_CHECKING:
    from clarion.core.hub import Hub

log = logging.getLogger("clarion.hub")

TICK = 1.0  # seconds between heartbeat / idle / expiry sweeps over sessions
# Seconds between reads of the engine's revocations: what a node missed (it was cut off from the
# others when a revocation was announced) is refused at the latest this long after.
REVOCATION_SYNC = 5.0


class Sweeper:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._timers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._timers = [
            asyncio.create_task(self._tick_forever(), name="clarion-hub-tick"),
            asyncio.create_task(self._sync_revocations_forever(), name="clarion-revocation-sync"),
        ]

    async def stop(self) -> None:
        timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.hub.stats.roll(time.monotonic())
                self.tick(time.monotonic())
            except Exception:
                log.exception("session sweep failed")

    def tick(self, now: float) -> None:
        """Heartbeats, idle sessions and expired tokens, for every session at once."""
        hub = self.hub
        limits = hub.settings.limits
        auth_enabled = hub.auth.enabled
        wall = time.time()
        for session in list(hub.sessions.values()):
            transport = session.transport
            if session.conflating and isinstance(transport, Backlogged):
                hub.local_channels.end_conflation(session, transport)
            silent = now - transport.last_activity
            if silent > limits.ping_interval + limits.pong_timeout:
                session.close(CloseCode.NO_PONG)
                continue
            if silent > limits.ping_interval and (
                session.pinged_at is None or now - session.pinged_at > limits.ping_interval
            ):
                session.pinged_at = now
                transport.ping()
            if (
                auth_enabled
                and session.user is None
                and not session.subscriptions
                and now - session.connected_at > limits.handshake_timeout
            ):
                session.close(CloseCode.HANDSHAKE_TIMEOUT)
                continue
            if session.idle_since is not None and now - session.idle_since > limits.idle_timeout:
                session.close(CloseCode.IDLE)
                continue
            expires = session.credentials.expires_at
            if expires is not None and expired(expires, wall):
                session.close(CloseCode.TOKEN_EXPIRED)

    async def _sync_revocations_forever(self) -> None:
        while True:
            await asyncio.sleep(REVOCATION_SYNC)
            try:
                await self.hub.registry.sync_revocations()
            except Exception:
                log.exception("revocation sync failed")
