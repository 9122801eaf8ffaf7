"""Bounded fuzzing of every inbound parser: accepted, or rejected with a documented error.

The oracle is the one of ``docs/protocol.md``: a parser either returns a value or raises a
:class:`ClarionError` whose ``code`` is documented — never another exception, never a hang. A
longer coverage-guided run of the same targets is ``python fuzzing/run.py`` (atheris).
"""

from __future__ import annotations

import functools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clarion import Settings
from clarion.asgi import access
from clarion.core.auth import Authenticator
from clarion.core.hub import Hub
from clarion.errors import ClarionError
from clarion.protocol.channels import matches, validate_channel, validate_pattern
from clarion.protocol.cursor import Cursor
from clarion.protocol.messages import parse_command

DOCUMENTED = {
    "bad_request", "unknown_op", "bad_channel", "bad_cursor", "unauthorized", "token_expired",
    "forbidden", "revoked",
}  # fmt: skip

texts = st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))


@functools.cache
def _hub() -> Hub:
    """One hub for the examples: what is fuzzed reads only its settings."""
    return Hub(Settings(allowed_origins=["*", "https://a.example"], token_secret="s" * 32))


def _oracle(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except ClarionError as exc:
        assert exc.code in DOCUMENTED, exc.code


@settings(max_examples=300)
@given(texts)
def test_channel_names(text: str) -> None:
    _oracle(validate_channel, text)


@settings(max_examples=300)
@given(texts, texts)
def test_channel_patterns(pattern: str, channel: str) -> None:
    try:
        validate_pattern(pattern)
    except ClarionError as exc:
        assert exc.code == "bad_channel"
        return
    matches(pattern, channel)  # any valid pattern against any string: a bool, quickly


@settings(max_examples=300)
@given(texts)
def test_cursors(text: str) -> None:
    _oracle(Cursor.decode, text)


@settings(max_examples=300)
@given(texts)
def test_commands(text: str) -> None:
    _oracle(parse_command, text)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_query_strings(raw: bytes) -> None:
    scope = {"query_string": raw, "headers": []}
    assert isinstance(access.query(scope), dict)
    access.token_from(_hub(), scope)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.binary(max_size=400), st.binary(max_size=100))
def test_token_headers_and_cookies(auth: bytes, cookie: bytes, origin: bytes) -> None:
    headers = [(b"authorization", auth), (b"cookie", cookie), (b"origin", origin)]
    token = access.token_from(_hub(), {"headers": headers, "query_string": b""})
    authenticator = Authenticator(Settings(token_secret="s" * 32))
    if token is not None:
        _oracle(authenticator.verify, token)


@settings(max_examples=200)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_origins(origin: bytes, host: bytes) -> None:
    hub = Hub(Settings(allowed_origins=["https://a.example"], token_secret="s" * 32))
    scope = {"headers": [(b"origin", origin), (b"host", host)]}
    assert isinstance(access.origin_allowed(hub, scope), bool)


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from([b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-forwarded-proto"]),
        max_size=4,
    ),
    st.lists(st.binary(max_size=120), min_size=4, max_size=4),
    st.sampled_from(["x-forwarded-for", "forwarded", "x-real-ip"]),
)
def test_forwarded_headers(names: list[bytes], values: list[bytes], header: str) -> None:
    from clarion.core.hub import Hub

    hub = Hub(Settings(trusted_proxies=["127.0.0.0/8"], forwarded_header=header))
    scope = {"client": ("127.0.0.1", 5000), "headers": list(zip(names, values, strict=False))}
    forwarded = access.forwarded(hub, scope)
    assert forwarded.client is not None
    assert forwarded.scheme in (None, "http", "https")
    assert isinstance(access.origin_allowed(hub, {**scope, "headers": [(b"origin", values[0])]}),
                      bool)  # fmt: skip
