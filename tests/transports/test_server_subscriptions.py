"""Server-side subscriptions over real sockets: the backend (and the token's ``subs`` claim)
subscribes live sessions on every transport, and each one is told."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from clarion.protocol.cursor import Cursor, encode_single
from clarion.protocol.publication import StreamPosition

from ..conftest import WS, RunningHub, timeout
from ..stomp.client import stomp
from .streams import poll, sse

SECRET = "a-long-enough-test-secret-0123456789"
API = {"Authorization": "apikey k"}


def token(user: str = "alice", channels: Any = ("chat:*",), **claims: Any) -> str:
    body = {"sub": user, "channels": list(channels), "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture
async def hub(hub_factory: Any) -> RunningHub:
    running: RunningHub = await hub_factory(token_secret=SECRET, api_key="k")
    return running


async def api(hub: RunningHub, path: str, expect: int = 200, **body: Any) -> dict[str, Any]:
    async with hub.http() as http:
        r = await http.post(path, json=body, headers=API)
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


async def push(ws: WS, key: str) -> dict[str, Any]:
    """The next ``key`` push (publications and other pushes before it are not expected)."""
    msg = await ws.recv()
    assert key in msg, msg
    value: dict[str, Any] = msg[key]
    return value


async def nothing_before_reply(ws: WS) -> None:
    await ws.send({"id": "check", "op": "ping"})
    assert await ws.recv() == {"id": "check", "ok": {}}


async def publication(ws: WS) -> dict[str, Any]:
    msg = await ws.recv()
    assert "offset" in msg, msg
    return msg


async def test_every_session_of_the_user_is_subscribed_and_told(hub: RunningHub) -> None:
    async with (
        hub.ws(additional_headers=bearer(token())) as tab1,
        hub.ws(additional_headers=bearer(token())) as tab2,
        hub.ws(additional_headers=bearer(token("bob"))) as other,
    ):
        for ws in (tab1, tab2, other):
            assert "ok" in await ws.call("ping")
        # The token allows chat:* only: the backend's subscription is its own grant.
        await api(hub, "/api/subscribe", user="alice", channel="room:1")
        for ws in (tab1, tab2):
            told = await push(ws, "subscribe")
            assert told["channel"] == "room:1" and told["recovered"] is True
            assert Cursor.decode(told["cursor"]).get("room:1") is not None
            assert "since" not in told  # nothing older follows: it stands at the top
        await hub.publish("room:1", "hello")
        for ws in (tab1, tab2):
            assert (await publication(ws))["data"] == "hello"
        # A new token does not end what the backend granted.
        assert "ok" in await tab1.call("refresh", token=token())
        # Subscribing again is a no-op: no second push, no second delivery.
        await api(hub, "/api/subscribe", user="alice", channel="room:1")
        await api(hub, "/api/unsubscribe", user="alice", channel="room:1")
        for ws in (tab1, tab2):
            assert await push(ws, "unsubscribe") == {"channel": "room:1", "reason": "server"}
        await hub.publish("room:1", "gone")
        assert "ok" in await tab1.subscribe("chat:a")
        await hub.publish("chat:a", "next")
        assert (await publication(tab1))["data"] == "next"  # nothing of room:1 came first
        # bob was never addressed: nothing came before his reply.
        await nothing_before_reply(other)


async def test_one_connection_by_client_id_and_resume_from_since(hub: RunningHub) -> None:
    before = await hub.publish("room:2", 1)
    await hub.publish("room:2", 2)
    await hub.publish("room:2", 3)
    async with (
        hub.ws(additional_headers=bearer(token())) as tab1,
        hub.ws(additional_headers=bearer(token())) as tab2,
    ):
        client = (await tab1.call("connect", token=token()))["ok"]["client"]
        assert "ok" in await tab2.call("ping")
        await api(hub, "/api/subscribe", client=client, channel="room:2", since=before["cursor"])
        told = await push(tab1, "subscribe")
        assert told["recovered"] is True
        # It stands at ``since`` until the replay comes, not at the top it was told of.
        assert told["since"] == before["cursor"] and told["cursor"] != before["cursor"]
        assert [(await publication(tab1))["data"] for _ in range(2)] == [2, 3]
        await api(hub, "/api/unsubscribe", client=client, channel="room:2")
        assert (await push(tab1, "unsubscribe"))["reason"] == "server"
        await nothing_before_reply(tab2)


async def test_subs_claim_subscribes_at_connect_within_permissions(hub: RunningHub) -> None:
    tok = token(channels=["chat:*"], subs=["chat:general", "secret:x"])
    async with hub.ws(additional_headers=bearer(tok)) as ws:
        pushes = {}
        for _ in range(2):
            msg = await ws.recv()
            key = next(iter(msg))
            pushes[msg[key]["channel"]] = (key, msg[key])
        assert pushes["chat:general"][0] == "subscribe"
        assert pushes["secret:x"] == ("unsubscribe", {"channel": "secret:x", "reason": "forbidden"})
        await hub.publish("chat:general", "hi")
        assert (await publication(ws))["data"] == "hi"
        # A claimed subscription is the token's: a narrower token ends it.
        assert "ok" in await ws.call("refresh", token=token(channels=["chat:other"]))
    # The claim is checked when the token is read: not a list of channel names, refused.
    for bad in (["chat:*"], "chat:a", [""]):
        async with hub.ws(additional_headers=bearer(token(subs=bad))) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4500


async def test_sse_stream_gets_the_channel_and_an_id_for_both(hub: RunningHub) -> None:
    async with sse(hub, "chat:a", headers=bearer(token())) as stream:
        await stream.opening()
        await hub.publish("chat:a", "before")
        first = (await stream.next()).id
        await api(hub, "/api/subscribe", user="alice", channel="room:3")
        event = await stream.next()
        assert event.event == "subscribe" and event.json()["channel"] == "room:3"
        cursor = Cursor.decode(event.id)
        assert cursor.get("chat:a") == Cursor.decode(first).get("chat:a")
        assert cursor.get("room:3") is not None
        await hub.publish("room:3", "added")
        await hub.publish("chat:a", "still")
        got = [(e.event, e.json()["data"]) for e in [await stream.next(), await stream.next()]]
        assert got == [("message", "added"), ("message", "still")]
        last_id = stream.last_id
        await api(hub, "/api/unsubscribe", user="alice", channel="room:3")
        ended = await stream.next()
        assert ended.event == "unsubscribe" and ended.json() == {
            "channel": "room:3",
            "reason": "server",
        }
        # The channel leaves the id; the URL's channel stays in it.
        assert Cursor.decode(ended.id).get("room:3") is None
        assert Cursor.decode(ended.id).get("chat:a") == Cursor.decode(last_id).get("chat:a")
        await hub.publish("room:3", "not for us")
        await hub.publish("chat:a", "last")
        assert (await stream.next()).json()["data"] == "last"
    # The stream's last id resumes the URL's channel on reconnect.
    await hub.publish("chat:a", "missed")
    async with sse(hub, "chat:a", headers={**bearer(token()), "Last-Event-ID": ended.id}) as again:
        await again.opening()
        assert [p["data"] for _, p in await again.messages(2)] == ["last", "missed"]


async def test_waiting_poll_is_told_and_the_next_poll_loses_nothing(hub: RunningHub) -> None:
    # Each poll is a request of its own, checked against the token: the next one names room:4.
    async with hub.http(headers=bearer(token(channels=["chat:*", "room:*"]))) as http:
        first = await poll(http, "chat:a", timeout=0)
        waiting = asyncio.create_task(poll(http, "chat:a", cursor=first["cursor"], timeout=20))
        await asyncio.sleep(timeout(0.5))
        await api(hub, "/api/subscribe", user="alice", channel="room:4")
        reply = await asyncio.wait_for(waiting, timeout(10))
        assert [s["channel"] for s in reply["subscribed"]] == ["room:4"]
        assert Cursor.decode(reply["cursor"]).get("room:4") is not None
        await hub.publish("room:4", "between polls")
        nxt = await poll(http, "chat:a", "room:4", cursor=reply["cursor"], timeout=5)
        assert [p["data"] for p in nxt["publications"]] == ["between polls"]
        waiting = asyncio.create_task(
            poll(http, "chat:a", "room:4", cursor=nxt["cursor"], timeout=20)
        )
        await asyncio.sleep(timeout(0.5))
        await api(hub, "/api/unsubscribe", user="alice", channel="room:4")
        reply = await asyncio.wait_for(waiting, timeout(10))
        assert reply["unsubscribed"] == [{"channel": "room:4", "reason": "server"}]


async def test_a_poll_subscribed_from_a_cursor_history_cannot_cover_is_told_of_the_gap(
    hub: RunningHub,
) -> None:
    """The backend subscribes a waiting poll with a ``since`` of an epoch the hub no longer
    has: the client's next poll, which names the channel with the reply's cursor, gets the
    reset (as every transport would), not publications from the top as if nothing was missed."""
    for i in range(3):
        await hub.publish("room:9", i)
    stale = encode_single("room:9", "0123456789ab", 2)
    async with hub.http(headers=bearer(token(channels=["chat:*", "room:*"]))) as http:
        first = await poll(http, "chat:a", timeout=0)
        waiting = asyncio.create_task(poll(http, "chat:a", cursor=first["cursor"], timeout=20))
        await asyncio.sleep(timeout(0.5))
        await api(hub, "/api/subscribe", user="alice", channel="room:9", since=stale)
        reply = await asyncio.wait_for(waiting, timeout(10))
        assert [s["channel"] for s in reply["subscribed"]] == ["room:9"]
        nxt = await poll(http, "chat:a", "room:9", cursor=reply["cursor"], timeout=0)
        assert nxt["reset"]["channel"] == "room:9" and nxt["reset"]["reason"] == "epoch"
        await hub.publish("room:9", "after")
        live = await poll(http, "chat:a", "room:9", cursor=nxt["cursor"], timeout=5)
        assert [p["data"] for p in live["publications"]] == ["after"]


async def test_stomp_gets_a_hub_subscription_with_its_own_id(hub: RunningHub) -> None:
    async with stomp(hub) as client:
        await client.connect(Authorization=f"Bearer {token()}")
        await api(hub, "/api/subscribe", user="alice", channel="room:5")
        told = await client.expect("MESSAGE")
        assert told.headers["x-event"] == "subscribe"
        assert told.headers["subscription"] == "server-room:5"
        assert told.headers["destination"] == "/topic/room:5"
        assert Cursor.decode(told.headers["x-cursor"]).get("room:5") is not None
        await hub.publish("room:5", {"n": 1})
        message = await client.expect("MESSAGE")
        assert message.headers["subscription"] == "server-room:5" and message.json() == {"n": 1}
        assert "x-event" not in message.headers
        await api(hub, "/api/unsubscribe", user="alice", channel="room:5")
        ended = await client.expect("MESSAGE")
        assert ended.headers["x-event"] == "unsubscribe"
        assert ended.headers["x-reason"] == "server"
        assert ended.headers["subscription"] == "server-room:5"
        # The connection goes on: a receipt still comes, and nothing of room:5 before it.
        await hub.publish("room:5", "gone")
        await client.send("SUBSCRIBE", destination="/topic/chat:a", id="s1", receipt="r1")
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "r1"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"channel": "room:1"}, "bad_request"),  # neither user nor client
        ({"user": "a", "client": "b", "channel": "room:1"}, "bad_request"),
        ({"user": "", "channel": "room:1"}, "bad_request"),
        ({"user": 5, "channel": "room:1"}, "bad_request"),
        ({"user": "a"}, "bad_channel"),
        ({"user": "a", "channel": "bad channel"}, "bad_channel"),
        ({"user": "a", "channel": "room:1", "since": "garbage"}, "bad_cursor"),
        ({"user": "a", "channel": "room:1", "since": 7}, "bad_cursor"),
    ],
)
async def test_bad_requests_are_refused(hub: RunningHub, body: dict[str, Any], code: str) -> None:
    async with hub.http() as http:
        r = await http.post("/api/subscribe", json=body, headers=API)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
        if "since" not in body:
            r = await http.post("/api/unsubscribe", json=body, headers=API)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


async def test_the_api_key_is_required(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        for path in ("/api/subscribe", "/api/unsubscribe"):
            r = await http.post(path, json={"user": "alice", "channel": "room:1"})
            assert r.status_code == 401


async def test_subs_claim_on_sse_and_stomp(hub: RunningHub) -> None:
    tok = token(channels=["chat:*"], subs=["chat:claimed", "secret:x"])
    async with sse(hub, "chat:a", headers=bearer(tok)) as stream:
        await stream.opening()
        told = {}
        for _ in range(2):
            event = await stream.next()
            told[event.json()["channel"]] = event.event
        assert told == {"chat:claimed": "subscribe", "secret:x": "unsubscribe"}
        await hub.publish("chat:claimed", "on the stream")
        event = await stream.next()
        assert event.json()["data"] == "on the stream"
        assert Cursor.decode(event.id).get("chat:a") is not None  # both channels in the id
    async with stomp(hub) as client:
        await client.connect(Authorization=f"Bearer {tok}")
        frames = [await client.expect("MESSAGE") for _ in range(2)]
        by_channel = {f.headers["destination"]: f.headers for f in frames}
        assert by_channel["/topic/chat:claimed"]["x-event"] == "subscribe"
        assert by_channel["/topic/secret:x"]["x-event"] == "unsubscribe"
        assert by_channel["/topic/secret:x"]["x-reason"] == "forbidden"
        await hub.publish("chat:claimed", {"n": 2})
        message = await client.expect("MESSAGE")
        assert message.json() == {"n": 2}
        assert message.headers["subscription"] == "server-chat:claimed"


async def test_a_stomp_subscribe_beside_a_backend_made_one_is_asked_about_as_any(
    hub: RunningHub,
) -> None:
    """The backend's subscription lets the connection receive the channel live; it grants the
    client nothing: its own SUBSCRIBE to the channel (resuming from before the grant, or not)
    is refused as without it, and nothing stored before the grant is replayed."""
    published = [await hub.publish("room:7", {"before": n}) for n in range(3)]
    from_zero = Cursor.single("room:7", StreamPosition(published[0]["epoch"], 0)).encode()
    for since in ({"x_since": from_zero}, {}):
        async with stomp(hub) as client:
            await client.connect(Authorization=f"Bearer {token()}")
            await api(hub, "/api/subscribe", user="alice", channel="room:7")
            assert (await client.expect("MESSAGE")).headers["x-event"] == "subscribe"
            await client.send(
                "SUBSCRIBE", destination="/topic/room:7", id="mine", receipt="r", **since
            )
            refused = await client.expect("ERROR")
            assert refused.headers["x-code"] == "forbidden"
            with pytest.raises(ConnectionClosed):  # closed, and no MESSAGE of before the grant
                await client.recv()
    # Where the token allows the channel, a second subscription beside the backend's is served.
    async with stomp(hub) as client:
        await client.connect(Authorization=f"Bearer {token(channels=['room:*'])}")
        await api(hub, "/api/subscribe", user="alice", channel="room:7")
        assert (await client.expect("MESSAGE")).headers["x-event"] == "subscribe"
        await client.send(
            "SUBSCRIBE", destination="/topic/room:7", id="mine", receipt="r", x_since=from_zero
        )
        assert (await client.expect("RECEIPT")).headers["receipt-id"] == "r"
        replayed = [await client.expect("MESSAGE") for _ in range(3)]
        assert [m.json() for m in replayed] == [{"before": n} for n in range(3)]
        assert {m.headers["subscription"] for m in replayed} == {"mine"}
