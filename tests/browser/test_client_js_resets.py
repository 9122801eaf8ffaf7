"""The browser client's account of a resume, on every transport: `subscribed` says whether it
recovered, and a gap history cannot cover is told by exactly one `reset`, right after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from clarion import Hub, Settings

from ..conftest import RunningHub, start_hub, stop_hub
from .chromium import needs_chromium
from .test_client_js import TRANSPORTS, browser, open_client, page, pubs, subscribed, wait_for

pytestmark = needs_chromium
__all__ = ["browser", "page"]  # fixtures

# A page with a client and one subscription per channel given, each with its own options;
# every subscription event is recorded with its channel.
SUBSCRIBE_ALL = """async ([hubUrl, transport, subs]) => {
    const { connect } = await import('/clarion.js');
    window.log = { pubs: [], events: [], states: [] };
    window.client = connect(hubUrl, { transports: [transport], backoffBase: 50, backoffCap: 1000 });
    window.client.on('connected', (e) => window.log.states.push('connected:' + e.transport));
    for (const [channel, options] of subs) {
        const sub = window.client.subscribe(channel, {
            ...options, onPublication: (p) => window.log.pubs.push([p.channel, p.data]),
        });
        for (const e of ['subscribed', 'reset']) {
            sub.on(e, (d) => window.log.events.push({ event: e, ...d }));
        }
    }
}"""


def told(events: list[dict[str, Any]], channel: str) -> list[str]:
    """A channel's subscription events, each as `subscribed:<recovered>` or `reset:<reason>`."""
    out = []
    for e in events:
        if e["channel"] == channel:
            out.append(
                f"subscribed:{e['recovered']}"
                if e["event"] == "subscribed"
                else f"reset:{e['reason']}"
            )
    return out


async def resumed(
    browser: Any, hub: RunningHub, transport: str, since: dict[str, str]
) -> dict[str, list[Any]]:
    """A page whose client resumes each channel of `since` from its cursor over `transport`;
    once a live publication has come on each, after any reset (a reset told twice comes
    before it), what each subscription told and delivered."""
    page = await browser.new_page()
    try:
        await page.goto(hub.http_url + "/healthz")
        subs = [[channel, {"since": cursor}] for channel, cursor in since.items()]
        await page.evaluate(SUBSCRIBE_ALL, [hub.http_url, transport, subs])
        for channel in since:
            await subscribed(hub, channel)
            await hub.publish(channel, "live")
        await wait_for(
            page, f"window.log.pubs.filter((p) => p[1] === 'live').length >= {len(since)}"
        )
        events = await page.evaluate("window.log.events")
        got = await page.evaluate("window.log.pubs")
        return {c: told(events, c) + [p[1] for p in got if p[0] == c] for c in since}
    finally:
        await page.close()


async def test_a_cursor_of_another_hub_is_one_reset_after_subscribed(
    browser: Any, hub_factory: Any
) -> None:
    # The cursors of a hub that is gone: the new hub's channels have another epoch.
    before = await hub_factory()
    stale = {t: (await before.publish(f"chat:{t}", "old"))["cursor"] for t in TRANSPORTS}
    await stop_hub(before)
    hub = await hub_factory()
    seen = {t: await resumed(browser, hub, t, {f"chat:{t}": stale[t]}) for t in TRANSPORTS}
    assert seen == {
        t: {f"chat:{t}": ["subscribed:False", "reset:epoch", "live"]} for t in TRANSPORTS
    }


async def test_a_trimmed_gap_is_one_reset_after_subscribed_and_a_covered_one_none(
    browser: Any, hub_factory: Any
) -> None:
    hub = await hub_factory(namespaces={"chat": {"history_size": 3}})
    seen = {}
    for transport in TRANSPORTS:
        since = {}
        for channel, missed in ((f"chat:trimmed-{transport}", 7), (f"chat:covered-{transport}", 3)):
            since[channel] = (await hub.publish(channel, 0))["cursor"]
            for n in range(1, missed + 1):  # history keeps 3: past them, the oldest are gone
                await hub.publish(channel, n)
        seen[transport] = await resumed(browser, hub, transport, since)
    assert seen == {
        t: {
            # A reset goes on from the top, not from what history still holds.
            f"chat:trimmed-{t}": ["subscribed:False", "reset:trimmed", "live"],
            f"chat:covered-{t}": ["subscribed:True", 1, 2, 3, "live"],
        }
        for t in TRANSPORTS
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_hub_restart_under_a_page_is_one_reset_after_subscribed(
    page: Any, hub: RunningHub, transport: str
) -> None:
    await open_client(page, hub, {"transports": [transport]})
    await wait_for(page, "window.log.events.some((e) => e.event === 'subscribed')")
    await subscribed(hub, "chat:lobby")
    await hub.publish("chat:lobby", "before")
    assert await pubs(page, 1) == ["before"]
    await stop_hub(hub)
    again = await start_hub(hub=Hub(Settings()), port=hub.port)  # memory engine: a new epoch
    try:
        await wait_for(page, "window.log.events.some((e) => e.event === 'reset')")
        await subscribed(again, "chat:lobby")
        await again.publish("chat:lobby", "after")
        assert await pubs(page, 2) == ["before", "after"]
        events = await page.evaluate("window.log.events")
        told = [(e["event"], e.get("recovered"), e.get("reason")) for e in events]
        assert [t for t in told if t[0] != "subscribing"] == [
            ("subscribed", True, None),
            ("subscribed", False, None),
            ("reset", None, "epoch"),
        ], told
    finally:
        await stop_hub(again)


class Splitter:
    """A TCP proxy to a hub that hands the hub's bytes on a few at a time, each piece its own
    write after a pause: the client reads them in as many chunks, cut anywhere."""

    def __init__(self, port: int, piece: int = 5) -> None:
        self.port = port
        self.piece = piece
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Splitter:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        for task in (self._pipe(reader, up_writer, 65536), self._pipe(up_reader, writer, None)):
            t = asyncio.create_task(task)
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, piece: int | None
    ) -> None:
        try:
            while data := await reader.read(65536):
                step = piece or self.piece
                for at in range(0, len(data), step):
                    writer.write(data[at : at + step])
                    await writer.drain()
                    if piece is None:
                        await asyncio.sleep(0.001)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def splitter(hub: RunningHub) -> AsyncIterator[Splitter]:
    async with Splitter(hub.port) as proxy:
        yield proxy


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_stream_of_a_replay_and_a_reset_tells_each_exactly(
    page: Any, hub: RunningHub, splitter: Splitter, transport: str
) -> None:
    # All on one request: chat:replayed resumes through 40 publications, written before the
    # resets of the two others (a poll reply tells one reset at a time), and the hub's bytes
    # reach the page cut into pieces of 5.
    since = (await hub.publish("chat:replayed", 0))["cursor"]
    for n in range(1, 41):
        await hub.publish("chat:replayed", {"n": n, "pad": "x" * 40})
    stale = ["chat:stale-a", "chat:stale-b"]
    before = await start_hub()
    try:
        cursors = [(await before.publish(channel, "old"))["cursor"] for channel in stale]
    finally:
        await stop_hub(before)
    await page.goto(hub.http_url + "/healthz")
    subs = [["chat:replayed", {"since": since}]]
    subs += [[channel, {"since": cursor}] for channel, cursor in zip(stale, cursors, strict=True)]
    await page.evaluate(SUBSCRIBE_ALL, [splitter.url, transport, subs])
    await wait_for(page, "window.log.pubs.length >= 40", 30)
    for channel in stale:
        await subscribed(hub, channel)
        await hub.publish(channel, "live")
    await wait_for(page, "window.log.pubs.filter((p) => p[1] === 'live').length >= 2")
    events = await page.evaluate("window.log.events")
    assert told(events, "chat:replayed") == ["subscribed:True"], events
    for channel in stale:
        assert told(events, channel) == ["subscribed:False", "reset:epoch"], events
    got = await page.evaluate("window.log.pubs")
    assert [p[1]["n"] for p in got if p[0] == "chat:replayed"] == list(range(1, 41))
