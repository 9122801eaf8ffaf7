"""Webhooks: every publication on matching channels, POSTed to other servers.

Signed per Standard Webhooks, in order per endpoint, at least once, from a durable outbox that
survives restarts, retried with backoff and dead-lettered when the schedule is spent. Targets on
loopback or private addresses are refused unless allow-listed. See ``docs/webhooks.md``.
"""

from clarion.webhooks.endpoint import EVENT_KINDS, Delivery, Endpoint
from clarion.webhooks.outbox import Outbox
from clarion.webhooks.schedule import RetrySchedule
from clarion.webhooks.service import WebhookService
from clarion.webhooks.signing import generate_secret
from clarion.webhooks.sqlite_outbox import SQLiteOutbox
from clarion.webhooks.targets import UnsafeTarget

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
