"""What one delivery attempt came to: :class:`Outcome`, which the worker acts on."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clarion.core.limits import LogLimit
from clarion.webhooks.endpoint import Endpoint

log = logging.getLogger("clarion.webhooks")
# A receiver may make every attempt fail unexpectedly: a traceback per endpoint a minute.
_unexpected = LogLimit(log)


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    error: str | None = None
    status: int | None = None
    retry_after: float | None = None  # seconds a 429 or 503 asked to wait (``Retry-After``)

    @property
    def gone(self) -> bool:
        """``410 Gone``: the receiver says this endpoint no longer exists."""
        return self.status == 410


def unexpected_failure(endpoint: Endpoint, exc: Exception) -> Outcome:
    """An attempt that raised what no rule foresaw: logged (a line per endpoint a minute) and
    failed, so that it counts as an attempt and its delivery still reaches the dead letters."""
    _unexpected.log(
        logging.ERROR,
        endpoint.id,
        "webhook %s: an attempt failed unexpectedly",
        endpoint.id,
        exc_info=exc,
    )
    return Outcome(False, f"unexpected error: {type(exc).__name__}")
