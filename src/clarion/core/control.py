"""Node-wide commands — disconnects and the backend's subscriptions — and the subscriptions the
hub makes on its own initiative.

A command travels to every node as an engine control message; each node applies it to its own
sessions. A subscription the hub makes goes through the transport's ``hub_subscribe``, because
only the adapter knows its wire format.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from clarion.core.resume import position_for
from clarion.errors import ClarionError
from clarion.protocol.channels import validate_channel
from clarion.protocol.codes import CloseCode

if TYPE_CHECKING:
    from clarion.core.hub import Hub
    from clarion.core.session import Session

log = logging.getLogger("clarion.hub")


class Control:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def on_control(self, command: str, payload: dict[str, Any]) -> None:
        hub = self.hub
        if command == "disconnect":
            user = payload.get("user")
            jti = payload.get("jti")
            until = payload.get("until")
            if isinstance(user, str) or isinstance(jti, str):
                hub.registry.disconnect_local_user(
                    user if isinstance(user, str) else None,
                    int(payload.get("code") or CloseCode.DISCONNECTED),
                    token_id=jti if isinstance(jti, str) else None,
                    until=float(until) if isinstance(until, int | float) else None,
                )
        elif command in ("subscribe", "unsubscribe"):
            channel, since = payload.get("channel"), payload.get("since")
            if not isinstance(channel, str):
                return
            for session in hub.registry.addressed(payload):
                if command == "unsubscribe":
                    session.drop(channel, "server")
                else:
                    cursor = since if isinstance(since, str) else None
                    hub.spawn(self.subscribe_for(session, [channel], cursor, server=True))

    async def subscribe_for(
        self, session: Session, channels: Iterable[str], since: str | None = None, *, server: bool
    ) -> None:
        """Subscribe ``session`` to ``channels`` on the hub's initiative, telling the client
        with a ``subscribe`` push each (or an ``unsubscribe`` push with the error code).

        ``server``: the backend's grant (``POST /api/subscribe``); otherwise the token's ``subs``
        claim, whose channels its permissions must allow.
        """
        for channel in channels:
            if session.closed:
                return
            existing = session.subscriptions.get(channel)
            if existing is not None:
                existing.server = existing.server or server
                continue
            try:
                position = position_for(channel, since) if since is not None else None
                await session.transport.hub_subscribe(session, channel, position, server=server)
            except ClarionError as exc:
                if not session.closed and channel not in session.subscriptions:
                    session.transport.send_unsubscribe(channel, exc.code)
            except Exception:
                log.exception("subscribing %r to %s failed", session, channel)

    def subscribe_claimed(self, session: Session) -> None:
        if session.credentials.subs:
            self.hub.spawn(self.subscribe_for(session, session.credentials.subs, server=False))

    async def server_subscribe(
        self, channel: str, *, user: str | None, client: str | None, since: str | None = None
    ) -> None:
        validate_channel(channel)
        if since is not None:
            position_for(channel, since)  # a bad cursor is the caller's error, answered now
        payload = {"user": user, "client": client, "channel": channel, "since": since}
        await self.hub.engine.broadcast_control("subscribe", payload)

    async def server_unsubscribe(
        self, channel: str, *, user: str | None, client: str | None
    ) -> None:
        validate_channel(channel)
        payload = {"user": user, "client": client, "channel": channel}
        await self.hub.engine.broadcast_control("unsubscribe", payload)
