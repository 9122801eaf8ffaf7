"""The client's public surface is pinned: a change to it is a decision, not an accident."""

from __future__ import annotations

import clarion.client
from clarion.client import ClientClosed, Disconnected, RequestFailed, RequestTimeout
from clarion.errors import BadChannel, BadCursor, ClarionError

EXPECTED = {
    "Backoff", "BadChannel", "BadCursor", "Client", "ClientClosed", "ConnectFailed",
    "ConnectionLost", "Disconnected",
    "History", "Member", "Message", "PresenceStats", "PresentUser", "Published", "RequestFailed",
    "RequestTimeout", "Reset",
    "Subscription", "TransportName", "connect", "run_subscribe",
}  # fmt: skip


def test_public_api_is_pinned() -> None:
    assert set(clarion.client.__all__) == EXPECTED
    for name in clarion.client.__all__:
        assert getattr(clarion.client, name) is not None


def test_errors_share_clarions_root() -> None:
    for name in ("ClientClosed", "ConnectFailed", "ConnectionLost", "RequestFailed"):
        assert issubclass(getattr(clarion.client, name), ClarionError)
    # What subscribe() raises for a bad argument is clarion's own class, not a copy.
    assert (clarion.client.BadChannel, clarion.client.BadCursor) == (BadChannel, BadCursor)
    assert issubclass(Disconnected, ClientClosed)
    assert issubclass(RequestTimeout, TimeoutError)
    error = Disconnected(4501, "disconnected")
    assert (error.close_code, error.reason, error.code) == (4501, "disconnected", "disconnected")
    failed = RequestFailed.from_wire({"code": "forbidden", "message": "no"}, 403)
    assert (failed.code, failed.message, failed.status) == ("forbidden", "no", 403)
