"""Cursors are positions, not credentials: anyone can build one from the documented layout, and
that grants nothing — every read checks the channel's permission, and a made-up position is
treated like any other (replayed, or reset). Only corruption is refused (`bad_cursor`)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from hashlib import blake2b
from typing import Any

import pytest

from clarion.asgi.channelrequest import resume_positions
from clarion.core.auth import mint_token
from clarion.protocol.cursor import Positions, channel_tag
from clarion.protocol.publication import StreamPosition

from ..conftest import RunningHub
from ..stomp.client import stomp
from ..support.steps import python_steps
from ..transports.streams import poll, sse

SECRET = "a-long-enough-test-secret-0123456789"
KEY = "backend-key"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def forge(positions: dict[str, tuple[str, int]]) -> str:
    """A cursor built from the layout in the protocol reference, without clarion's code."""
    body = bytearray(b"\x01") + _varint(len(positions))
    for channel, (epoch, offset) in positions.items():
        body += blake2b(channel.encode(), digest_size=8, person=b"clarion.chan").digest()
        body += bytes([len(epoch)]) + epoch.encode() + _varint(offset)
    body += blake2b(bytes(body), digest_size=4, person=b"clarion.cursor").digest()
    return base64.urlsafe_b64encode(bytes(body)).rstrip(b"=").decode()


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> RunningHub:
    running: RunningHub = await hub_factory(token_secret=SECRET, api_key=KEY)
    return running


def bearer(channels: list[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, 'mallory', channels)}"}


async def test_anyone_can_build_the_hubs_cursors(hub: RunningHub) -> None:
    published = await hub.publish("feed:a", 1)
    assert forge({"feed:a": (published["epoch"], published["offset"])}) == published["cursor"]


async def test_a_built_cursor_opens_no_channel(hub: RunningHub) -> None:
    published = await hub.publish("secret:x", "hidden")
    cursor = forge({"secret:x": (published["epoch"], 0)})
    headers = bearer(["feed:*"])
    async with hub.ws(additional_headers=headers) as ws:
        assert (await ws.subscribe("secret:x", since=cursor))["error"]["code"] == "forbidden"
        reply = await ws.call("history", channel="secret:x", since=cursor)
        assert reply["error"]["code"] == "forbidden"
    async with hub.http(headers=headers) as http:
        for path in ("/sse", "/poll"):
            r = await http.get(path, params={"channel": "secret:x", "cursor": cursor, "timeout": 0})
            assert r.status_code == 403, r.text
        r = await http.get(
            "/sse", params={"channel": "secret:x"}, headers={"Last-Event-ID": cursor}
        )
        assert r.status_code == 403
    async with stomp(hub) as client:
        await client.connect(passcode=headers["Authorization"].removeprefix("Bearer "))
        await client.send("SUBSCRIBE", id="1", destination="/topic/secret\\cx", x_since=cursor)
        assert (await client.expect("ERROR")).headers["x-close-code"] == "4502"


async def test_a_built_position_is_replayed_or_reset_like_any_other(hub: RunningHub) -> None:
    pubs = [await hub.publish("feed:a", n) for n in range(5)]
    epoch = pubs[0]["epoch"]
    async with hub.ws(additional_headers=bearer(["feed:*"])) as ws:
        # Inside history: the publications after it, as for a cursor the hub issued.
        reply = await ws.subscribe("feed:a", since=forge({"feed:a": (epoch, 2)}))
        assert reply["ok"]["recovered"] is True
        assert [(await ws.recv())["data"] for _ in range(3)] == [2, 3, 4]
        await ws.call("unsubscribe", channel="feed:a")
        # Past the top, or of another epoch: a reset, then live publications.
        for made_up, reason in [((epoch, 99), "position"), (("forged-epoch", 3), "epoch")]:
            reply = await ws.subscribe("feed:a", since=forge({"feed:a": made_up}))
            assert reply["ok"]["reset"] == reason
            assert (await ws.recv())["reset"]["reason"] == reason
            await ws.call("unsubscribe", channel="feed:a")
    async with hub.http(headers=bearer(["feed:*"])) as http:
        body = await poll(http, "feed:a", cursor=forge({"feed:a": (epoch, 3)}), timeout=0)
        assert [p["data"] for p in body["publications"]] == [3, 4]
    async with sse(
        hub, "feed:a", headers=bearer(["feed:*"]), cursor=forge({"feed:a": (epoch, 4)})
    ) as stream:
        await stream.opening()
        assert [p["data"] for _, p in await stream.messages(1)] == [4]


async def test_only_corruption_is_refused(hub: RunningHub) -> None:
    published = await hub.publish("feed:a", 1)
    good = forge({"feed:a": (published["epoch"], 0)})
    raw = bytearray(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    raw[12] ^= 0x01  # one bit of the epoch, checksum left as it was
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    async with hub.ws(additional_headers=bearer(["feed:*"])) as ws:
        for bad in (flipped, good[:-3], forge({"feed:b": (published["epoch"], 0)})):
            assert (await ws.subscribe("feed:a", since=bad))["error"]["code"] == "bad_cursor"


@pytest.mark.parametrize(
    "epochs",
    [
        pytest.param({"feed:a": "e" * 65, "feed:b": "e" * 65}, id="two-channels-65-bytes"),
        pytest.param({"feed:a": "e" * 255, "feed:b": "e" * 8}, id="one-of-two-255-bytes"),
        pytest.param({"feed:a": "e" * 65}, id="one-channel-65-bytes"),
    ],
)
async def test_an_epoch_the_hub_cannot_write_is_a_bad_cursor_everywhere(
    hub: RunningHub, epochs: dict[str, str]
) -> None:
    """Well-formed by the layout, but with an epoch over 64 bytes: no cursor the hub writes,
    refused where it is read (once a 500 on /poll: the hub failed writing it back)."""
    await hub.publish("feed:a", 1)
    await hub.publish("feed:b", 1)
    cursor = forge({channel: (epoch, 0) for channel, epoch in epochs.items()})
    channels = list(epochs)
    reader = bearer(["feed:*"])
    async with hub.http(headers=reader) as http:
        requests = [
            ("/poll", {"channel": channels, "cursor": cursor, "timeout": 0}, reader),
            ("/sse", {"channel": channels, "cursor": cursor}, reader),
            ("/sse", {"channel": channels}, {**reader, "Last-Event-ID": cursor}),
            ("/client/history", {"channel": "feed:a", "since": cursor}, reader),
            (
                "/api/history",
                {"channel": "feed:a", "since": cursor},
                {"Authorization": f"apikey {KEY}"},
            ),
        ]
        for path, params, headers in requests:
            r = await http.get(path, params=params, headers=headers)
            assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_cursor"), (path, r.text)
    async with hub.ws(additional_headers=reader) as ws:
        assert (await ws.subscribe("feed:a", since=cursor))["error"]["code"] == "bad_cursor"
        reply = await ws.call("history", channel="feed:a", since=cursor)
        assert reply["error"]["code"] == "bad_cursor"
    async with stomp(hub) as client:
        await client.connect(passcode=reader["Authorization"].removeprefix("Bearer "))
        await client.send("SUBSCRIBE", id="1", destination="/topic/feed\\ca", x_since=cursor)
        error = await client.expect("ERROR")
        assert "bad_cursor" in str(error.headers) + str(error.body), error


def test_the_cursors_of_a_request_cost_as_much_as_the_query_is_long() -> None:
    """A 6.5 KB query naming 128 channels and 142 one-channel cursors, the last of them a
    refusal: each cursor was looked up once per channel, a digest each, 18,000 in one request
    before it was refused. Four times the channels and cursors is about four times the work,
    not sixteen."""

    def query(n: int) -> tuple[list[str], list[str]]:
        channels = [f"chat:room-{i}" for i in range(n)]
        return channels, [forge({channel: ("e", 1)}) for channel in channels]

    def steps(n: int) -> int:
        channels, cursors = query(n)
        return python_steps(lambda: resume_positions(cursors, channels))

    small, large = steps(32), steps(128)
    assert large < 5 * small, (small, large)


def test_a_wide_streams_id_costs_the_same_python_whatever_its_channels() -> None:
    """Every event of a multi-channel SSE stream carries an ``id:`` naming each channel's
    position; the stream's shape is the client's choice. Its Python is one entry's, however
    many channels: the rest is a join, a digest and base64, in C."""

    def steps(n: int) -> int:
        positions = Positions()
        tags = [channel_tag(f"chat:room-{i}") for i in range(n)]
        for tag in tags:
            positions[tag] = StreamPosition("0123456789ab", 1)
        positions.encode()
        moved = StreamPosition("0123456789ab", 2)

        def event() -> None:
            positions[tags[0]] = moved
            positions.encode()

        return python_steps(event)

    assert steps(128) <= steps(2) + 10  # the count of entries: a varint of two bytes, not one
