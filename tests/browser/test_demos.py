"""The demo apps in headless Chromium, served by the demo hub (pages, token endpoint, feeds):
two people chatting, the ticker and the dashboard updating, cursors moving between two
browsers, a board that outlives its channel's history — each on WebSocket and on a fallback
transport. Each test saves a screenshot in ``test-output/demo/``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clarion.core.hub import Hub
from clarion.demo import Demo, demo_settings
from clarion.demo.feeds import DeviceSpec
from clarion.standalone import make_server

from ..conftest import clarion_server, timeout
from ..docblocks import ROOT
from .chromium import CHROMIUM, FLAGS, needs_chromium

pytestmark = [needs_chromium, clarion_server("the demo as `clarion demo` serves it")]
OUT = ROOT / "test-output" / "demo"
# The freezer drops off every few seconds here, not every half minute.
DEVICES = (
    DeviceSpec("greenhouse", "Greenhouse", 24.0, 70.0),
    DeviceSpec("freezer", "Freezer", -18.0, 30.0, online=3.0, offline=3.0),
)


class RunningDemo:
    def __init__(self, hub: Hub, url: str) -> None:
        self.hub = hub
        self.url = url

    async def subscribers(self, channel: str, count: int) -> None:
        """Wait until ``count`` sessions follow ``channel`` (a signal sent earlier is lost)."""
        for _ in range(int(timeout(15) / 0.05)):
            if self.hub.channels().get(channel, 0) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{channel}: {self.hub.channels().get(channel, 0)} subscribers")


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[RunningDemo]:
    hub = Hub(demo_settings("127.0.0.1", 0, str(tmp_path)))
    app = Demo(hub, devices=DEVICES)
    server = make_server(hub, app=app, port=0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    app.serving(url)
    try:
        yield RunningDemo(hub, url)
    finally:
        await server.shutdown(timeout=timeout(5))


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def open_app(
    browser: Any, demo: RunningDemo, app: str, transport: str, user: str = "tester"
) -> Any:
    """``app`` in a browser context of its own (its own storage: its own user)."""
    context = await browser.new_context(viewport={"width": 1100, "height": 680})
    page = await context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    # The console stays clean too: no failed load (a missing /favicon.ico among them).
    page.on(
        "console",
        lambda message: (
            page.errors.append(f"console: {message.text} ({message.location.get('url')})")
            if message.type == "error"
            else None
        ),
    )
    await page.goto(f"{demo.url}/demo/{app}?transport={transport}&user={user}")
    badge = page.locator("#transport")
    await badge.and_(page.locator("[data-state=connected]")).wait_for(timeout=ms(15))
    assert (await badge.text_content() or "").startswith(transport)
    return page


async def test_the_index_page_has_a_clean_console(browser: Any, demo: RunningDemo) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{demo.url}/demo", wait_until="networkidle")
    assert await page.locator("a[href*='/demo/chat']").count() > 0
    assert errors == []


def ms(seconds: float) -> float:
    return timeout(seconds) * 1000


async def until(page: Any, expression: str, seconds: float = 15) -> None:
    await page.wait_for_function(expression, timeout=ms(seconds))


async def screenshot(page: Any, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(OUT / f"{name}.png"))
    assert not page.errors, page.errors


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_two_people_chat(browser: Any, demo: RunningDemo, transport: str) -> None:
    alice = await open_app(browser, demo, "chat", transport, "alice")
    await alice.fill("#text", "hello, before bob came")
    await alice.press("#text", "Enter")
    await alice.locator("#messages li", has_text="before bob came").wait_for(timeout=ms(10))

    bob = await open_app(browser, demo, "chat", transport, "bob")
    # The last messages on open, from history; and each one is in the other's list.
    await bob.locator("#messages li", has_text="before bob came").wait_for(timeout=ms(10))
    await bob.locator("#people li[data-user=alice]").wait_for(timeout=ms(10))
    await alice.locator("#people li[data-user=bob]").wait_for(timeout=ms(10))

    await demo.subscribers("typing:lobby", 2)
    await alice.type("#text", "hi bob")
    await until(bob, "document.getElementById('typing').textContent === 'alice is typing…'")
    await alice.press("#text", "Enter")
    line = bob.locator("#messages li", has_text="hi bob")
    await line.wait_for(timeout=ms(10))
    assert await line.locator(".who").text_content() == "alice"
    # Sending ends the signal. Signals are never stored.
    await until(bob, "document.getElementById('typing').textContent === ''")
    assert (await demo.hub.history("typing:lobby"))[0].publications == []
    assert await bob.locator("#messages li .text").all_text_contents() == [
        "hello, before bob came",
        "hi bob",
    ]
    await screenshot(bob, f"chat-{transport}")
    await screenshot(alice, f"chat-{transport}-alice")


@pytest.mark.parametrize("transport", ["ws", "poll"])
async def test_the_ticker_updates(browser: Any, demo: RunningDemo, transport: str) -> None:
    page = await open_app(browser, demo, "ticker", transport)
    cards = page.locator("#quotes .quote")
    assert await cards.count() == 4
    for symbol in ("BTC-USD", "ETH-USD", "ACME", "EUR-USD"):
        await until(
            page, f"document.querySelector('[data-symbol=\"{symbol}\"]').dataset.updates >= 8"
        )
    prices = await page.evaluate(
        "[...document.querySelectorAll('.quote')].map((c) => c.querySelector('.price').textContent)"
    )
    assert "—" not in prices
    first = await page.evaluate("document.querySelector('[data-symbol=ACME]').dataset.price")
    await until(page, f"document.querySelector('[data-symbol=ACME]').dataset.price !== '{first}'")
    await screenshot(page, f"ticker-{transport}")


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_the_dashboard_updates_and_shows_a_device_going_offline(
    browser: Any, demo: RunningDemo, transport: str
) -> None:
    page = await open_app(browser, demo, "dashboard", transport)
    greenhouse = "document.querySelector('[data-device=greenhouse]')"
    freezer = "document.querySelector('[data-device=freezer]')"
    await until(page, f"{greenhouse}.dataset.online === 'true'")
    # Ten readings a second: twenty take about two seconds.
    await until(page, f"{greenhouse}.dataset.updates >= 20")
    # The freezer leaves and comes back; presence says so.
    await until(page, f"{freezer}.dataset.online === 'false'", seconds=20)
    await until(page, f"{freezer}.dataset.online === 'true'", seconds=20)
    await until(page, f"{freezer}.dataset.online === 'false'", seconds=20)
    assert await page.locator("[data-device=freezer] .state").text_content() == "offline"
    await screenshot(page, f"dashboard-{transport}")


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_cursors_and_notes_move_between_two_browsers(
    browser: Any, demo: RunningDemo, transport: str
) -> None:
    alice = await open_app(browser, demo, "board", transport, "alice")
    bob = await open_app(browser, demo, "board", transport, "bob")
    await demo.subscribers("cursors:main", 2)
    await bob.locator("#people [data-user=alice]").wait_for(timeout=ms(10))
    await alice.locator("#people [data-user=bob]").wait_for(timeout=ms(10))

    box = await alice.locator("#board").bounding_box()
    cursor = "document.querySelector('.cursor[data-user=alice]')"
    for fx, fy in ((0.5, 0.5), (0.25, 0.75)):
        await alice.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        await until(
            bob,
            f"{cursor} && !{cursor}.hidden && Math.abs({cursor}.dataset.x - {fx}) < 0.02"
            f" && Math.abs({cursor}.dataset.y - {fy}) < 0.02",
        )

    # A note is a stored publication: bob sees it, and so does a reload of his page.
    await alice.click("#add")
    await bob.locator(".note", has_text="New note").wait_for(timeout=ms(10))
    await bob.reload()
    await bob.locator(".note", has_text="New note").wait_for(timeout=ms(10))
    await alice.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.3 * box["height"])
    await until(bob, f"{cursor} && !{cursor}.hidden && Math.abs({cursor}.dataset.x - 0.6) < 0.02")
    assert (await demo.hub.history("cursors:main"))[0].publications == []  # live signals only
    await screenshot(bob, f"board-{transport}")


@pytest.mark.parametrize("transport", ["ws", "poll"])
async def test_the_chat_resumes_and_says_when_it_missed_messages(
    browser: Any, demo: RunningDemo, transport: str
) -> None:
    page = await open_app(browser, demo, "chat", transport, "carol")
    await page.fill("#text", "before the cut")
    await page.press("#text", "Enter")
    await page.locator("#messages li", has_text="before the cut").wait_for(timeout=ms(10))
    lines = page.locator("#messages li .text")

    # Away for a moment: what was said meanwhile comes when the page is back.
    await page.context.set_offline(True)
    for session in list(demo.hub.sessions.values()):
        session.close(4000)
    await demo.hub.publish("chat:lobby", {"text": "while away"})
    await page.context.set_offline(False)
    await page.locator("#messages li", has_text="while away").wait_for(timeout=ms(20))
    assert await lines.all_text_contents() == ["before the cut", "while away"]
    assert await page.locator("#notice").is_hidden()

    # Away while more was said than the room keeps: the page says so and reloads the last 50.
    await page.context.set_offline(True)
    for session in list(demo.hub.sessions.values()):
        session.close(4000)
    for n in range(250):
        await demo.hub.publish("chat:lobby", {"text": f"flood {n}"})
    await page.context.set_offline(False)
    await page.locator("#notice", has_text="Missed messages").wait_for(timeout=ms(20))
    await page.locator("#messages li", has_text="flood 249").wait_for(timeout=ms(10))
    texts = await lines.all_text_contents()
    assert texts == [f"flood {n}" for n in range(200, 250)]
    await screenshot(page, f"chat-reset-{transport}")


async def move_many(demo: RunningDemo, note: str, count: int, to: tuple[float, float]) -> None:
    """``count`` moves of ``note`` as a backend publishes them (the server API, with the demo's
    key), the last one to ``to``."""
    from clarion.client import connect

    moves = [{"op": "move", "id": note, "x": n / count, "y": 0.5} for n in range(count - 1)]
    moves.append({"op": "move", "id": note, "x": to[0], "y": to[1]})
    async with connect(demo.url, api_key=demo.hub.settings.api_key) as backend:
        for start in range(0, count, 1000):  # the most a batch takes
            batch = [{"channel": "board:main", "data": m} for m in moves[start : start + 1000]]
            results = await backend.publish_batch(batch)
            assert all(r.offset for r in results), results  # type: ignore[union-attr]


def note_at(note: str, x: float, y: float) -> str:
    """A page expression: ``note`` is drawn at (x, y)."""
    found = f"document.querySelector('.note[data-id=\"{note}\"]')"
    return (
        f"{found} && Math.abs(parseFloat({found}.style.left) - {x * 100}) < 0.01"
        f" && Math.abs(parseFloat({found}.style.top) - {y * 100}) < 0.01"
    )


async def add_note(page: Any) -> str:
    """A note added from ``page``'s button, once the page shows it: its id."""
    await page.click("#add")
    added = page.locator(".note", has_text="New note")
    await added.wait_for(timeout=ms(10))
    note: str | None = await added.get_attribute("data-id")
    assert note
    return note


async def oldest_held(demo: RunningDemo) -> Any:
    return (await demo.hub.history("board:main", limit=1))[0].publications[0].data


@pytest.mark.parametrize("transport", ["ws", "poll"])
async def test_a_note_outlives_the_history_of_its_channel(
    browser: Any, demo: RunningDemo, transport: str
) -> None:
    alice = await open_app(browser, demo, "board", transport, "alice")
    note = await add_note(alice)

    # More changes than the channel keeps: its history no longer holds the note's add.
    kept = demo.hub.options("board:main").history_size
    await move_many(demo, note, kept + 50, (0.7, 0.4))
    assert (await oldest_held(demo))["op"] == "move"

    # A new visitor starts from the server's snapshot: the note, where it was moved last.
    bob = await open_app(browser, demo, "board", transport, "bob")
    await until(bob, note_at(note, 0.7, 0.4))
    await until(alice, note_at(note, 0.7, 0.4))
    assert await bob.locator(".note .by").all_text_contents() == ["by alice"]
    assert await bob.locator("#notice").is_hidden()
    # The keeper follows the channel too, but it is no person: not among who is here.
    await bob.locator("#people [data-user=alice]").wait_for(timeout=ms(10))
    assert sorted(
        await bob.locator("#people .avatar").evaluate_all(
            "(avatars) => avatars.map((a) => a.dataset.user)"
        )
    ) == ["alice", "bob"]

    # And from its cursor, the changes after it.
    await move_many(demo, note, 3, (0.2, 0.6))
    await until(bob, note_at(note, 0.2, 0.6))
    await screenshot(bob, f"board-kept-{transport}")


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_the_board_reloads_its_snapshot_after_a_reset(
    browser: Any, demo: RunningDemo, transport: str
) -> None:
    page = await open_app(browser, demo, "board", transport, "carol")
    note = await add_note(page)

    # Away while more changed than the channel keeps: history cannot cover the gap (a reset),
    # so the page starts again from the snapshot.
    await page.context.set_offline(True)
    for session in list(demo.hub.sessions.values()):
        if session.user == "carol":
            session.close(4000)
    kept = demo.hub.options("board:main").history_size
    await move_many(demo, note, kept + 50, (0.3, 0.8))
    await demo.hub.publish("board:main", {"op": "edit", "id": note, "text": "moved a lot"})
    await page.context.set_offline(False)
    await page.locator("#notice", has_text="Missed changes").wait_for(timeout=ms(20))
    await until(page, note_at(note, 0.3, 0.8), seconds=20)
    assert await page.locator(".note .text").all_text_contents() == ["moved a lot"]
    await screenshot(page, f"board-reset-{transport}")
