"""Who is calling: client addresses, API keys, connection tokens and browser origins, read
from ASGI scopes. Every transport, on every server, asks here."""

from __future__ import annotations

import hmac
import logging
import weakref
from collections.abc import Iterable
from urllib.parse import parse_qs

from clarion.asgitypes import Scope
from clarion.core.auth import Credentials
from clarion.core.hub import Hub
from clarion.core.limits import LogLimit, excerpt
from clarion.errors import BadRequest, ClarionError, Forbidden, Unauthorized
from clarion.protocol.cookies import cookie_value
from clarion.protocol.errors import ErrorCode
from clarion.protocol.origins import OriginPolicy
from clarion.protocol.proxies import Forwarded, TrustedProxies, elsewhere, resolve

TOKEN_COOKIE = "clarion_token"

log = logging.getLogger("clarion.access")


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            try:
                return str(value.decode("latin-1"))
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
                return None
    return None


Params = dict[str, list[str]]

MAX_QUERY_FIELDS = 600


def query_params(
    scope: Scope, max_fields: int = MAX_QUERY_FIELDS, too_many: ClarionError | None = None
) -> Params:
    """The query string's parameters, each name with its values in order; the one parser of
    every raw HTTP endpoint. Raises :class:`BadRequest` when the query is not UTF-8, and
    ``too_many`` (by default a :class:`BadRequest`) past ``max_fields`` parameters."""
    raw = scope.get("query_string", b"")
    if not raw:  # most requests (a WebSocket's with its token elsewhere): parse_qs's answer
        return {}
    try:
        return parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=max_fields)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8") from None
    except ValueError:  # more fields than any valid request has
        raise too_many or BadRequest(f"more than {max_fields} query parameters") from None


def single_param(params: Params, name: str) -> str | None:
    """The one value of ``name``; :class:`BadRequest` when it is given more than once."""
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} given more than once")
    return values[0]


def query(scope: Scope) -> Params:
    """The query's parameters, or none when it cannot be read (where it is only looked into)."""
    try:
        return query_params(scope)
    except ClarionError:
        return {}


class _Policy:
    """What the settings say about proxies and origins, parsed once per hub."""

    __slots__ = ("api_keys", "forwarded_header", "origins", "proxies", "refusals")

    def __init__(self, hub: Hub) -> None:
        settings = hub.settings
        self.api_keys = ApiKeys(settings.api_keys, open=settings.development_mode)
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.forwarded_header = settings.forwarded_header
        allowed = list(settings.allowed_origins)
        public = settings.public_origin
        if public is not None:
            allowed.append(str(public))
        self.origins = OriginPolicy(
            allowed, loopback_only=not allowed and settings.development_mode
        )
        self.refusals = _RefusalLog()


class _RefusalLog:
    """Says which origins the hub refuses, so that a page that cannot connect leaves a trace
    where the operator looks: each origin once a minute, and at most 20 origins a minute in
    all (:class:`LogLimit`)."""

    SHOWN_CHARS = 120  # an Origin header is the client's text: shown cut, quoted (repr)

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines = LogLimit(log, every=60.0, keys=20)

    def refused(self, origin: str | None, path: str) -> None:
        if origin is None:
            self.lines.log(
                logging.WARNING,
                "",
                "refused a request without an Origin header on %s: allow_no_origin is false",
                excerpt(path),
            )
            return
        cut = origin[: self.SHOWN_CHARS]
        self.lines.log(
            logging.WARNING,
            cut,
            "refused browser origin %s on %s (403): to let its pages connect, add it to "
            "allowed_origins (CLARION_ALLOWED_ORIGINS), or set public_url "
            "(CLARION_PUBLIC_URL) if the hub serves the page itself",
            excerpt(origin, self.SHOWN_CHARS),
            excerpt(path),
        )


_policies: weakref.WeakKeyDictionary[Hub, _Policy] = weakref.WeakKeyDictionary()


def _policy(hub: Hub) -> _Policy:
    policy = _policies.get(hub)
    if policy is None:
        policy = _policies[hub] = _Policy(hub)
    return policy


def forwarded(hub: Hub, scope: Scope) -> Forwarded:
    """The client address and public scheme of this request, behind trusted proxies."""
    client = scope.get("client")
    peer = str(client[0]) if client else None
    policy = _policy(hub)
    if not policy.proxies:  # the common case without a proxy: nothing to parse
        return Forwarded(peer, None)
    return resolve(peer, scope.get("headers", ()), policy.proxies, policy.forwarded_header)


def from_elsewhere(scope: Scope) -> bool:
    """Did this request's connection come from another machine? Its peer's address, not a
    proxy's word: the rule it serves is about who can reach the hub's socket."""
    client = scope.get("client")
    return elsewhere(str(client[0]) if client else None)


def client_address(hub: Hub, scope: Scope) -> str | None:
    """The address of the client that made this request: what caps count and logs show."""
    return forwarded(hub, scope).client


def public_scheme(hub: Hub, scope: Scope) -> str:
    """``http`` or ``https``: how the public reached the hub (a trusted proxy may say)."""
    scheme = forwarded(hub, scope).scheme
    if scheme is not None:
        return scheme
    return "https" if scope.get("scheme") in ("https", "wss") else "http"


def check_api_key(hub: Hub, scope: Scope) -> None:
    """Require ``Authorization: apikey <key>`` (constant-time compare); open only in development
    mode."""
    check_authorization(hub, scope.get("headers", ()))


def check_authorization(hub: Hub, headers: Iterable[tuple[bytes, bytes]]) -> None:
    """:func:`check_api_key` on a request's headers (names lower-cased)."""
    _policy(hub).api_keys.check(headers)


def api_keys(hub: Hub) -> ApiKeys:
    """The hub's :class:`ApiKeys`, for an endpoint that checks them on every request."""
    return _policy(hub).api_keys


class ApiKeys:
    """The server API's keys, read from the settings once: every publication is checked, and
    the settings' derived values (``api_keys``, ``development_mode``) are computed per read."""

    __slots__ = ("_keys", "_open")

    def __init__(self, keys: Iterable[str], *, open: bool) -> None:
        self._keys = tuple(key.encode() for key in keys)
        self._open = open  # development mode: no key and no token key, everything allowed

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Require ``Authorization: apikey <key>`` (constant-time compare); open only in
        development mode."""
        keys = self._keys
        if not keys:
            if self._open:
                return
            # Connection tokens are configured but no API key: nobody may act as the backend.
            raise Forbidden("the server API is off: api_key is not configured")
        value = None
        for name, raw in headers:
            if name == b"authorization":
                if value is not None:  # which one a proxy checked is a guess
                    raise Unauthorized("the Authorization header is given more than once")
                value = raw.decode("latin-1")
        scheme, _, given = (value or "").partition(" ")
        if scheme.lower() != "apikey" or not given:
            if scheme.lower() == "bearer":  # a connection token's scheme, or a key sent as one
                raise Unauthorized(
                    "this endpoint needs 'Authorization: apikey <key>': Bearer is for "
                    "connection tokens (/sse, /poll, /client/*)"
                )
            raise Unauthorized("this endpoint needs 'Authorization: apikey <key>'")
        given_b = given.strip().encode()
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(given_b, key)
        if not ok:
            raise Unauthorized("wrong API key")


def token_from(hub: Hub, scope: Scope, params: Params | None = None) -> str | None:
    """The connection token from the Authorization header, the ``token`` query or the cookie.

    A browser sends the cookie on its own, whichever page opened the request: it counts only from
    a page whose origin the configuration names (or with no ``Origin``: not a cross-site request).
    An origin admitted by ``allowed_origins = ["*"]`` alone must present its token itself.

    A token given twice — two ``token`` parameters, two ``Authorization`` headers — is refused
    whatever the values: which one a proxy or the hub would read is a guess. ``params``: the
    query as the caller read it already (a wide poll's is long: read once)."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    authorizations = [v for k, v in headers if k == b"authorization"]
    tokens = (query(scope) if params is None else params).get("token")
    if len(authorizations) > 1:
        raise Unauthorized("the Authorization header is given more than once")
    if tokens is not None and len(tokens) > 1:
        raise Unauthorized("the token is given more than once")
    if authorizations:
        scheme, _, token = authorizations[0].decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
    if tokens:
        return tokens[0]
    # HTTP/2 may split the cookies over several fields (RFC 9113, 8.2.3): one jar of them all.
    cookie = "; ".join(v.decode("latin-1") for k, v in headers if k == b"cookie")
    if cookie and origin_trusted(hub, scope):
        # Only the token's cookie is read, in linear time: the rest of the jar is the client's.
        return cookie_value(cookie, TOKEN_COOKIE) or None
    return None


def credentials_for(hub: Hub, scope: Scope, params: Params | None = None) -> Credentials:
    token = token_from(hub, scope, params)
    if token is None:
        return hub.auth.anonymous()
    return hub.auth.verify_request(token)


def origin_allowed(hub: Hub, scope: Scope) -> bool:
    """Cross-site WebSocket hijacking and CORS: is the browser origin allowed?"""
    origin = header(scope, b"origin")
    settings = hub.settings
    if origin is None:
        return settings.allow_no_origin
    # Compared with configured origins only, never with the request's own Host: a Host header
    # is whatever the client's DNS made of the name (DNS rebinding).
    origins = _policy(hub).origins
    if origins.loopback_only:  # the only rule that needs the public scheme
        return origins.allows(origin, public_scheme(hub, scope))
    return origins.allows(origin)


def origin_trusted(hub: Hub, scope: Scope) -> bool:
    """May this request carry the visitor's ambient credentials: no ``Origin`` (not a cross-site
    request), or one a rule names — not one admitted by ``*`` alone?"""
    origin = header(scope, b"origin")
    if origin is None:
        return True
    return _policy(hub).origins.names(origin, public_scheme(hub, scope))


def check_origin(hub: Hub, scope: Scope) -> None:
    """Refuse a browser origin the settings do not allow, and log it (rate-limited): every
    transport refuses here."""
    if not origin_allowed(hub, scope):
        _policy(hub).refusals.refused(header(scope, b"origin"), scope.get("path", "/"))
        raise Forbidden("origin not allowed", code=ErrorCode.ORIGIN_FORBIDDEN)


def cors_headers(hub: Hub, scope: Scope) -> list[tuple[bytes, bytes]]:
    origin = header(scope, b"origin")
    if origin is None or not origin_allowed(hub, scope):
        return []
    headers = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
    if origin_trusted(hub, scope):
        headers.append((b"access-control-allow-credentials", b"true"))
    return headers
