"""Endpoints and deliveries: the values the webhook outbox stores and the sender sends."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from clarion.errors import BadRequest
from clarion.protocol.channels import matches_any, validate_pattern
from clarion.protocol.cursor import encode_single
from clarion.webhooks.kinds import EVENT_KINDS
from clarion.webhooks.signing import secret_key

MAX_PATTERNS = 100


def new_endpoint_id() -> str:
    return "wh_" + os.urandom(8).hex()


def check_channels(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_PATTERNS:
        raise BadRequest(f"'channels' must be a list of at most {MAX_PATTERNS} channel patterns")
    return tuple(dict.fromkeys(validate_pattern(p) for p in value))


def check_events(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or any(kind not in EVENT_KINDS for kind in value):
        raise BadRequest(f"'events' must be a list of: {', '.join(EVENT_KINDS)}")
    return tuple(dict.fromkeys(value))


@dataclass(slots=True)
class Endpoint:
    """One receiver: where to POST, what to send it, and how to sign it."""

    id: str
    url: str
    channels: tuple[str, ...]
    secret: str
    events: tuple[str, ...] = ()
    source: str = "api"  # "api", or "config" for [[webhooks]] entries of clarion.toml
    created_at: int = 0  # milliseconds since the epoch
    disabled_reason: str | None = None
    last_error: str | None = None
    last_error_at: int | None = None
    last_msg_id: str | None = None
    last_delivered_at: int | None = None
    key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = secret_key(self.secret)

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None

    @property
    def failing(self) -> bool:
        """Not known to answer: it never delivered, or its last attempt failed (see
        :mod:`clarion.webhooks.slots`)."""
        delivered, failed = self.last_delivered_at, self.last_error_at
        return delivered is None or (failed is not None and failed >= delivered)

    def wants_channel(self, channel: str) -> bool:
        return matches_any(self.channels, channel)

    def wants_event(self, kind: str, payload: dict[str, Any]) -> bool:
        if kind not in self.events:
            return False
        channel = payload.get("channel")
        # Channel events follow the endpoint's channel patterns; connect/disconnect have none.
        return not isinstance(channel, str) or self.wants_channel(channel)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "channels": list(self.channels),
            "events": list(self.events),
            "source": self.source,
            "created_at": self.created_at,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_delivered": (
                None
                if self.last_msg_id is None
                else {"id": self.last_msg_id, "at": self.last_delivered_at}
            ),
        }


@dataclass(slots=True)
class Delivery:
    """One payload for one endpoint, pending in the outbox or dead in the dead-letter list."""

    endpoint: str
    msg_id: str
    kind: str  # "publication" or a lifecycle event kind
    body: bytes
    channel: str | None = None
    epoch: str | None = None
    offset: int | None = None
    created_at: float = 0.0  # wall-clock seconds
    seq: int = 0  # order within the outbox, assigned when stored
    attempts: int = 0
    first_failure: float | None = None
    next_attempt: float = 0.0
    last_error: str | None = None
    dead_at: float | None = None
    # The receiver's Retry-After, in seconds: the wait for the next attempt may be that long
    # (kept in memory only: after a restart the schedule's own wait applies).
    asked_wait: float = 0.0

    def describe(self, with_payload: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.msg_id,
            "kind": self.kind,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": int(self.created_at * 1000),
        }
        if self.channel is not None and self.epoch is not None and self.offset is not None:
            out["channel"] = self.channel
            out["offset"] = self.offset
            out["epoch"] = self.epoch
            out["cursor"] = encode_single(self.channel, self.epoch, self.offset)
        if self.dead_at is not None:
            out["dead_at"] = int(self.dead_at * 1000)
        if with_payload:
            # The stored body is JSON already: embed it as is instead of parsing it again.
            out["payload"] = orjson.Fragment(self.body)
        return out
