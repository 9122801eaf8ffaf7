"""Caps and rates that span connections: per user and per IP, shared by every node when the
engine offers shared counters (Redis), kept by this node otherwise."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from clarion.core.limits import Allowances
from clarion.engines.base import SharedLimits
from clarion.errors import ClarionError
from clarion.protocol.codes import CloseCode

if TYPE_CHECKING:
    from clarion.core.hub import Hub
    from clarion.core.session import Session

log = logging.getLogger("clarion.admission")


class Admission:
    """Counts sessions against the shared per-user and per-IP caps; the per-user publish rate."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.shared: SharedLimits | None = None  # set when the hub starts
        self._held: dict[str, list[tuple[str, str]]] = {}  # session id -> counted (kind, key)
        limits = hub.settings.limits
        # Per user, when nothing is shared; kept after the user's last session on this node
        # ends, or reconnecting would refill it.
        self._user_rates = Allowances(
            limits.client_publish_rate_per_user or 1.0, limits.client_publish_burst
        )
        self._failing = False  # the shared counts are unreachable (logged once per outage)

    def holds(self, session_id: str, user: str | None = None) -> bool:
        """Whether ``session_id`` is counted on every node (under ``user``, if given)."""
        held = self._held.get(session_id)
        return held is not None and (user is None or ("user", user) in held)

    async def admit(self, session: Session) -> None:
        """Count ``session`` against the caps every node shares; close it when over one.

        The local caps were checked synchronously already; this runs right after, so a client
        over a cluster-wide cap is told (4503) moments after connecting. When the engine cannot
        be reached the local caps alone apply.
        """
        shared = self.shared
        if shared is None or session.closed:
            return
        limits = self.hub.settings.limits
        held = self._held.setdefault(session.id, [])
        checks = [
            ("ip", session.ip_key, limits.max_connections_per_ip),
            ("user", session.user, limits.max_connections_per_user),
        ]
        for kind, key, cap in checks:
            if key is None:
                continue
            try:
                admitted = await shared.acquire_connection(kind, key, session.id, cap)
            except (ClarionError, OSError) as exc:
                self._unavailable("shared connection counts unavailable: %s", exc)
                # Admitted by the local caps alone; the engine counts it once it can, so it
                # is released as any other (at once, if it closed while the engine failed).
                if session.closed:
                    await self._release(shared, [(kind, key)], session.id)
                    return
                held.append((kind, key))
                continue
            self._available()
            if session.closed:  # closed meanwhile: what was held is being released already
                if admitted:
                    await self._release(shared, [(kind, key)], session.id)
                return
            if not admitted:
                session.close(CloseCode.TOO_MANY_CONNECTIONS)
                return
            if (kind, key) not in held:  # renamed() may have counted it meanwhile
                held.append((kind, key))

    async def renamed(self, session: Session, old: str | None) -> None:
        """``session`` took another user (its token in the ``connect`` op, after it opened
        without one): count it under that user on every node, no longer under the old one, or
        each node would hold the user's cap of such sessions."""
        shared = self.shared
        if shared is None or session.closed:
            return
        held = self._held.setdefault(session.id, [])
        if old is not None and ("user", old) in held:
            held.remove(("user", old))
            await self._release(shared, [("user", old)], session.id)
        new = session.user
        if new is None or ("user", new) in held or session.closed:
            return
        cap = self.hub.settings.limits.max_connections_per_user
        try:
            admitted = await shared.acquire_connection("user", new, session.id, cap)
        except (ClarionError, OSError) as exc:
            self._unavailable("shared connection counts unavailable: %s", exc)
            admitted = True  # the local cap alone, as in admit()
        if session.closed:  # closed meanwhile: what was held is being released already
            if admitted:
                await self._release(shared, [("user", new)], session.id)
            return
        if not admitted:
            session.close(CloseCode.TOO_MANY_CONNECTIONS)
            return
        if ("user", new) not in held:
            held.append(("user", new))

    async def release(self, session_id: str) -> None:
        held = self._held.pop(session_id, [])
        if self.shared is not None and held:
            await self._release(self.shared, held, session_id)

    async def _release(
        self, shared: SharedLimits, held: list[tuple[str, str]], session_id: str
    ) -> None:
        for kind, key in held:
            try:
                await shared.release_connection(kind, key, session_id)
            except (ClarionError, OSError) as exc:
                # No longer refreshed by this node, the count lapses within the presence TTL.
                self._unavailable("could not release a shared connection count: %s", exc)

    def _unavailable(self, message: str, exc: BaseException) -> None:
        # A burst of connections during an outage would otherwise log one line each.
        if not self._failing:
            self._failing = True
            log.warning(message + "; this node's own counts apply until it is back", exc)

    def _available(self) -> None:
        if self._failing:
            self._failing = False
            log.info("shared connection counts available again")

    async def check_user_rate(self, session: Session) -> bool:
        """The per-user publish rate (``client_publish_rate_per_user``), shared when possible."""
        limits = self.hub.settings.limits
        rate = limits.client_publish_rate_per_user
        user = session.user
        if rate is None or user is None:
            return True
        if self.shared is not None:
            try:
                return await self.shared.take_token(
                    f"user:{user}", rate, limits.client_publish_burst
                )
            except (ClarionError, OSError) as exc:
                self._unavailable("shared publish rate unavailable: %s", exc)
        return self._user_rates.take(user)
