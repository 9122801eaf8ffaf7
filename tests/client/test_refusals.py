"""The client's one policy for refusals and closes, read from the hub's tables."""

from __future__ import annotations

import pytest

from clarion.client.errors import Disconnected, RequestFailed
from clarion.client.refusals import Retry, refused, stops, verdict
from clarion.protocol.codes import CloseCode


@pytest.mark.parametrize(
    ("code", "status", "whole", "expected"),
    [
        # The token: a fresh one may help, else nothing will.
        ("unauthorized", 401, False, "stop"),
        ("revoked", 401, False, "stop"),
        ("unauthorized", 0, True, "stop"),
        # One channel's refusal ends its own stream, but a refused connection ends the client.
        ("forbidden", 403, False, "fail"),
        ("bad_cursor", 400, False, "fail"),
        ("too_many_channels", 400, False, "fail"),
        ("forbidden", 0, True, "stop"),
        ("banned", 403, False, "fail"),  # an application's own code: Forbidden's rule
        ("banned", 0, True, "stop"),
        # The hub is busy or failing: later.
        ("node_full", 503, False, "backoff"),
        ("shutting_down", 503, True, "backoff"),
        ("hook_unavailable", 503, True, "backoff"),
        ("engine_unavailable", 503, False, "backoff"),
        ("http_502", 502, False, "backoff"),  # a proxy's page, no clarion body
        ("http_429", 429, False, "backoff"),
        # A cap on this client's connections is the client's to fix, as over WebSocket (4503).
        ("too_many_connections", 429, False, "stop"),
        ("too_many_connections", 0, True, "stop"),
        ("http_418", 418, False, "fail"),
    ],
)
def test_what_a_refusal_means(code: str, status: int, whole: bool, expected: str) -> None:
    assert verdict(code, status, refreshable=True, whole=whole) == expected
    assert verdict(code, status, refreshable=False, whole=whole) == expected


def test_an_expired_token_is_retried_only_when_a_fresh_one_can_come() -> None:
    assert verdict("token_expired", 401, refreshable=True, whole=False) == "refresh"
    assert verdict("token_expired", 401, refreshable=False, whole=False) == "stop"
    error = RequestFailed("token expired", code="token_expired", status=401)
    assert isinstance(refused(error, lambda: "fresh", whole=False), Retry)
    stopped = refused(error, "the same token", whole=False)
    assert isinstance(stopped, Disconnected) and stopped.close_code == CloseCode.TOKEN_EXPIRED


def test_a_refusal_becomes_the_exception_that_carries_it_out() -> None:
    forbidden = RequestFailed("not yours", code="forbidden", status=403)
    assert refused(forbidden, None, whole=False) is forbidden
    ended = refused(forbidden, None, whole=True)
    assert isinstance(ended, Disconnected)
    assert (ended.close_code, ended.reason) == (CloseCode.FORBIDDEN, "not yours")
    full = refused(RequestFailed("full", code="node_full", status=503), None, whole=False)
    assert isinstance(full, Retry) and "node_full" in str(full)


def test_a_close_ends_the_client_by_the_table_or_the_hubs_own_word() -> None:
    assert not stops(None, None, "t") and not stops(1006, None, "t")
    assert not stops(CloseCode.SHUTDOWN, None, "t")
    assert stops(CloseCode.DISCONNECTED, None, "t")
    assert stops(CloseCode.SHUTDOWN, False, "t")  # the hub's disconnect signal wins
    assert not stops(CloseCode.FORBIDDEN, True, "t")
    assert stops(CloseCode.TOKEN_EXPIRED, None, "fixed") and stops(
        CloseCode.TOKEN_EXPIRED, True, None
    )
    assert not stops(CloseCode.TOKEN_EXPIRED, None, lambda: "fresh")


def test_an_answer_without_the_hubs_body_is_read_by_its_status() -> None:
    import httpx

    from clarion.client.api import failure

    def refused(status: int) -> str:
        error = failure(httpx.Response(status, text="<html>busy</html>"))
        return verdict(error.code, error.status, refreshable=False, whole=False)

    assert refused(429) == "backoff"  # a proxy's rate limit: later
    assert refused(502) == "backoff"
    assert refused(401) == "stop"
    assert refused(403) == "fail"
    assert refused(413) == "fail"
