"""The one URL a user gives, and the endpoints derived from it."""

from __future__ import annotations

import pytest

from clarion.client.endpoints import Endpoints


@pytest.mark.parametrize(
    ("url", "http", "ws"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("https://rt.example.com/rt", "https://rt.example.com/rt", "wss://rt.example.com/rt/ws"),
        ("ws://127.0.0.1:8000/ws", "http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("wss://example.com/rt/ws/", "https://example.com/rt", "wss://example.com/rt/ws"),
        ("ws://example.com", "http://example.com", "ws://example.com/ws"),
    ],
)
def test_endpoints_follow_the_base_url(url: str, http: str, ws: str) -> None:
    endpoints = Endpoints.parse(url)
    assert (endpoints.http, endpoints.ws) == (http, ws)
    assert endpoints.url("/api/publish") == http + "/api/publish"


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8000", "ftp://example.com", "http://", "http://h/?x=1", "http://h/#top"]
)
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Endpoints.parse(url)
