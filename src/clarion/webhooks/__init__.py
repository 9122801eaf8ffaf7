"""Webhooks: every publication on matching channels, POSTed to other servers.

Signed per Standard Webhooks, in order per endpoint, at least once, from a durable outbox that
survives restarts, retried with backoff and dead-lettered when the schedule is spent. Targets on
loopback or private addresses are refused unless allow-listed. See ``docs/webhooks.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clarion import lazy

if TYPE_CHECKING:
    from clarion.webhooks.endpoint import Delivery, Endpoint
    from clarion.webhooks.kinds import EVENT_KINDS
    from clarion.webhooks.outbox import Outbox
    from clarion.webhooks.schedule import RetrySchedule
    from clarion.webhooks.service import WebhookService
    from clarion.webhooks.signing import generate_secret
    from clarion.webhooks.sqlite_outbox import SQLiteOutbox
    from clarion.webhooks.targets import UnsafeTarget

# Exports load on first use: every `clarion` command builds the `clarion webhooks` parser
# (clarion.webhooks.cli), which must not bring in the service, its HTTP client and the hub.
_EXPORTS = {
    "EVENT_KINDS": "clarion.webhooks.kinds",
    "Delivery": "clarion.webhooks.endpoint",
    "Endpoint": "clarion.webhooks.endpoint",
    "Outbox": "clarion.webhooks.outbox",
    "RetrySchedule": "clarion.webhooks.schedule",
    "SQLiteOutbox": "clarion.webhooks.sqlite_outbox",
    "UnsafeTarget": "clarion.webhooks.targets",
    "WebhookService": "clarion.webhooks.service",
    "generate_secret": "clarion.webhooks.signing",
}


__getattr__ = lazy.exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "EVENT_KINDS",
    "Delivery",
    "Endpoint",
    "Outbox",
    "RetrySchedule",
    "SQLiteOutbox",
    "UnsafeTarget",
    "WebhookService",
    "generate_secret",
]
