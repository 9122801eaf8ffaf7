"""This node's sessions — by id, user and address —, the caps on them, and revocations."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from clarion.core.auth import LEEWAY, Credentials
from clarion.core.limits import AddressCount, Refusals, Revocations
from clarion.core.operator import is_operator
from clarion.core.session import Session
from clarion.core.transport import Transport
from clarion.engines.base import RevocationMark
from clarion.errors import ClarionError, LimitExceeded, NodeFull, Unauthorized
from clarion.protocol.codes import CloseCode
from clarion.protocol.errors import ErrorCode
from clarion.protocol.proxies import address_key

if TYPE_CHECKING:
    from clarion.core.hub import Hub

log = logging.getLogger("clarion.hub")


class SessionRegistry:
    """Who is connected to this node, and who may not connect."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.sessions: dict[str, Session] = {}
        self.by_user: dict[str, set[Session]] = {}
        self.by_ip: dict[str, int] = {}
        # Open sessions by transport kind, operator sessions under OPERATORS: kept as they come
        # and go, so the node's once-a-second figures do not walk every session.
        self.kinds: Counter[str] = Counter()
        # The metrics' figures, kept the same way: open sessions and the subscriptions they hold,
        # by transport (operator sessions under theirs), so that a scrape walks no session.
        self.transports: Counter[str] = Counter()
        self.subscriptions: Counter[str] = Counter()
        limits = hub.settings.limits
        # Sockets without a session yet (STOMP before CONNECT), per address key and in all.
        self.pending = AddressCount(
            limits.max_pending_connections_per_ip,
            limits.max_pending_connections,
            Refusals(log, "WebSocket(s) without a session"),
        )
        self.revocations = Revocations()
        self._revocation_mark: RevocationMark | None = None  # where the last read left off

    def pending_key(self, client_ip: str | None) -> str | None:
        """What caps count a client address as (IPv6: its ``ipv6_prefix`` network)."""
        if client_ip is None:
            return None
        return address_key(client_ip, self.hub.settings.limits.ipv6_prefix)

    def open(
        self, transport: Transport, credentials: Credentials, client_ip: str | None = None
    ) -> Session:
        """Register a new connection. Raises :class:`LimitExceeded` when a cap is reached."""
        hub = self.hub
        limits = hub.settings.limits
        if len(self.sessions) >= limits.max_connections:
            raise NodeFull("this node holds its maximum number of connections")
        self.check_revoked(credentials)
        if credentials.user is not None:
            self._check_user_room(credentials.user)
        session = Session(hub, transport, credentials, client_ip)
        ip_key = session.ip_key
        if ip_key is not None and self.by_ip.get(ip_key, 0) >= limits.max_connections_per_ip:
            raise LimitExceeded(
                "too many connections from this address", code=ErrorCode.TOO_MANY_CONNECTIONS
            )
        self.sessions[session.id] = session
        self.kinds[_kind(session)] += 1
        self.transports[transport.kind] += 1
        if credentials.user is not None:
            self.by_user.setdefault(credentials.user, set()).add(session)
        if ip_key is not None:
            self.by_ip[ip_key] = self.by_ip.get(ip_key, 0) + 1
        if hub.admission.shared is not None and transport.kind != "poll":
            hub.spawn(hub.admission.admit(session))
        if session.reports_lifecycle():
            hub.emit("connect", session.info())
        hub.sweeper.watch(session, token=True)
        return session

    def _check_user_room(self, user: str) -> None:
        held = self.by_user.get(user)
        if held is not None and len(held) >= self.hub.settings.limits.max_connections_per_user:
            raise LimitExceeded(
                "too many connections for this user", code=ErrorCode.TOO_MANY_CONNECTIONS
            )

    def rename(self, session: Session, credentials: Credentials) -> None:
        """Index ``session`` under the user of its new ``credentials`` (caps checked first)."""
        self.check_revoked(credentials)
        old, new = session.user, credentials.user
        if new != old and new is not None:
            self._check_user_room(new)
        if old is not None and old != new:
            held = self.by_user.get(old)
            if held is not None:
                held.discard(session)
                if not held:
                    del self.by_user[old]
        was = _kind(session)
        session.credentials = credentials
        if session.id in self.sessions and _kind(session) != was:
            self.kinds[was] -= 1
            self.kinds[_kind(session)] += 1
        if new is not None:
            self.by_user.setdefault(new, set()).add(session)
        hub = self.hub
        if (
            new != old
            and hub.admission.shared is not None
            and session.id in self.sessions
            and session.transport.kind != "poll"
        ):
            hub.spawn(hub.admission.renamed(session, old))

    def forget(self, session: Session) -> None:
        """Take a closing ``session`` out of every index and count."""
        if self.sessions.pop(session.id, None) is not None:
            self.kinds[_kind(session)] -= 1
            self.transports[session.transport.kind] -= 1
        ip = session.ip_key
        if ip is not None:
            left = self.by_ip.get(ip, 1) - 1
            if left > 0:
                self.by_ip[ip] = left
            else:
                self.by_ip.pop(ip, None)
        if session.user is not None:
            held = self.by_user.get(session.user)
            if held is not None:
                held.discard(session)
                if not held:
                    del self.by_user[session.user]

    def addressed(self, payload: dict[str, Any]) -> list[Session]:
        """This node's sessions of ``payload``'s ``user``, or its session ``client``."""
        user, client = payload.get("user"), payload.get("client")
        if isinstance(user, str):
            return list(self.by_user.get(user, ()))
        session = self.sessions.get(client) if isinstance(client, str) else None
        return [session] if session is not None else []

    # ---- revocations -------------------------------------------------------------------------

    def check_revoked(self, credentials: Credentials) -> None:
        if self.revocations.refused(credentials.user, credentials.token_id):
            raise Unauthorized("this user or token was revoked", code=ErrorCode.REVOKED)

    def disconnect_local_user(
        self,
        user: str | None,
        code: int = CloseCode.DISCONNECTED,
        *,
        token_id: str | None = None,
        until: float | None = None,
    ) -> int:
        """Close a user's (or a token's) sessions on this node; refuse them until ``until``."""
        if until is not None:
            self.revocations.revoke(user=user, token_id=token_id, until=until)
        if user is not None:
            sessions = list(self.by_user.get(user, ()))
        else:
            sessions = [s for s in self.sessions.values() if s.credentials.token_id == token_id]
        for session in sessions:
            session.close(code)
        return len(sessions)

    async def disconnect_user(
        self,
        user: str | None,
        code: int = CloseCode.DISCONNECTED,
        *,
        token_id: str | None = None,
        until: float | None = None,
        exp: float | None = None,
    ) -> None:
        engine = self.hub.engine
        if until is None and token_id is not None:
            # Until the token is refused anyway: its exp, plus the leeway it is accepted within.
            until = (
                exp + LEEWAY if exp is not None else time.time() + self.hub.settings.revocation_ttl
            )
        failure: ClarionError | None = None
        if until is not None and until > time.time():
            try:
                if user is not None:
                    await engine.revoke("user", user, until)
                if token_id is not None:
                    await engine.revoke("jti", token_id, until)
            except ClarionError as exc:
                failure = exc  # the sessions are still closed; the caller learns it did not last
        payload: dict[str, Any] = {"user": user, "code": code, "jti": token_id, "until": until}
        await engine.broadcast_control("disconnect", payload)
        if failure is not None:
            raise failure

    async def sync_revocations(self) -> None:
        """Take in the revocations the engine holds that this node may have missed: those made
        since the last read (all of them at the first)."""
        self.revocations.expire()
        try:
            mark, entries = await self.hub.engine.revocations(self._revocation_mark)
        except ClarionError as exc:
            log.warning("could not read revocations: %s", exc.message)
            return
        for kind, key, until in entries:
            if self.revocations.add(kind, key, until):  # missed: its sessions may still be open
                user, jti = (key, None) if kind == "user" else (None, key)
                self.disconnect_local_user(user, token_id=jti)
        # Only once all are in: a read that failed half-way is read again from the old mark.
        self._revocation_mark = mark


OPERATORS = "operator"  # the key of operator sessions in SessionRegistry.kinds


def _kind(session: Session) -> str:
    return OPERATORS if is_operator(session.credentials) else session.transport.kind
