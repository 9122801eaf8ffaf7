"""A refused read or publish says why, in words a client can act on, with the documented code."""

from __future__ import annotations

import time

import jwt
import pytest

from clarion import Settings
from clarion.core.auth import ANONYMOUS, Authenticator, Credentials
from clarion.errors import ClarionError

SECRET = "a-test-secret-of-at-least-32-bytes!"


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(
        Settings(
            api_key="k",
            token_secret=SECRET,
            namespaces={"pub": {"anonymous": True}, "room": {"presence_read": "token"}},
        )
    )


def creds(auth: Authenticator, **claims: object) -> Credentials:
    body = {"exp": int(time.time()) + 60, **claims}
    return auth.verify(jwt.encode(body, SECRET, algorithm="HS256"))


def refusal(call: object, *args: object, **kw: object) -> str:
    with pytest.raises(ClarionError) as caught:
        call(*args, **kw)  # type: ignore[operator]
    return f"{caught.value.code}: {caught.value.message}"


def test_subscribe_history_and_presence_reads(auth: Authenticator) -> None:
    ada = creds(auth, sub="ada", channels=["chat:*"])
    assert refusal(auth.check_subscribe, ada, "news:x") == (
        "forbidden: not allowed to subscribe to 'news:x': the token's channels claim does not "
        "cover it"
    )
    assert refusal(auth.check_subscribe, ada, "news:x", act="read the history of") == (
        "forbidden: not allowed to read the history of 'news:x': the token's channels claim "
        "does not cover it"
    )
    bare = creds(auth, sub="bob")
    assert refusal(auth.check_subscribe, bare, "news:x") == (
        "forbidden: not allowed to subscribe to 'news:x': the token has no channels claim"
    )
    # A token without `sub` keeps its code, and is not told it gave no token.
    nobody = creds(auth, channels=["chat:*"])
    assert refusal(auth.check_subscribe, nobody, "news:x") == (
        "unauthorized: not allowed to subscribe to 'news:x': the token's channels claim does "
        "not cover it"
    )
    assert refusal(auth.check_subscribe, ANONYMOUS, "news:x") == (
        "unauthorized: a token is needed to subscribe to 'news:x'"
    )
    auth.check_subscribe(ANONYMOUS, "pub:x")
    assert refusal(auth.check_presence, ada, "room:a", subscribed=True) == (
        "forbidden: not allowed to read the presence of 'room:a': the token has no presence claim"
    )
    assert refusal(auth.check_presence, ada, "chat:a", subscribed=False) == (
        "forbidden: subscribe to 'chat:a' to read its presence"
    )
    assert refusal(auth.check_presence, nobody, "chat:a", subscribed=True) == (
        "unauthorized: a token with a user (a sub claim) is needed to read the presence of 'chat:a'"
    )


def test_publish(auth: Authenticator) -> None:
    ada = creds(auth, sub="ada", channels=["chat:*"], publish=["chat:lobby"])
    assert refusal(auth.check_publish, ada, "chat:other") == (
        "forbidden: not allowed to publish to 'chat:other': the token's publish claim does not "
        "cover it"
    )
    assert refusal(auth.check_publish, creds(auth, sub="bob"), "chat:lobby") == (
        "forbidden: not allowed to publish to 'chat:lobby': the token has no publish claim"
    )
    assert refusal(auth.check_publish, ANONYMOUS, "chat:lobby") == (
        "forbidden: not allowed to publish to 'chat:lobby': no token was given (a client "
        "publishes with a token whose publish claim covers the channel, a backend with the "
        "API key)"
    )
    auth.check_publish(ada, "chat:lobby")


def test_no_refusal_shows_the_tokens_patterns(auth: Authenticator) -> None:
    ada = creds(auth, sub="ada", channels=["private-team:*"], publish=["private-team:*"])
    for call, args in [
        (auth.check_subscribe, (ada, "news:x")),
        (auth.check_publish, (ada, "news:x")),
    ]:
        assert "private-team" not in refusal(call, *args)


@pytest.mark.parametrize(
    "token",
    [
        "abc.def.ghi",
        "not-a-jwt",
        "a.b",
        "..",
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.x",
        "\u00e9.\u00e9.\u00e9",
    ],
)
def test_a_token_that_is_no_jwt_is_told_so(auth: Authenticator, token: str) -> None:
    """Not the library's words alone ("Invalid header string: 'utf-8' codec can't decode")."""
    message = refusal(auth.verify, token)
    assert message.startswith(
        "unauthorized: invalid token: not a JWT (three base64url parts, the first two JSON): "
    ), message
    assert "codec" not in message and len(message) < 120


def test_a_wrong_signature_keeps_its_own_words(auth: Authenticator) -> None:
    forged = jwt.encode({"exp": int(time.time()) + 60}, "another-secret-of-32-bytes-or-more!")
    assert (
        refusal(auth.verify, forged) == "unauthorized: invalid token: Signature verification failed"
    )
