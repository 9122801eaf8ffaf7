"""Token times (``exp``, ``nbf``, ``iat``) out of range or not whole seconds: the token is refused
with ``unauthorized`` on every path that reads tokens, and nothing of it is applied."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from ..conftest import RunningHub
from ..stomp.client import stomp

SECRET = "a-long-enough-test-secret-0123456789"


def _now() -> int:
    return int(time.time())


# Each entry replaces or adds one time claim in an otherwise valid token for user "mallory".
BAD_TIMES: dict[str, Callable[[], dict[str, Any]]] = {
    "exp-10**30": lambda: {"exp": 10**30},
    "exp-1e30": lambda: {"exp": 1e30},
    "exp-2**63": lambda: {"exp": 2**63},
    "exp-year-10000": lambda: {"exp": 253_402_300_800},
    "exp-fraction": lambda: {"exp": _now() + 600.5},
    "exp-float-whole": lambda: {"exp": float(_now() + 600)},
    "exp-string": lambda: {"exp": str(_now() + 600)},
    "exp-true": lambda: {"exp": True},
    "exp-negative": lambda: {"exp": -1},
    "exp-null": lambda: {"exp": None},
    "exp-list": lambda: {"exp": [_now() + 600]},
    "nbf-10**30": lambda: {"nbf": 10**30},
    "nbf-fraction": lambda: {"nbf": _now() - 0.5},
    "nbf-string": lambda: {"nbf": "0"},
    "iat-1e30": lambda: {"iat": 1e30},
    "iat-negative": lambda: {"iat": -5},
    "iat-false": lambda: {"iat": False},
}


def bad_token(case: str, **claims: Any) -> str:
    body = {"sub": "mallory", "channels": ["chat:*"], "exp": _now() + 600, **claims}
    body.update(BAD_TIMES[case]())
    return jwt.encode(body, SECRET, algorithm="HS256")


def good_token(user: str = "mallory", **claims: Any) -> str:
    body = {"sub": user, "channels": ["chat:*"], "exp": _now() + 600, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.fixture
async def secured(hub_factory: Callable[..., Any]) -> RunningHub:
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key="k")
    return hub


@pytest.mark.parametrize("case", list(BAD_TIMES))
async def test_refused_at_the_upgrade(secured: RunningHub, case: str) -> None:
    headers = {"Authorization": f"Bearer {bad_token(case)}"}
    async with secured.ws(additional_headers=headers) as ws:
        push = await ws.recv()
        assert push["disconnect"]["code"] == 4500, push
        assert push["disconnect"]["reconnect"] is False


@pytest.mark.parametrize("case", list(BAD_TIMES))
async def test_refused_by_connect_and_nothing_applied(secured: RunningHub, case: str) -> None:
    async with secured.ws() as ws:
        reply = await ws.call("connect", token=bad_token(case))
        assert reply["error"]["code"] == "unauthorized", reply
        # Still anonymous: the token's channels were not applied.
        assert (await ws.subscribe("chat:a"))["error"]["code"] == "unauthorized"
        reply = await ws.call("connect", token=good_token())
        assert reply["ok"]["user"] == "mallory"
        assert isinstance(reply["ok"]["expires"], int)


@pytest.mark.parametrize("case", list(BAD_TIMES))
async def test_refused_by_refresh_and_nothing_applied(secured: RunningHub, case: str) -> None:
    first = good_token(channels=["chat:*"])
    async with secured.ws(additional_headers={"Authorization": f"Bearer {first}"}) as ws:
        before = await ws.call("refresh", token=first)
        # The bad token would move the session to other channels and a far expiry.
        reply = await ws.call("refresh", token=bad_token(case, channels=["other:*"]))
        assert reply["error"]["code"] == "unauthorized", reply
        assert "ok" in await ws.subscribe("chat:a")
        assert (await ws.subscribe("other:a"))["error"]["code"] == "forbidden"
        after = await ws.call("refresh", token=first)
        assert after["ok"]["expires"] == before["ok"]["expires"]


@pytest.mark.parametrize("case", list(BAD_TIMES))
@pytest.mark.parametrize("path", ["/sse", "/poll"])
async def test_refused_by_sse_and_poll(secured: RunningHub, case: str, path: str) -> None:
    params = {"channel": "chat:a", "timeout": "0", "token": bad_token(case)}
    async with secured.http() as http:
        r = await http.get(path, params=params)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("case", list(BAD_TIMES))
async def test_refused_by_stomp(secured: RunningHub, case: str) -> None:
    async with stomp(secured) as client:
        await client.send("CONNECT", accept_version="1.2", host="h", passcode=bad_token(case))
        error = await client.expect("ERROR")
        assert error.headers["x-close-code"] == "4500", error.headers
        assert await client.closed() == 4500


async def test_times_at_the_edges_of_the_range_are_accepted(secured: RunningHub) -> None:
    token = good_token(exp=253_402_300_799, nbf=0, iat=_now())
    async with secured.ws() as ws:
        reply = await ws.call("connect", token=token)
        assert reply["ok"]["expires"] == 253_402_300_799


async def test_expired_and_premature_tokens_keep_their_codes(secured: RunningHub) -> None:
    expired = {"Authorization": f"Bearer {good_token(exp=_now() - 60)}"}
    async with secured.ws(additional_headers=expired) as ws:
        assert (await ws.recv())["disconnect"]["code"] == 4004  # reconnect with a fresh token
    async with secured.ws() as ws:
        for claim in ("nbf", "iat"):
            early = await ws.call("connect", token=good_token(**{claim: _now() + 600}))
            assert early["error"]["code"] == "unauthorized"
            assert f"({claim})" in early["error"]["message"]
