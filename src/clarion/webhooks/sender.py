"""One delivery attempt: sign, POST, judge the answer."""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import parsedate_to_datetime

import httpx

from clarion.errors import ClarionError, os_reason
from clarion.protocol.numbers import ascii_int
from clarion.webhooks import signing
from clarion.webhooks.endpoint import Delivery, Endpoint
from clarion.webhooks.metrics import AttemptStats
from clarion.webhooks.outcome import Outcome, unexpected_failure
from clarion.webhooks.targets import AllowList, shown
from clarion.webhooks.transport import GuardedTransport

log = logging.getLogger("clarion.webhooks")

MAX_ERROR_CHARS = 300
# Retry-After: delta-seconds of up to ten ASCII digits (three centuries), or an HTTP date
# (29 characters; the obsolete forms a few more). Anything longer or else is ignored.
RETRY_AFTER_DIGITS = 10
RETRY_AFTER_CHARS = 64


class Sender:
    """Sends attempts through one connection pool; no redirects, bounded in time and size."""

    def __init__(
        self,
        allow: AllowList,
        *,
        timeout: float,
        max_response_bytes: int,
        max_connections: int,
        stats: AttemptStats | None = None,
    ) -> None:
        from clarion import __version__  # here: clarion/__init__ imports the hub, then us

        self.user_agent = f"clarion-webhooks/{__version__}"
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.stats = stats if stats is not None else AttemptStats()
        self.client = httpx.AsyncClient(
            transport=GuardedTransport(allow, max_connections=max_connections),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def attempt(self, endpoint: Endpoint, delivery: Delivery) -> Outcome:
        """One attempt's outcome; whatever the receiver answers, a failure is an outcome (to
        retry on the schedule, then dead-letter), never an exception."""
        started = time.perf_counter()
        try:
            outcome = await self._attempt(endpoint, delivery)
        except Exception as exc:
            outcome = unexpected_failure(endpoint, exc)
        self.stats.record(endpoint.id, outcome.delivered, time.perf_counter() - started)
        return outcome

    async def _attempt(self, endpoint: Endpoint, delivery: Delivery) -> Outcome:
        # Signed at each attempt: receivers reject timestamps more than minutes away from now.
        headers = signing.headers(endpoint.key, delivery.msg_id, int(time.time()), delivery.body)
        headers["content-type"] = "application/json"
        headers["user-agent"] = self.user_agent
        # The answer is read raw and bounded (an excerpt goes to last_error): ask for it plain.
        headers["accept-encoding"] = "identity"
        head: int | None = None  # the answer's status, once its head is in
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.stream(
                    "POST", endpoint.url, content=delivery.body, headers=headers
                ) as response:
                    head = response.status_code
                    excerpt = await self._read_bounded(response)
        except (TimeoutError, httpx.HTTPError) as exc:
            if head is not None and 200 <= head < 300:
                # Delivered: the receiver said so. A body that then never ends (or breaks
                # off) costs the connection, not a retry, which would be a duplicate.
                return Outcome(True, status=head)
            if isinstance(exc, TimeoutError | httpx.TimeoutException):
                return Outcome(False, f"no answer within {self.timeout:g}s")
            return Outcome(False, _failure(exc)[:MAX_ERROR_CHARS])
        except ClarionError as exc:  # the connect-time address check
            return Outcome(False, exc.message)
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(True, status=status)
        if 300 <= status < 400:
            # Without its query: a redirect to https often repeats the endpoint's own, and
            # last_error reaches the log.
            location = shown(response.headers.get("location", ""))[:200]
            error = f"HTTP {status} redirect to {location!r} not followed"
        else:
            text = excerpt.decode("utf-8", "replace").strip()
            error = f"HTTP {status}" + (f": {text}" if text else "")
        wait = retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        return Outcome(False, error[:MAX_ERROR_CHARS], status, wait)

    async def _read_bounded(self, response: httpx.Response) -> bytes:
        """At most ``max_response_bytes`` of the body; the rest is never read."""
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) >= self.max_response_bytes:
                break
        return bytes(body[: self.max_response_bytes])


def _failure(exc: httpx.HTTPError) -> str:
    """An attempt's failure as the operator reads it, in ``last_error``: the OS's reason when
    there is one ("cannot connect: connection refused"), the library's class only without."""
    reason = os_reason(exc)
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {reason or exc}"
    if reason is not None:
        return f"connection lost: {reason}"
    return str(exc) or type(exc).__name__


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (delta-seconds or an HTTP date); ``None`` when
    there is none or it is malformed."""
    if value is None:
        return None
    value = value.strip()
    if len(value) > RETRY_AFTER_CHARS:
        return None
    seconds = ascii_int(value, max_digits=RETRY_AFTER_DIGITS)
    if seconds is not None:
        return float(seconds)
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            return None
        return max(when.timestamp() - time.time(), 0.0)
    except Exception:
        # The receiver wrote it: a date the library cannot represent (year 99999999999 raises
        # OverflowError) is as malformed as any other, and a malformed one is ignored.
        return None
