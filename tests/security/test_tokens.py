"""Connection tokens over real sockets: every forged, stale or misdirected token is refused."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clarion.core.auth import mint_token

from ..conftest import RunningHub, timeout

SECRET = "a-long-enough-test-secret-0123456789"


def hs256(claims: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers or None)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "channels": ["chat:*"], "exp": int(time.time()) + 600, **extra}


async def outcome(hub: RunningHub, token: str, channel: str = "chat:lobby") -> dict[str, Any]:
    """Connect with ``token`` and subscribe; return the first thing the hub says."""
    async with hub.ws(additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        with contextlib.suppress(ConnectionClosed):  # the hub may have refused us already
            await ws.send({"id": 1, "op": "subscribe", "channel": channel})
        return await ws.recv()


@pytest.fixture
async def secured(hub_factory) -> RunningHub:  # type: ignore[no-untyped-def]
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="k")
    return hub


async def test_valid_token_subscribes(secured: RunningHub) -> None:
    reply = await outcome(secured, mint_token(SECRET, "alice", ["chat:*"]))
    assert reply["ok"]["channel"] == "chat:lobby"


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _unsigned(payload: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@pytest.mark.parametrize(
    ("token_factory", "code"),
    [
        (lambda: _unsigned(claims()), 4500),
        (lambda: hs256(claims(exp=int(time.time()) - 60)), 4004),
        (lambda: hs256(claims(nbf=int(time.time()) + 600)), 4500),
        (lambda: hs256({"sub": "alice", "channels": ["chat:*"]}), 4500),  # no exp
        (lambda: hs256(claims(), secret="another-secret-another-secret-00"), 4500),
        (lambda: hs256(claims())[:-4] + "AAAA", 4500),  # tampered signature
        (lambda: "not.a.jwt", 4500),
        # Read, but too deep for any presence event or publication to write (254 levels).
        (lambda: hs256(claims(info=_nested(300))), 4500),
    ],
    ids=[
        "alg-none",
        "expired",
        "not-yet-valid",
        "no-exp",
        "wrong-key",
        "tampered",
        "garbage",
        "info-too-deep",
    ],
)
async def test_bad_tokens_are_refused(secured: RunningHub, token_factory: Any, code: int) -> None:
    reply = await outcome(secured, token_factory())
    assert reply["disconnect"]["code"] == code
    assert reply["disconnect"]["reconnect"] is (code == 4004)


async def test_a_huge_token_is_refused(secured: RunningHub) -> None:
    huge = "x" * 9000  # over the hub's 8192 characters
    # In the handshake: the hub refuses it (4500), or the host server, whose header lines may
    # be shorter than that (uvicorn's: 8 KiB), refuses the request first.
    try:
        reply = await outcome(secured, huge)
    except InvalidStatus as exc:
        assert exc.response.status_code == 431
    else:
        assert reply["disconnect"]["code"] == 4500 and not reply["disconnect"]["reconnect"]
    # In the connect op, on any server: refused by the hub, the session stays anonymous.
    async with secured.ws() as ws:
        reply = await ws.call("connect", token=huge)
        assert reply["error"]["code"] == "unauthorized"
        assert (await ws.subscribe("chat:lobby"))["error"]["code"] == "unauthorized"


async def test_token_for_another_channel(secured: RunningHub) -> None:
    reply = await outcome(secured, mint_token(SECRET, "alice", ["chat:*"]), channel="admin:x")
    assert reply["error"]["code"] == "forbidden"


async def test_no_token_no_subscribe_unless_anonymous(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(
        token_secret=SECRET, api_key="k", namespaces={"public": {"anonymous": True}}
    )
    async with hub.ws() as ws:
        assert (await ws.subscribe("chat:lobby"))["error"]["code"] == "unauthorized"
        assert (await ws.subscribe("public:news"))["ok"]
        publish = await ws.call("publish", channel="public:news", data=1)
        assert publish["error"]["code"] == "forbidden"


async def test_token_in_query_cookie_and_connect_op(secured: RunningHub) -> None:
    token = mint_token(SECRET, "alice", ["chat:*"])
    import websockets

    async with websockets.connect(f"{secured.ws_url}?token={token}") as raw:
        await raw.send(json.dumps({"id": 1, "op": "subscribe", "channel": "chat:a"}))
        assert "ok" in json.loads(await raw.recv())
    cookie = {"Cookie": f"clarion_token={token}"}
    async with secured.ws(additional_headers=cookie) as ws:
        assert (await ws.subscribe("chat:a"))["ok"]
    async with secured.ws() as ws:
        connected = await ws.call("connect", token=token)
        assert connected["ok"]["user"] == "alice"
        assert (await ws.subscribe("chat:a"))["ok"]


async def test_a_token_given_twice_is_refused_on_every_path(secured: RunningHub) -> None:
    """Two tokens in one request — the same or different, in the query or the header — are
    refused rather than one of them picked: a proxy may have checked the other."""
    alice, bob = (mint_token(SECRET, user, ["chat:*"]) for user in ("alice", "bob"))
    twice_query = f"?token={alice}&token={bob}"
    twice_header = [("Authorization", f"Bearer {alice}"), ("Authorization", f"Bearer {alice}")]
    import websockets

    for url, headers in ((secured.ws_url + twice_query, []), (secured.ws_url, twice_header)):
        async with websockets.connect(url, additional_headers=headers) as raw:
            told = json.loads(await raw.recv())
            assert told["disconnect"]["code"] == 4500 and not told["disconnect"]["reconnect"]
            assert "more than once" in told["disconnect"]["reason"]
    async with secured.http() as http:
        r = await http.get(f"/client/history{twice_query}&channel=chat:a")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        r = await http.get("/client/history?channel=chat:a", headers=twice_header)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        for path in ("/sse", "/poll"):
            r = await http.get(f"{path}?channel=chat:a&timeout=0", headers=twice_header)
            assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        # The API key: one Authorization header, or none counts.
        r = await http.post(
            "/api/publish",
            json={"channel": "chat:a", "data": 1},
            headers=[("Authorization", "apikey k"), ("Authorization", "apikey k")],
        )
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    # One token, once, still works on each.
    async with websockets.connect(f"{secured.ws_url}?token={alice}") as raw:
        await raw.send(json.dumps({"id": 1, "op": "subscribe", "channel": "chat:a"}))
        assert "ok" in json.loads(await raw.recv())


async def test_cookies_split_over_several_fields_are_read_together(secured: RunningHub) -> None:
    # HTTP/2 sends each cookie in a field of its own; an ASGI server may pass them on so.
    token = mint_token(SECRET, "alice", ["chat:*"])
    cookies = [("Cookie", "theme=dark"), ("Cookie", f"clarion_token={token}")]
    async with secured.ws(additional_headers=cookies) as ws:
        assert (await ws.subscribe("chat:a"))["ok"]


async def test_client_publish_needs_publish_claim(secured: RunningHub) -> None:
    reader = mint_token(SECRET, "alice", ["chat:*"])
    writer = mint_token(SECRET, "bob", ["chat:*"], publish=["chat:*"])
    async with secured.ws(additional_headers={"Authorization": f"Bearer {reader}"}) as ws:
        assert (await ws.call("publish", channel="chat:a", data=1))["error"]["code"] == "forbidden"
    async with secured.ws(additional_headers={"Authorization": f"Bearer {writer}"}) as ws:
        reply = await ws.call("publish", channel="chat:a", data=1)
        assert reply["ok"]["offset"] == 1


async def test_expiry_on_open_connection_and_refresh(secured: RunningHub) -> None:
    short = hs256(claims(exp=int(time.time()) + 2))
    async with secured.ws(additional_headers={"Authorization": f"Bearer {short}"}) as ws:
        assert (await ws.subscribe("chat:a"))["ok"]
        push = await ws.recv(wait=12)  # the hub ticks every second; leeway is 5 s
        assert push["disconnect"]["code"] == 4004
    short = hs256(claims(exp=int(time.time()) + 2))
    async with secured.ws(additional_headers={"Authorization": f"Bearer {short}"}) as ws:
        assert (await ws.subscribe("chat:a"))["ok"]
        refreshed = await ws.call("refresh", token=hs256(claims()))
        assert refreshed["ok"]["user"] == "alice"
        other = await ws.call("refresh", token=hs256(claims(sub="mallory")))
        assert other["error"]["code"] == "forbidden"
        await asyncio.sleep(3.5)  # past the first token's exp: the refreshed one holds
        await secured.publish("chat:a", "after expiry")
        got = await ws.recv(wait=12)
        assert got.get("data") == "after expiry"


def _rsa_pair() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public


async def test_rs256_and_algorithm_confusion(hub_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, public = _rsa_pair()
    pem = tmp_path / "public.pem"
    pem.write_bytes(public)
    hub = await hub_factory(token_public_key_file=str(pem), token_algorithm="RS256", api_key="k")
    good = jwt.encode(claims(), key, algorithm="RS256")
    assert "ok" in await outcome(hub, good)
    # The classic confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signature = hmac.new(public, header + b"." + body, hashlib.sha256).digest()
    forged = b".".join([header, body, base64.urlsafe_b64encode(signature).rstrip(b"=")])
    assert (await outcome(hub, forged.decode()))["disconnect"]["code"] == 4500
    assert (await outcome(hub, _unsigned(claims())))["disconnect"]["code"] == 4500


async def test_es256_jwks_with_kid(hub_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "k1"
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    hub = await hub_factory(token_public_key_file=str(jwks), token_algorithm="ES256", api_key="k")
    good = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "k1"})
    assert "ok" in await outcome(hub, good)
    unknown = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "other"})
    assert (await outcome(hub, unknown))["disconnect"]["code"] == 4500


async def test_audience_and_issuer(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(
        token_secret=SECRET, api_key="k", token_audience="clarion", token_issuer="auth.example"
    )
    good = hs256(claims(aud="clarion", iss="auth.example"))
    assert "ok" in await outcome(hub, good)
    for bad in (
        hs256(claims(aud="other", iss="auth.example")),
        hs256(claims(aud="clarion", iss="evil.example")),
        hs256(claims()),
    ):
        assert (await outcome(hub, bad))["disconnect"]["code"] == 4500


async def test_a_crafted_cookie_costs_no_cpu_and_the_token_cookie_still_reads(
    secured: RunningHub,
) -> None:
    """A quoted cookie of 16,200 backslashes once took the cookie parser a second of CPU per
    request (quadratic unquoting on older Python 3.11 releases): only the token's cookie is
    read now, in linear time. The token cookie reads as before, quoted or not, among others."""
    alice = mint_token(SECRET, "alice", ["chat:*"])
    crafted = {"Cookie": 'a="' + "\\" * 16200 + '"'}
    async with secured.http() as http:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(
                http.get("/client/history", params={"channel": "chat:a"}, headers=crafted)
                for _ in range(4)
            ),
            http.get("/healthz"),
        )
        assert time.monotonic() - started < timeout(0.5), time.monotonic() - started
        assert [r.status_code for r in answers] == [401] * 4 + [200]  # no token
        for cookie in (
            f"clarion_token={alice}",
            f'clarion_token="{alice}"',
            f'theme=dark; a="\\\\\\""; clarion_token={alice}; b=1',
            f"clarion_token=stale; clarion_token={alice}",  # the last one, as before
        ):
            r = await http.get(
                "/client/history", params={"channel": "chat:a"}, headers={"Cookie": cookie}
            )
            assert r.status_code == 200, (cookie, r.text)
