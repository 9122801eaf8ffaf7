"""Connection identities: verifying JWTs and deciding what a session may read and write."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from clarion.errors import BadChannel, ConfigError, Forbidden, Unauthorized
from clarion.protocol.channels import matches_any, namespace_of, validate_channel, validate_pattern
from clarion.protocol.errors import ErrorCode
from clarion.protocol.jsonkeep import writable
from clarion.settings import Settings

log = logging.getLogger("clarion.auth")

MAX_TOKEN_CHARS = 8192
RESERVED_NAMESPACE = "_clarion"  # the hub's own channels: see Authenticator._reserved
# Their names' start. They are not the application's traffic: the node's figures leave them out.
RESERVED_PREFIX = RESERVED_NAMESPACE + ":"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who a session is. ``user`` is ``None`` for anonymous sessions."""

    user: str | None
    channels: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    presence: tuple[str, ...] = ()  # patterns whose presence may be read without subscribing
    info: dict[str, Any] | None = None
    expires_at: float | None = None
    token_id: str | None = None
    trusted: bool = False  # development mode: everything allowed
    subs: tuple[str, ...] = ()  # channels the hub subscribes at connect (each still checked)
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


ANONYMOUS = Credentials(user=None)
DEVELOPMENT = Credentials(user=None, trusted=True)


def _patterns(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Unauthorized(f"token claim {name!r} must be a list of channel patterns")
    try:
        return tuple(dict.fromkeys(validate_pattern(p) for p in value))
    except BadChannel as exc:
        raise Unauthorized(f"token claim {name!r}: {exc.message}") from None


MAX_SUBS_CLAIM = 1024  # names in a ``subs`` claim; the per-connection cap applies after


def _channel_names(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if not isinstance(value, list) or len(value) > MAX_SUBS_CLAIM:
        raise Unauthorized(f"token claim {name!r} must be a list of channel names")
    try:
        return tuple(dict.fromkeys(validate_channel(c) for c in value))
    except BadChannel as exc:
        raise Unauthorized(f"token claim {name!r}: {exc.message}") from None


# Token times are whole seconds since the epoch, up to the last second of year 9999: an expiry
# beyond that (or a float such as 1e30) would read as "never" and overflow what the hub encodes.
MAX_NUMERIC_DATE = 253_402_300_799
LEEWAY = 5  # seconds of clock skew tolerated between the token's issuer and the hub


def expired(exp: float, now: float) -> bool:
    """Whether a token expiring at ``exp`` is past it at ``now`` (the hub's wall clock), beyond
    the leeway: one rule for a token presented and for a session that holds one."""
    return exp <= now - LEEWAY


def _check_times(claims: dict[str, Any], now: float) -> None:
    """``exp``, ``nbf`` and ``iat`` are integers in range, and the token is valid at ``now``."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name not in claims:
            continue
        if type(value) is not int or not 0 <= value <= MAX_NUMERIC_DATE:
            raise Unauthorized(
                f"invalid token: claim {name!r} must be a whole number of seconds "
                f"from 0 to {MAX_NUMERIC_DATE}"
            )
    if expired(claims["exp"], now):
        raise Unauthorized("token expired", code=ErrorCode.TOKEN_EXPIRED)
    if claims.get("nbf", 0) > now + LEEWAY:
        raise Unauthorized("invalid token: it is not valid yet (nbf)")
    if claims.get("iat", 0) > now + LEEWAY:
        raise Unauthorized("invalid token: it was issued in the future (iat)")


def _load_pyjwt() -> None:
    """Import PyJWT when tokens are to be verified or minted: it loads ``cryptography`` (for
    RS*/ES* keys), ~0.04 s of CPU that a hub believing no token need not spend at start. The
    functions here that use it import it again, a name lookup by then."""
    import jwt

    # PyJWT warns about a short HMAC key at every encode and decode, with its own file paths; the
    # hub says it once at start instead (secret_note), in its own words. Short RSA keys still
    # warn. (The same filter added again replaces the first.)
    warnings.filterwarnings(
        "ignore", message="The HMAC key is", category=jwt.InsecureKeyLengthWarning
    )


def secret_note(secret: str | None, algorithm: str) -> str | None:
    """A warning when an HS* ``secret`` is shorter than its hash (RFC 7518 §3.2), else None."""
    if not secret or not algorithm.startswith("HS"):
        return None
    minimum = hashlib.new("sha" + algorithm[2:]).digest_size
    length = len(secret.encode())
    if length >= minimum:
        return None
    return (
        f"token_secret is {length} bytes, shorter than the {minimum} bytes {algorithm} needs: a "
        "short secret can be guessed, and with it any token forged; use a random one, e.g. "
        "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
    )


def auth_notes(settings: Settings) -> list[str]:
    """What a partial auth configuration leaves out, a too short token_secret, and browser pages
    (the admin page among them) no origin setting lets in, one line each, for the start-up log.

    Development mode — no ``api_key`` and no token key — is the one state in which everything is
    allowed: it is announced, by a hub mounted in an application as by ``clarion serve``. Any
    other configuration is secure as it stands: a hub without a token key believes no token, a
    hub without an API key serves no server API.
    """
    if settings.development_mode:
        who = "anyone who can reach it" if settings.insecure else "anyone on this machine"
        return [
            f"local development mode: no API key and no token secret, so {who} may publish "
            "and subscribe (see docs/configuration.md)"
        ]
    notes = []
    if not settings.auth_enabled:
        notes.append(
            "no token_secret or token_public_key_file: every token is refused, and clients "
            "connect anonymously, to namespaces with anonymous = true only"
        )
    if not settings.api_keys:
        notes.append("no api_key: the server API (/api/*, /metrics) answers 403 to every call")
    short = secret_note(settings.token_secret, settings.token_algorithm)
    if short:
        notes.append(short)
    no_origin = not settings.public_url and not settings.allowed_origins
    if no_origin and not settings.binds_loopback():
        # Browsers send an Origin: with none allowed, every page is refused (403) on every
        # transport, and a page elsewhere on the network is what listening there is for.
        notes.append(
            f"listening on {settings.host or 'every interface'} but no browser origin is "
            "allowed: browser pages are refused (403) on /ws and /stomp, and on /sse, /poll and "
            "/client/* wherever their browser sends an Origin (every POST, every cross-site "
            "request); "
            "set allowed_origins (CLARION_ALLOWED_ORIGINS) to the origins of your pages, e.g. "
            "https://app.example.com, or public_url (CLARION_PUBLIC_URL) to the hub's own "
            "address for pages it serves"
        )
    if settings.admin and no_origin:
        # The page loads, but its WebSocket is a browser's: refused (403), it stays "not live".
        notes.append(
            "admin = true but no browser origin is allowed: the admin page's live charts cannot "
            "connect; set public_url to the address the page is opened at"
            + (f", e.g. {here}" if (here := settings.local_url()) else "")
        )
    return notes


class Authenticator:
    """Turns tokens into :class:`Credentials` according to the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.auth_enabled:
            _load_pyjwt()  # at start, not at the first connection with a token
        self._key: Any = settings.token_secret
        if settings.token_public_key_file:
            self._key = self._load_public_key(settings.token_public_key_file)
        algorithm = settings.token_algorithm
        if settings.token_secret and not algorithm.startswith("HS"):
            raise ConfigError("token_secret needs an HS* token_algorithm")
        if settings.token_public_key_file and algorithm.startswith("HS"):
            raise ConfigError("token_public_key_file needs an RS*/ES*/PS*/EdDSA token_algorithm")
        self.algorithm = algorithm

    @staticmethod
    def _load_public_key(path: str) -> Any:
        """A PEM public key, a JWK, or a JWKS (keys chosen by the token's ``kid``)."""
        import jwt

        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read token_public_key_file: {exc}") from None
        if text.lstrip().startswith("{"):
            try:
                document = json.loads(text)
                if "keys" in document:
                    return jwt.PyJWKSet.from_dict(document)
                return jwt.PyJWK.from_dict(document).key
            except (ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
                raise ConfigError(f"token_public_key_file is not a usable JWK(S): {exc}") from None
        return text

    def _key_for(self, token: str) -> Any:
        import jwt

        if not isinstance(self._key, jwt.PyJWKSet):
            return self._key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {_reason(jwt, exc)}") from None
        for jwk in self._key.keys:
            if kid is None or jwk.key_id == kid:
                return jwk.key
        raise Unauthorized("invalid token: no key in the JWKS matches its kid")

    @property
    def enabled(self) -> bool:
        return self.settings.auth_enabled

    def anonymous(self) -> Credentials:
        """A session without a token: trusted in development mode only, else anonymous."""
        return DEVELOPMENT if self.settings.development_mode else ANONYMOUS

    def verify_request(self, token: str) -> Credentials:
        """:meth:`verify` for a token that came with the HTTP request (its ``Authorization``
        header, ``token`` query parameter or cookie), not in the connection's own messages."""
        return self.verify(token)

    def verify(self, token: str) -> Credentials:
        """Check ``token`` and return its credentials; raise :class:`Unauthorized` if bad."""
        if self.settings.development_mode:
            return DEVELOPMENT
        if not self.enabled:  # an api_key alone: sessions are anonymous, no token is believed
            raise Unauthorized(
                "this hub accepts no tokens: neither token_secret nor token_public_key_file "
                "is configured"
            )
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("token is missing or too long")
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=[self.algorithm],
                # The times are checked below, once their type and range are known to be sane.
                options={
                    "require": ["exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
                audience=self.settings.token_audience,
                issuer=self.settings.token_issuer,
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {_reason(jwt, exc)}") from None
        if not isinstance(claims, dict):  # pragma: no cover - PyJWT decodes objects only
            raise Unauthorized("invalid token: its payload is not an object")
        _check_times(claims, time.time())
        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise Unauthorized("token claim 'sub' must be a string")
        info = claims.get("info")
        if info is not None and not isinstance(info, dict):
            raise Unauthorized("token claim 'info' must be an object")
        if info is not None and not writable(info):
            raise Unauthorized("token claim 'info' is nested too deep (over 254 levels)")
        return Credentials(
            user=sub,
            channels=_patterns(claims, "channels"),
            publish=_patterns(claims, "publish"),
            presence=_patterns(claims, "presence"),
            info=info,
            expires_at=claims["exp"],
            token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
            subs=_channel_names(claims, "subs"),
            claims=claims,
        )

    # The hub's own namespace (the admin page's figures): no token's pattern reaches it, on
    # every read (subscribe and history, presence and its counts), admin page or not.
    def _reserved(self, creds: Credentials, channel: str) -> bool:
        """True where ``creds`` may read the hub's own ``channel``; refused for anyone else
        there; False for any other channel."""
        if namespace_of(channel) != RESERVED_NAMESPACE:
            return False
        if self.reads_reserved(creds):
            return True
        raise Forbidden(f"{channel!r} is the hub's own channel")

    def reads_reserved(self, creds: Credentials) -> bool:
        return creds.trusted

    def check_subscribe(
        self, creds: Credentials, channel: str, *, act: str = "subscribe to"
    ) -> None:
        """May ``creds`` read ``channel``? ``act`` names the read in a refusal: subscribing, or
        reading the history or presence of a channel, which the same rule allows."""
        if self._reserved(creds, channel) or creds.trusted:
            return
        if matches_any(creds.channels, channel):
            return
        if self.settings.namespace(namespace_of(channel)).anonymous:
            return
        if not _has_token(creds):
            raise Unauthorized(f"a token is needed to {act} {channel!r}")
        why = _uncovered(creds, "channels")
        if creds.user is None:  # a token without `sub` is refused as an anonymous session is
            raise Unauthorized(f"not allowed to {act} {channel!r}: {why}")
        raise Forbidden(f"not allowed to {act} {channel!r}: {why}")

    def check_presence(self, creds: Credentials, channel: str, *, subscribed: bool) -> None:
        """May this session read who is on ``channel`` (``subscribed``: is it subscribed)?"""
        if self._reserved(creds, channel) or creds.trusted or matches_any(creds.presence, channel):
            return
        rule = self.settings.namespace(namespace_of(channel)).presence_read
        if rule == "anyone":
            self.check_subscribe(creds, channel, act="read the presence of")
            return
        if rule == "subscribers" and subscribed and creds.user is not None:
            return
        if not _has_token(creds):
            raise Unauthorized(f"a token is needed to read the presence of {channel!r}")
        if creds.user is None:
            raise Unauthorized(
                f"a token with a user (a sub claim) is needed to read the presence of {channel!r}"
            )
        if rule == "subscribers":
            raise Forbidden(f"subscribe to {channel!r} to read its presence")
        why = _uncovered(creds, "presence")
        raise Forbidden(f"not allowed to read the presence of {channel!r}: {why}")

    def may_read_presence(self, creds: Credentials, channel: str, *, subscribed: bool) -> bool:
        try:
            self.check_presence(creds, channel, subscribed=subscribed)
        except (Unauthorized, Forbidden):
            return False
        return True

    def check_publishes(self, creds: Credentials) -> None:
        """Refused before a request's body is read: ``creds`` may publish to no channel."""
        if not (creds.trusted or creds.publish):
            raise Forbidden(f"not allowed to publish: {_uncovered(creds, 'publish')}")

    def check_publish(self, creds: Credentials, channel: str) -> None:
        check_not_reserved(channel)
        if not self.settings.namespace(namespace_of(channel)).client_publish:
            raise Forbidden(
                f"clients may not publish to {channel!r}: its namespace takes publications "
                "from the server API only (client_publish = false)"
            )
        if creds.trusted:
            return
        if matches_any(creds.publish, channel):
            return
        raise Forbidden(f"not allowed to publish to {channel!r}: {_uncovered(creds, 'publish')}")


def check_not_reserved(channel: str) -> None:
    """Only the hub publishes to its own channels (the admin page's figures): neither a
    client nor a backend with the API key may forge them."""
    if channel.startswith(RESERVED_PREFIX):  # its namespace (a test on every publication)
        raise Forbidden(f"{channel!r} is the hub's own channel: only the hub publishes there")


def _has_token(creds: Credentials) -> bool:
    # Every token has an `exp`; anonymous sessions, and the hub's own, have none.
    return creds.expires_at is not None


def _uncovered(creds: Credentials, claim: str) -> str:
    """Why the token's ``claim`` (channels, publish, presence) grants nothing here: what to
    change, without the claim's patterns (the refusal may be logged where the token is not)."""
    if not _has_token(creds):
        if claim == "publish":
            return (
                "no token was given (a client publishes with a token whose publish claim "
                "covers the channel, a backend with the API key)"
            )
        return "no token was given"
    if not getattr(creds, claim):
        return f"the token has no {claim} claim"
    return f"the token's {claim} claim does not cover it"


def mint_token(
    secret: str,
    user: str,
    channels: list[str],
    *,
    publish: list[str] | None = None,
    ttl: float = 3600,
    info: dict[str, Any] | None = None,
    algorithm: str = "HS256",
    presence: list[str] | None = None,
) -> str:
    """A development token (``clarion token``)."""
    _load_pyjwt()
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "channels": channels, "iat": now, "exp": now + int(ttl)}
    if publish:
        claims["publish"] = publish
    if presence:
        claims["presence"] = presence
    if info:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm=algorithm)


def _reason(jwt: Any, exc: Exception) -> str:
    """Why a token was refused, for whoever sent it. One that is no JWT at all says so first:
    the library's words alone ("Invalid header string: 'utf-8' codec can't decode byte…")
    read as the hub's failure, not the token's."""
    if isinstance(exc, jwt.DecodeError) and not isinstance(exc, jwt.InvalidSignatureError):
        detail = str(exc).split(":", 1)[0]
        return f"not a JWT (three base64url parts, the first two JSON): {detail}"
    return str(exc)
