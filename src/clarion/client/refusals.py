"""What the client does when the hub refuses it or ends its connection: one policy, every transport.

Every decision is read from the hub's own tables (:mod:`clarion.protocol.errors` for error codes,
:mod:`clarion.protocol.codes` for close codes). A refusal is one of:

- ``refresh``: the token expired and a token callable may give a fresh one: try again;
- ``backoff``: the error's close code invites a reconnect: try again after the backoff delay;
- ``stop``: the client ends (:class:`Disconnected`, with the error's close code);
- ``fail``: only this subscription or request fails, the client goes on.

A refused client API request (``/client/*``, over SSE and polling) is what an error reply to the
same op is over WebSocket, a :class:`RequestFailed`; only an expired token is treated as it is on
a connection (:func:`request_refused`).

``clarion.js`` decides the same way (its ``refusal``; a test compares the two on every code).
"""

from __future__ import annotations

from typing import Literal

from clarion.client.errors import Disconnected, RequestFailed
from clarion.client.tokens import TokenSource, refreshable
from clarion.protocol.codes import CloseCode, should_reconnect
from clarion.protocol.errors import ErrorCode, ErrorRule, rule_for

Verdict = Literal["refresh", "backoff", "stop", "fail"]

# Refusals of one channel (its permission, its name or cursor, its size). On an HTTP transport a
# subscription is a request of its own, so they end that subscription; any other refusal is of
# the client (its token, its address) and ends it.
_ONE_CHANNEL = frozenset({CloseCode.FORBIDDEN, CloseCode.BAD_REQUEST, CloseCode.MESSAGE_TOO_BIG})


class Retry(Exception):
    """This attempt failed in a way a later one may not: wait, then try again (not before
    ``wait`` seconds, when the hub named them: a rate limit's ``Retry-After``)."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


def error_rule(code: str, status: int = 0) -> ErrorRule:
    """The rule of ``code``; for a code outside the table (an application's own refusal, a
    proxy's answer) the rule its HTTP status implies (``status`` 0: it came over WebSocket)."""
    if status == 0 or status == 403:
        fallback = ErrorCode.FORBIDDEN  # the hub refuses with an application's code as Forbidden
    elif status == 401:
        fallback = ErrorCode.UNAUTHORIZED
    elif status in (408, 425, 429) or status >= 500:
        fallback = ErrorCode.INTERNAL  # busy or failing somewhere on the way: later
    else:
        fallback = ErrorCode.BAD_REQUEST
    return rule_for(code, fallback)


def verdict(code: str, status: int = 0, *, refreshable: bool, whole: bool) -> Verdict:
    """What a refusal with ``code`` means; ``whole``: it refused the connection (WebSocket
    ``connect``), not one subscription's stream."""
    rule = error_rule(code, status)
    if rule.close == CloseCode.TOKEN_EXPIRED:
        # The same token again would expire again: only a fresh one helps.
        return "refresh" if refreshable else "stop"
    # A budget that refills (a user's subscriptions, say): the same request, after its wait.
    if rule.reconnect or code == ErrorCode.RATE_LIMITED:
        return "backoff"
    return "stop" if whole or rule.close not in _ONE_CHANNEL else "fail"


def refused(error: RequestFailed, token: TokenSource, *, whole: bool) -> Exception:
    """The exception that carries out :func:`verdict` for ``error``."""
    decided = verdict(error.code, error.status, refreshable=refreshable(token), whole=whole)
    if decided in ("refresh", "backoff"):
        return Retry(f"{error.code}: {error.message}", error.retry_after)
    if decided == "stop":
        return Disconnected(error_rule(error.code, error.status).close, error.message)
    return error


def request_refused(error: RequestFailed, token: TokenSource) -> Exception:
    """What a refused client API request raises: ``error`` itself, as an error reply over
    WebSocket would; an expired token is refreshed (:class:`Retry`) or, a fixed one, stops the
    client as the hub closing a connection for it (4004) would."""
    if error_rule(error.code, error.status).close != CloseCode.TOKEN_EXPIRED:
        return error
    if refreshable(token):
        return Retry(f"{error.code}: {error.message}")
    return Disconnected(CloseCode.TOKEN_EXPIRED, error.message)


def stops(code: int | None, reconnect: bool | None, token: TokenSource) -> bool:
    """Whether a connection ended with close code ``code`` ends the client; ``reconnect`` is the
    hub's own word when it sent a ``disconnect`` signal (else the table's)."""
    if code == CloseCode.TOKEN_EXPIRED and not refreshable(token):
        return True
    return not (should_reconnect(code) if reconnect is None else reconnect)
