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
    "Subscription", "TransportName", "TransportUnavailable", "connect", "run_subscribe",
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


def test_every_error_is_exported_and_documented() -> None:
    """What the client raises can be caught by its name from ``clarion.client``, and the Errors
    table of docs/client.md says when it is raised (a subclass with its parent, as raised)."""
    import inspect
    from pathlib import Path

    import clarion.client.errors

    table = (Path(__file__).parents[2] / "docs" / "client.md").read_text()
    table = table.split("### Errors", 1)[1].split("\n## ", 1)[0]
    rows = {row.split(" | ", 1)[0].strip("| `") for row in table.splitlines() if "|" in row}
    for name, cls in inspect.getmembers(clarion.client.errors, inspect.isclass):
        if not issubclass(cls, ClarionError) or cls.__module__ != clarion.client.errors.__name__:
            continue
        assert getattr(clarion.client, name) is cls, f"{name} is not exported"
        parents = [p.__name__ for p in cls.__bases__ if p.__module__ == cls.__module__]
        shown = f"{name}({parents[0]})" if parents else name
        assert any(row.startswith(shown) for row in rows), f"{shown} is not in the Errors table"
