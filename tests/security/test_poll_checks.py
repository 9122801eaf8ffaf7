"""Wide polls, counted per client across requests.

A ``GET /poll`` naming 128 channels (the cap) with a cursor made the hub check each of them,
some 2 ms of its CPU per request with nothing pending, and spent no budget: one address
sending such polls with ``timeout=0`` back to back held a core at some 500 requests a second,
and every other client waited. Each poll now spends one of its client's (its user's, or its
address's without one) ``limits.client_poll_check_rate`` per channel it names, before any is
read; over it, ``429 rate_limited`` with ``Retry-After``. A long-poll client, which polls once
per reply, stays far within it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from clarion.core.auth import mint_token

from ..conftest import RunningHub
from ..transports.streams import poll

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "backend-key"
WIDE = [f"feed:c{n}" for n in range(128)]
POLLS = 5  # wide polls the burst below holds


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, user, ['feed:*'])}"}


async def cursor_of(http: Any, channels: list[str]) -> str:
    cursor: str = (await poll(http, *channels, timeout=0))["cursor"]
    return cursor


async def test_wide_polls_are_held_to_the_clients_channel_budget(
    hub_factory: Callable[..., Any],
) -> None:
    """The burst's worth of 128-channel polls, then refusals that say when to come back; an
    address without a user and each user have a budget of their own."""
    hub: RunningHub = await hub_factory(
        token_secret=SECRET,
        api_key=KEY,
        namespaces={"feed": {"anonymous": True}},
        # No refill to speak of within a test: what the polls spend comes off the burst.
        limits={"client_poll_check_rate": 1, "client_poll_check_burst": 128 * POLLS + 1},
    )
    for channel in WIDE:
        await hub.publish(channel, {"n": 0})
    async with hub.http() as anonymous, hub.http(headers=bearer("alice")) as alice:
        cursor = await cursor_of(anonymous, WIDE)  # one of the polls the burst holds
        for _ in range(POLLS - 1):
            body = await poll(anonymous, *WIDE, cursor=cursor, timeout=0)
            assert body["publications"] == [] and body["cursor"] == cursor
        refused = await anonymous.get(
            "/poll", params={"channel": WIDE, "cursor": cursor, "timeout": "0"}
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        # A long poll is no way around it: it would check and then wait on every channel.
        refused = await anonymous.get("/poll", params={"channel": WIDE, "timeout": "5"})
        assert refused.status_code == 429, refused.text
        # A poll narrow enough for what is left passes.
        assert (await poll(anonymous, WIDE[0], timeout=0))["publications"] == []
        # A user's polls spend the user's budget, not the address's.
        cursor = await cursor_of(alice, WIDE)
        body = await poll(alice, *WIDE, cursor=cursor, timeout=0)
        assert body["publications"] == []


async def test_a_long_poll_client_on_128_channels_with_a_busy_one_is_never_refused(
    hub_factory: Callable[..., Any],
) -> None:
    """The defaults: a client long-polling 128 channels, one of them taking a publication
    every few milliseconds, polls once per reply (each reply bringing what came meanwhile)
    and gets every publication, in order, without a refusal — more publications than the
    burst alone has polls for."""
    hub: RunningHub = await hub_factory(token_secret=SECRET, api_key=KEY)
    limits = hub.hub.settings.limits
    count = limits.client_poll_check_burst // len(WIDE) + 100
    busy = WIDE[-1]

    async def publisher() -> None:
        for n in range(count):
            await hub.publish(busy, {"n": n})
            # At most some 200 a second: a client polling once per publication spends no
            # more than the rate refills meanwhile (a slower machine only publishes slower).
            await asyncio.sleep(0.005)

    got: list[int] = []
    polls = 0
    async with hub.http(headers=bearer("bob")) as http:
        cursor = await cursor_of(http, WIDE)
        task = asyncio.create_task(publisher())
        try:
            while len(got) < count:
                body = await poll(http, *WIDE, cursor=cursor, timeout=5)
                polls += 1
                got += [p["data"]["n"] for p in body["publications"]]
                cursor = body["cursor"]
                if task.done() and not body["publications"]:
                    break  # the publisher failed: said below
        finally:
            await task
    assert got == list(range(count))
    assert polls <= count + 1
    assert polls * len(WIDE) > limits.client_poll_check_burst  # the rate's refill was needed
