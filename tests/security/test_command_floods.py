"""Subscription churn and other costly ops: one budget per connection, presence that cannot be
amplified, and other sessions unharmed. Over real sockets, on /ws and STOMP.

A subscribe/unsubscribe pair on a channel with join/leave events sends two events to every
reader of its presence; without a bound, two connections churning one channel sent a watcher
tens of thousands of events a second and got it closed as a slow consumer. Every op but
``ping``, ``publish`` and ``unsubscribe`` now spends from ``limits.client_command_rate``: over it
``rate_limited``, and 50 refusals within 10 s close the connection with 4505, as publish floods
are.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from clarion.core.auth import mint_token
from clarion.core.presence import ANNOUNCE_WINDOW
from clarion.settings import NamespaceOptions

from ..conftest import WS, RunningHub, timeout, until
from ..stomp.client import frame, stomp
from .churn import churn_commands, churner

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "churn-api-key"
CHANNEL = "chat:watch"
BURST = 300  # limits.client_command_burst's default


def settings(join_leave: Any = "client", **limits: Any) -> dict[str, Any]:
    chat = NamespaceOptions(
        anonymous=True,
        join_leave=join_leave,
        presence_read="anyone",
        presence_grace=1.0,
    )
    out: dict[str, Any] = {
        "token_secret": SECRET,
        "api_key": KEY,
        "namespaces": {"chat": chat},
    }
    # The churners here are anonymous connections from one address, which share one allowance
    # of subscriptions (test_subscribe_churn.py): what is tested here is each connection's own
    # budget, so that one is out of the way.
    out["limits"] = {"client_subscribe_burst": 1_000_000, **limits}
    return out


class ChurnersApart:
    """``count`` churners in a process of their own (:mod:`tests.security.churn`): their
    client work neither shares the hub's event loop nor is counted as the hub's. Started before
    the window a test measures (:meth:`ready`), so that the process's start-up is not in it;
    :meth:`run` lets them go."""

    def __init__(self, count: int, seconds: float) -> None:
        self.args = (str(count), str(seconds))
        self.proc: asyncio.subprocess.Process | None = None

    async def ready(self, hub: RunningHub) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.security.churn", hub.ws_url, *self.args,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout(60))
        assert line == b"ready\n", line

    async def run(self, hub: RunningHub) -> list[tuple[Counter[str], int | None, float]]:
        """Each churner's replies by outcome, close code and seconds open."""
        assert self.proc is not None
        out, _err = await asyncio.wait_for(self.proc.communicate(b"go\n"), timeout(60))
        assert self.proc.returncode == 0
        return [(Counter(outcomes), code, open_for) for outcomes, code, open_for in json.loads(out)]


async def ws_churner(hub: RunningHub, seconds: float) -> tuple[Counter[str], int | None]:
    """One anonymous /ws connection sending subscribe/unsubscribe back to back, never waiting
    for a reply, until it is closed or ``seconds`` pass: its replies by outcome, its close
    code (in this process: :class:`ChurnersApart` runs them in another)."""
    outcomes, code, _ = await churner(hub.ws_url, seconds)
    return outcomes, code


class Watcher:
    """A well-behaved subscriber: counts join/leave pushes and measures publication latency."""

    def __init__(self, ws: WS, client: str) -> None:
        self.ws = ws
        self.id = client
        self.events: Counter[str] = Counter()
        self.by_client: dict[str, list[str]] = {}
        self.latencies: list[float] = []
        self.closed: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.alone = 0  # publications the backend made in the same time without the attack
        self.alone_latency = 0.0  # and the longest it took one of them to arrive

    def start(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws.conn:
                msg = json.loads(raw)
                for kind in ("join", "leave"):
                    if kind in msg:
                        self.events[kind] += 1
                        # Per client; per user with ``join_leave = "user"``.
                        who = msg[kind].get("client") or msg[kind].get("user")
                        self.by_client.setdefault(who, []).append(kind)
                data = msg.get("data") if "offset" in msg else None
                if isinstance(data, dict):
                    sent = data.get("t")
                    if isinstance(sent, float):
                        self.latencies.append(time.monotonic() - sent)
        except ConnectionClosed:
            self.closed = self.ws.conn.close_code


async def publisher(hub: RunningHub, seconds: float, every: float = 0.05) -> int:
    """Publishes a timestamp to the watched channel every ``every`` seconds; how many."""
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await hub.publish(CHANNEL, {"t": time.monotonic()})
        count += 1
        await asyncio.sleep(every)
    return count


async def watched(
    hub_factory: Callable[..., Any],
    attack: Callable[[RunningHub], Any],
    seconds: float = 2.0,
    baseline: bool = False,
    prepare: Callable[[RunningHub], Awaitable[None]] | None = None,
    **hub_settings: Any,
) -> tuple[Watcher, int, list[Any]]:
    """A watcher on ``CHANNEL`` while ``attack`` runs and the backend publishes: the watcher,
    how many were published, and what the attack returned. ``baseline``: first, how many the
    backend publishes in the same time with no attack (``watcher.alone``), on this machine as
    loaded as it is now. ``prepare`` readies the attack before either."""
    hub: RunningHub = await hub_factory(**settings(**hub_settings))
    async with hub.ws() as ws:
        token = mint_token(SECRET, "watcher", ["chat:*"])
        connected = await ws.call("connect", token=token)
        assert "ok" in await ws.subscribe(CHANNEL)
        watcher = Watcher(ws, connected["ok"]["client"])
        watcher.start()
        if prepare is not None:
            await prepare(hub)
        if baseline:
            watcher.alone = await publisher(hub, seconds)
            await until(lambda: len(watcher.latencies) >= watcher.alone, wait=10)
            watcher.alone_latency = max(watcher.latencies)
            watcher.latencies.clear()
        published, *results = await asyncio.gather(publisher(hub, seconds), attack(hub))
        # What was published reaches it, whatever the attack did meanwhile.
        await until(lambda: len(watcher.latencies) >= published or watcher.closed, wait=10)
        assert watcher.closed is None, f"the watcher was closed with {watcher.closed}"
        assert watcher.task is not None
        watcher.task.cancel()
        return watcher, published, results


async def test_ws_churn_is_refused_then_closed_with_4505(hub_factory: Callable[..., Any]) -> None:
    hub: RunningHub = await hub_factory(**settings())
    outcomes, code = await ws_churner(hub, seconds=timeout(10))
    assert code == 4505
    # The burst went through, then refusals; 50 of them closed the connection.
    assert BURST <= outcomes["ok"] <= BURST + 5 * timeout(10) * 20
    assert 1 <= outcomes["rate_limited"] <= 50
    assert hub.hub.stats.errors["rate_limited"] >= 1


async def test_two_ws_churners_do_not_flood_a_watcher(hub_factory: Callable[..., Any]) -> None:
    async def attack(hub: RunningHub) -> list[tuple[Counter[str], int | None]]:
        return list(await asyncio.gather(ws_churner(hub, 2.0), ws_churner(hub, 2.0)))

    watcher, published, (results,) = await watched(hub_factory, attack, baseline=True)
    assert [code for _, code in results] == [4505, 4505]
    # Each churner gets at most its burst (and a little refill) through: an event per op.
    assert watcher.events["join"] + watcher.events["leave"] <= 2 * (BURST + 2 * 20 * 2)
    assert len(watcher.latencies) == published
    assert max(watcher.latencies) < max(timeout(1.0), 10 * watcher.alone_latency)


async def test_churners_that_come_back_at_once_do_not_flood_a_watcher(
    hub_factory: Callable[..., Any],
) -> None:
    """A churner closed with 4505 that reconnects at once has a fresh budget each time; what
    it costs readers stays small, as a join and a leave of one client within the announce
    window (``ANNOUNCE_WINDOW``) cancel out.

    Each churner comes back three times, each time until the hub closes it: counted in
    connections, not seconds, as a loaded machine fits fewer of them in a given time."""
    codes: list[int | None] = []
    began = time.monotonic()

    async def again(hub: RunningHub) -> None:
        for _ in range(3):
            codes.append((await ws_churner(hub, timeout(10)))[1])

    async def attack(hub: RunningHub) -> None:
        await asyncio.gather(again(hub), again(hub))

    watcher, published, _ = await watched(hub_factory, attack, seconds=2.0)
    assert codes == [4505] * 6
    # At most a join and a leave per connection, and a change per window for those alive.
    windows = 2 * (time.monotonic() - began) / ANNOUNCE_WINDOW
    assert watcher.events["join"] + watcher.events["leave"] <= 4 * len(codes) + windows
    assert len(watcher.latencies) == published


async def test_every_leave_follows_its_join_once(hub_factory: Callable[..., Any]) -> None:
    """Connections that subscribe and go at once, mid-churn: per client, join and leave
    alternate (no leave without a join, never two), and presence is left with the watcher."""

    async def attack(hub: RunningHub) -> None:
        async def hit_and_run(n: int) -> None:
            async with hub.ws() as ws:
                for command in churn_commands(n):
                    await ws.send(command)
            # Closed without waiting for any reply: the hub ends the session mid-churn.

        for round_ in range(20):
            await asyncio.gather(*(hit_and_run(1 + (round_ + i) % 6) for i in range(5)))
        # Once the hub has let every churner go (the last of their leaves is spawned at
        # close), presence holds the watcher alone: no entry is left behind.
        await until(lambda: len(hub.hub.registry.sessions) == 1, wait=10)
        await until(lambda: not [t for t in hub.hub._tasks if not t.done()], wait=10)
        assert await _watcher_alone(hub)

    watcher, _, _ = await watched(hub_factory, attack)
    assert watcher.events["join"] > 0
    watcher.by_client.pop(watcher.id)  # its own join
    for client, kinds in watcher.by_client.items():
        # A subscription ended before its join went out is announced neither way.
        assert kinds == ["join", "leave"] * (len(kinds) // 2), (client, kinds)
    assert watcher.events["join"] == watcher.events["leave"] + 1


def _watcher_alone(hub: RunningHub) -> Any:
    async def check() -> bool:
        async with hub.http() as http:
            r = await http.get(
                "/api/presence",
                params={"channel": CHANNEL},
                headers={"Authorization": f"apikey {KEY}"},
            )
            clients = r.json()["clients"]
            return len(clients) == 1 and clients[0]["user"] == "watcher"

    return check()


async def test_stomp_churn_gets_an_error_and_4505(hub_factory: Callable[..., Any]) -> None:
    async def attack(hub: RunningHub) -> list[Any]:
        async def one() -> tuple[str, str, int | None]:
            async with stomp(hub) as client:
                await client.connect()
                frames = []
                for i in range(400):
                    frames.append(frame("SUBSCRIBE", id=f"s{i}", destination=f"/topic/{CHANNEL}"))
                    frames.append(frame("UNSUBSCRIBE", id=f"s{i}"))
                try:
                    for data in frames:
                        await client.send_raw(data)
                except ConnectionClosed:
                    pass
                while (got := await client.recv(wait=10)).command != "ERROR":
                    assert got.command in ("MESSAGE", "RECEIPT"), got
                return got.headers["message"], got.headers["x-code"], await client.closed()

        return list(await asyncio.gather(one(), one()))

    watcher, published, (results,) = await watched(hub_factory, attack)
    for message, code, close in results:
        assert "client_command_rate" in message
        assert code == "rate_limited"
        assert close == 4505
    assert watcher.events["join"] + watcher.events["leave"] <= 2 * (BURST + 2 * 20 * 2)
    assert len(watcher.latencies) == published


async def test_costly_reads_spend_the_same_budget(hub_factory: Callable[..., Any]) -> None:
    """history, presence, presence_stats and refresh are bounded like subscribe; ping is not."""
    hub: RunningHub = await hub_factory(
        # A token every 100 s: however slow the machine, none comes back during the test.
        **settings(client_command_rate=0.01, max_subscriptions_per_connection=4),
    )
    burst = hub.hub.settings.limits.command_burst
    assert burst == 300
    async with hub.ws() as ws:
        token = mint_token(SECRET, "reader", ["chat:*"])
        for i in range(burst):
            op = ("history", "presence", "presence_stats")[i % 3]
            reply = await ws.call(op, channel=CHANNEL)
            assert "ok" in reply, (i, reply)
        for op, fields in (
            ("history", {"channel": CHANNEL}),
            ("presence", {"channel": CHANNEL}),
            ("refresh", {"token": token}),
            ("subscribe", {"channel": CHANNEL}),
        ):
            reply = await ws.call(op, **fields)
            assert reply["error"]["code"] == "rate_limited", (op, reply)
        for _ in range(100):
            assert "ok" in await ws.call("ping")


async def test_reads_across_a_users_connections_share_one_budget(
    hub_factory: Callable[..., Any],
) -> None:
    """A connection's budget comes back with each new connection: a user with many, each
    within its own, listed a full channel's presence (a thousand entries, 0.7 ms of the hub's
    core each) as often as it liked. Reads and token ops also take from the user's budget,
    across its connections and the client API: past it ``rate_limited`` with
    ``retry_after``, no strike towards 4505, and another user goes on."""
    burst = 40
    hub: RunningHub = await hub_factory(
        **settings(
            client_command_rate=0.01,  # no refill to speak of within the test
            client_command_burst=burst,
            max_subscriptions_per_connection=4,
        )
    )
    assert hub.hub.settings.limits.command_burst == burst
    mallory = mint_token(SECRET, "mallory", ["chat:*"])
    ops = ("history", "presence", "presence_stats")
    replies: list[dict[str, Any]] = []
    for _ in range(4):  # each connection within its own budget of 40
        async with hub.ws() as ws:
            assert "ok" in await ws.call("connect", token=mallory)
            for i in range(15):
                replies.append(await ws.call(ops[i % 3], channel=CHANNEL))
            assert "ok" in await ws.call("ping")  # not closed
    ok = [r for r in replies if "ok" in r]
    refused = [r["error"] for r in replies if "error" in r]
    assert len(ok) == burst, len(ok)
    assert len(refused) == 60 - burst
    assert all(e["code"] == "rate_limited" and e["retry_after"] >= 1 for e in refused), refused
    async with hub.http() as http:
        r = await http.get(
            "/client/presence",
            params={"channel": CHANNEL},
            headers={"Authorization": f"Bearer {mallory}"},
        )
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
    async with hub.ws() as ws:
        assert "ok" in await ws.call("connect", token=mint_token(SECRET, "bob", ["chat:*"]))
        assert "ok" in await ws.call("presence", channel=CHANNEL)


async def test_twelve_churners_without_join_leave_leave_others_unharmed(
    hub_factory: Callable[..., Any],
) -> None:
    """Subscribe churn costs the hub even with no event to send (replies, history reads,
    presence entries): the budget bounds it, so a watcher's latency holds and everything the
    backend publishes meanwhile reaches it.

    The budget bounds the work each churner gets out of the hub before it is closed, not the
    time that work takes: on a machine short of CPU it takes longer (each churner goes on
    until it is closed, however long that takes here), and how many the backend
    publishes meanwhile says more of the machine's other load than of the hub (with the budget
    64-69 of 73 measured on a quiet machine, 29 of 65 under a load average of 30; without it 34-41
    of 73). What is checked is the work itself, the replies each churner got: with the budget
    its burst and what refilled before it was closed (some 620, an unsubscribe never being
    refused), without it all it sent (4,800 each in 2 s, and on)."""

    churners = ChurnersApart(12, timeout(15))
    watcher, published, (results,) = await watched(
        hub_factory,
        churners.run,
        seconds=4.0,
        baseline=True,
        prepare=churners.ready,
        join_leave=False,
    )
    assert all(code == 4505 for _, code, _ in results), results  # each one's replies and close
    # Subscribes within the burst and its refill (20 a second for as long as it was open: on
    # a loaded machine its close takes longer), the unsubscribes between them, 50 refusals.
    for outcomes, _, open_for in results:
        most = 2 * (BURST + 20 * (open_for + 1))
        assert outcomes["ok"] <= most and outcomes["rate_limited"] <= 50, (outcomes, open_for)
    assert watcher.events == Counter()
    assert published > 0 and len(watcher.latencies) == published
    assert max(watcher.latencies) < max(timeout(0.5), 10 * watcher.alone_latency)


async def test_a_reconnect_resubscribing_everything_passes(
    hub_factory: Callable[..., Any],
) -> None:
    """connect, then as many subscribes as a connection may hold and a history read for each,
    sent at once: nothing refused, twice (the next connection has a budget of its own)."""
    hub: RunningHub = await hub_factory(**settings())
    limit = hub.hub.settings.limits.max_subscriptions_per_connection
    channels = [f"chat:room-{n}" for n in range(limit)]
    token = mint_token(SECRET, "reader", ["chat:*"])
    for _ in range(2):
        async with hub.ws() as ws:
            commands = [{"id": 0, "op": "connect", "token": token}]
            commands += [
                {"id": i + 1, "op": "subscribe", "channel": c} for i, c in enumerate(channels)
            ]
            commands += [
                {"id": limit + i + 1, "op": "history", "channel": c} for i, c in enumerate(channels)
            ]
            for command in commands:
                await ws.send(command)
            replies: dict[int, dict[str, Any]] = {}
            while len(replies) < len(commands):
                msg = await ws.recv()
                if "id" in msg:
                    replies[msg["id"]] = msg
            refused = [r for r in replies.values() if "error" in r]
            assert refused == []


async def test_user_join_leave_is_not_amplified_by_churn(hub_factory: Callable[..., Any]) -> None:
    """With ``join_leave = "user"`` a user's churn within the grace is one join, and anonymous
    churn none."""

    async def attack(hub: RunningHub) -> None:
        async with hub.ws() as ws:
            token = mint_token(SECRET, "churner", ["chat:*"])
            assert "ok" in await ws.call("connect", token=token)
            for _ in range(50):
                assert "ok" in await ws.subscribe(CHANNEL)
                assert "ok" in await ws.call("unsubscribe", channel=CHANNEL)
        await ws_churner(hub, 1.0)

    watcher, _, _ = await watched(hub_factory, attack, join_leave="user")
    assert watcher.by_client.pop("watcher") == ["join"]
    # The churner's join once, perhaps its leave once its grace passed; anonymous: nothing.
    assert watcher.by_client.pop("churner") in (["join"], ["join", "leave"])
    assert watcher.by_client == {}


async def test_an_unsubscribe_is_never_refused(hub_factory: Callable[..., Any]) -> None:
    # Refused, it would leave a subscription the client thinks gone: still delivered, still in
    # presence, still counted against its cap.
    hub: RunningHub = await hub_factory(
        namespaces={"room": {"anonymous": True, "presence_read": "anyone"}},
        limits={
            "max_subscriptions_per_connection": 2,
            "client_command_burst": 1,
            "client_command_rate": 0.01,
        },
    )
    async with hub.ws() as ws, hub.ws() as watcher:
        assert "ok" in await ws.subscribe("room:b")
        while "ok" in await ws.subscribe("room:a"):  # the whole budget, on subscribes alone
            assert "ok" in await ws.call("unsubscribe", channel="room:a")
        for channel in ("room:a", "room:b"):
            reply = await ws.call("unsubscribe", channel=channel)
            assert "ok" in reply or reply["error"]["code"] == "not_subscribed", reply
        for channel in ("room:a", "room:b"):
            present = await watcher.call("presence", channel=channel)
            assert present["ok"]["clients"] == [], present
    async with stomp(hub) as client:  # STOMP: 20 SUBSCRIBEs and 20 UNSUBSCRIBEs in 24 tokens
        await client.connect()
        for n in range(20):
            await client.send("SUBSCRIBE", id=str(n), destination="/topic/room:b")
            await client.send("UNSUBSCRIBE", id=str(n), receipt=f"u{n}")
            assert (await client.expect("RECEIPT")).headers["receipt-id"] == f"u{n}"


async def test_twenty_malformed_frames_are_answered_and_the_next_closes(
    hub: RunningHub,
) -> None:
    """Malformed JSON and unknown ops each get an error reply; a connection is tolerated 20 of
    them, whatever comes between, and the 21st closes it with 4507 (``bad_request``)."""
    bad = ["{not json", '{"id": 1, "op": "fly"}', '["an", "array"]', '{"id": "x", "op": 7}']
    async with hub.ws() as ws:
        for n in range(20):
            await ws.conn.send(bad[n % len(bad)])
            reply = await ws.recv()
            assert reply["error"]["code"] in ("bad_request", "unknown_op"), reply
            if n == 9:  # a good command between them does not wipe the count
                assert "ok" in await ws.subscribe("chat:between")
        await ws.conn.send(bad[0])
        assert (await ws.recv())["error"]["code"] == "bad_request"
        assert (await ws.recv())["disconnect"]["code"] == 4507
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.conn.close_code == 4507
