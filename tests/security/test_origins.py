"""Browser origins on every transport and both servers: configured origins and patterns only,
never the request's own ``Host``; loopback pages only in development mode."""

from __future__ import annotations

import pytest

from clarion import Settings
from clarion.core.auth import mint_token

from .servers import SERVERS, SUITE, TRANSPORTS, head, serve, try_origin

SECRET = "origin-secret-0123456789abcdef0123456789"

CONFIGURED = {
    "allowed_origins": ["https://app.example.com", "https://*.example.org", "http://localhost:*"],
    "token_secret": SECRET,
    "api_key": "k",
    "namespaces": {"default": {"anonymous": True}},
}

# (origin, extra headers, allowed?) — "{port}" is the hub's own port.
CONFIGURED_CASES = [
    ("https://app.example.com", {}, True),
    ("https://APP.Example.com:443", {}, True),  # same origin, other spelling
    ("https://a.b.example.org", {}, True),  # sub-domain pattern, any depth
    ("http://localhost:3000", {}, True),  # any-port pattern
    ("http://localhost", {}, True),
    ("https://example.org", {}, False),  # the apex is not a sub-domain
    ("https://evilexample.org", {}, False),
    ("https://app.example.com.evil.net", {}, False),
    ("http://app.example.com", {}, False),  # scheme differs
    ("https://app.example.com:8443", {}, False),  # port differs
    ("https://app.example.com/path", {}, False),  # not an origin
    ("https://user@app.example.com", {}, False),
    ("https://localhost:3000", {}, False),
    ("null", {}, False),
    ("evil://127.0.0.1:{port}", {}, False),
    ("http://127.0.0.1:{port}", {}, False),  # the request's own host is no credential
    ("https://127.0.0.1:{port}", {}, False),
    ("http://evil.example", {"Host": "evil.example"}, False),  # DNS rebinding
    ("http://evil.example:{port}", {"Host": "evil.example:{port}"}, False),
    ("https://app.example.com", {"Host": "evil.example"}, True),  # Host plays no part
]

DEVELOPMENT_CASES = [
    ("http://127.0.0.1:{port}", {}, True),
    ("http://localhost:5173", {}, True),  # a dev server on another port of this machine
    ("http://[::1]:8000", {}, True),
    ("http://app.localhost", {}, True),
    ("https://127.0.0.1:{port}", {}, False),  # an https page is not this http hub's origin
    ("evil://127.0.0.1:{port}", {}, False),
    ("http://127.0.0.1:{port}/path", {}, False),
    ("http://evil.example", {"Host": "evil.example"}, False),  # DNS rebinding
    ("http://evil.example:{port}", {"Host": "evil.example:{port}"}, False),
    ("http://10.0.0.5:{port}", {}, False),
    ("http://localhost.evil.example", {}, False),
    ("null", {}, False),
]


def _ids(cases: list[tuple[str, dict[str, str], bool]]) -> list[str]:
    return [f"{o}{'+' + h['Host'] if h else ''}" for o, h, _ in cases]


def _fill(text: str, port: int) -> str:
    return text.replace("{port}", str(port))


async def _check(running, transport, cases):  # type: ignore[no-untyped-def]
    wrong = []
    for origin, extra, expected in cases:
        origin = _fill(origin, running.port)
        headers = {k: _fill(v, running.port) for k, v in extra.items()}
        ok, response = await try_origin(running, transport, origin, **headers)
        if ok != expected:
            wrong.append((origin, headers, response.status))
    assert not wrong, wrong


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_configured_origins_only(server: str, transport: str) -> None:
    async with serve(server, Settings(**CONFIGURED)) as running:
        await _check(running, transport, CONFIGURED_CASES)
        ok, _ = await try_origin(running, transport, None)  # a non-browser client
        assert ok


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_development_mode_allows_loopback_pages_only(server: str, transport: str) -> None:
    async with serve(server, Settings()) as running:
        await _check(running, transport, DEVELOPMENT_CASES)


@pytest.mark.parametrize("transport", ["ws", "poll", "preflight-sse"])
async def test_public_url_is_the_hubs_own_origin(transport: str) -> None:
    settings = Settings(
        public_url="https://rt.example.com/clarion",
        token_secret=SECRET,
        api_key="k",
        namespaces={"default": {"anonymous": True}},
    )
    async with serve(SUITE, settings) as running:
        cases = [
            ("https://rt.example.com", {}, True),
            ("https://rt.example.com:443", {"Host": "elsewhere"}, True),
            ("http://rt.example.com", {}, False),
            ("https://app.example.com", {}, False),
            ("http://127.0.0.1:{port}", {}, False),
        ]
        await _check(running, transport, cases)


@pytest.mark.parametrize("transport", ["ws", "sse", "preflight-poll"])
async def test_scheme_from_a_trusted_proxy(transport: str) -> None:
    """Behind a TLS-terminating proxy the hub's public scheme is https, if the proxy says so."""
    async with serve(SUITE, Settings(trusted_proxies=["127.0.0.1"])) as running:
        https = {"X-Forwarded-Proto": "https"}
        cases = [
            ("https://localhost", https, True),
            ("http://localhost", https, False),
            ("http://localhost", {}, True),
            ("https://localhost", {}, False),
        ]
        await _check(running, transport, cases)
    # From a peer that is not a trusted proxy the header changes nothing.
    async with serve(SUITE, Settings(trusted_proxies=["10.0.0.0/8"])) as running:
        cases = [
            ("https://localhost", {"X-Forwarded-Proto": "https"}, False),
            ("http://localhost", {"X-Forwarded-Proto": "https"}, True),
        ]
        await _check(running, transport, cases)


def test_bad_configured_origins_refuse_to_start() -> None:
    bad_entries = [
        "app.example.com",
        "https://*example.com",
        "https://a.*.example.com",
        "https://app.example.com/",
        "https://*",
        "https://app.example.com:9999999",
    ]
    for bad in bad_entries:
        with pytest.raises(ValueError, match="origin"):
            Settings(allowed_origins=[bad])
    with pytest.raises(ValueError, match="public_url"):
        Settings(public_url="rt.example.com")


WILDCARD = {
    "allowed_origins": ["*", "https://app.example.com"],
    "token_secret": SECRET,
    "api_key": "k",
}


@pytest.mark.parametrize("server", SERVERS)
async def test_an_origin_admitted_by_the_wildcard_alone_gets_no_ambient_credentials(
    server: str,
) -> None:
    """With ``*`` any page may connect, but the browser attaches the visitor's token cookie to
    any page's request: from an origin no rule names, the cookie does not count (the page must
    present a token itself) and CORS answers without ``Allow-Credentials``."""
    token = mint_token(SECRET, "alice", ["chat:*"], publish=["chat:*"])
    cookie = f"clarion_token={token}"
    named, unnamed = "https://app.example.com", "https://anyone.example.net"
    async with serve(server, Settings(**WILDCARD)) as running:
        results = {}
        for origin in (named, unnamed):
            headers = {"Origin": origin, "Cookie": cookie}
            async with running.ws(additional_headers=headers) as ws:
                results["ws", origin] = "ok" in await ws.subscribe("chat:a")
            for name, target in (
                ("sse", "/sse?channel=chat:a"),
                ("poll", "/poll?channel=chat:a&timeout=0"),
            ):
                response = await head(running.port, "GET", target, headers)
                results[name, origin] = response.status == 200
                assert response.headers.get("access-control-allow-origin") == origin
                credentials = response.headers.get("access-control-allow-credentials")
                assert credentials == ("true" if origin == named else None), (name, origin)
            async with running.http() as http:
                published = await http.post(
                    "/client/publish", json={"channel": "chat:a", "data": 1}, headers=headers
                )
                results["publish", origin] = published.status_code == 200
        assert results == {
            **{(t, named): True for t in ("ws", "sse", "poll", "publish")},
            **{(t, unnamed): False for t in ("ws", "sse", "poll", "publish")},
        }
        # The same page presenting the token itself is served.
        async with running.ws(additional_headers={"Origin": unnamed}) as ws:
            assert "ok" in await ws.call("connect", token=token)
            assert "ok" in await ws.subscribe("chat:a")
        response = await head(
            running.port, "GET", f"/sse?channel=chat:a&token={token}", {"Origin": unnamed}
        )
        assert response.status == 200


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clarion.access"]


@pytest.mark.parametrize("server", SERVERS)
async def test_a_refused_origin_is_logged_once_a_minute_naming_the_setting(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A page that cannot connect leaves a line on the hub, whatever its transport: the origin
    and the setting that would let it in; the same origin again within the minute, none."""
    caplog.set_level("WARNING", logger="clarion.access")
    async with serve(server, Settings(**CONFIGURED)) as running:
        for transport in TRANSPORTS:
            origin = f"https://{transport}.example.net"
            for _ in range(3):
                ok, _ = await try_origin(running, transport, origin)
                assert not ok
        response = await head(
            running.port, "POST", "/client/publish", {"Origin": "https://publish.example.net"}
        )
        assert response.status == 403
        ok, _ = await try_origin(running, "sse", "https://app.example.com")
        assert ok
    lines = _refusals(caplog)
    expected = [f"'https://{name}.example.net'" for name in [*TRANSPORTS, "publish"]]
    assert len(lines) == len(expected), lines
    for origin, line in zip(expected, lines, strict=True):
        assert origin in line and "allowed_origins" in line and "public_url" in line, line


async def test_endless_distinct_origins_neither_flood_the_log_nor_grow_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from clarion.asgi import access

    caplog.set_level("WARNING", logger="clarion.access")
    async with serve(SUITE, Settings(**CONFIGURED)) as running:
        for n in range(60):
            ok, _ = await try_origin(running, "poll", f"https://x{n}.example.net")
            assert not ok
        refusals = access._policy(running.hub).refusals.lines
        assert len(refusals.logged) <= refusals.keys == 20
        assert len(_refusals(caplog)) == refusals.keys
        refusals.started -= refusals.every  # a minute on, without waiting for it
        ok, _ = await try_origin(running, "poll", "https://x0.example.net")
        assert not ok
    *_, again = _refusals(caplog)
    assert "'https://x0.example.net'" in again and "and 40 more like it" in again, again


async def test_a_request_without_an_origin_refused_is_logged_with_its_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="clarion.access")
    async with serve(SUITE, Settings(**CONFIGURED, allow_no_origin=False)) as running:
        ok, _ = await try_origin(running, "poll", None)
        assert not ok
    (line,) = _refusals(caplog)
    assert "without an Origin" in line and "allow_no_origin" in line and "/poll" in line, line


# Origins whose port is no ASCII number: superscript digits (str.isdigit() takes them and int()
# refuses them; one byte each in a latin-1 header), signs, blanks, too many digits, nothing.
BAD_PORTS = ["\u00b2", "8\u00b9", "\u00b3000", "+80", "-1", "0x50", "1_0", "123456", ""]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_an_origin_whose_port_is_no_number_is_refused(server: str, transport: str) -> None:
    """Refused like any origin that is none (403, never reflected), whether or not a configured
    origin would match its host, before any token is looked at."""
    hosts = ["https://app.example.com", "http://localhost", "http://127.0.0.1"]
    for settings in (Settings(**CONFIGURED), Settings()):
        async with serve(server, settings) as running:
            cases = [(f"{host}:{port}", {}, False) for host in hosts for port in BAD_PORTS]
            await _check(running, transport, cases)
