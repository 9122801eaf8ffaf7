"""The README's pictures of the demo apps: docs/img/{chat,ticker,board,dashboard}.png.

Runs the demo hub on a free loopback port and drives each app in headless Chromium (two people
where it takes two), then saves one screenshot per app. Run from the repository's root:

    .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from clarion.core.hub import Hub
from clarion.demo import Demo, demo_settings
from clarion.standalone import make_server

OUT = Path(__file__).parents[1] / "docs" / "img"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIZE = {"width": 960, "height": 560}


async def page_of(browser: Any, url: str) -> Any:
    context = await browser.new_context(viewport=SIZE)
    page = await context.new_page()
    await page.goto(url)
    await page.locator("#transport[data-state=connected]").wait_for(timeout=15000)
    return page


async def chat(browser: Any, url: str) -> Any:
    alice = await page_of(browser, f"{url}/demo/chat?user=alice")
    for text in ("Morning! Is the deploy still on for 11?", "I'll share the checklist here."):
        await alice.fill("#text", text)
        await alice.press("#text", "Enter")
    bob = await page_of(browser, f"{url}/demo/chat?user=bob")
    await bob.fill("#text", "Yes — tests are green, go ahead.")
    await bob.press("#text", "Enter")
    await bob.locator("#people [data-user=alice]").wait_for()
    return alice, bob


async def board(browser: Any, url: str) -> Any:
    alice = await page_of(browser, f"{url}/demo/board?user=alice")
    bob = await page_of(browser, f"{url}/demo/board?user=bob")
    for _ in range(3):
        await alice.click("#add")
    await bob.locator(".note").nth(2).wait_for()
    box = await alice.locator("#board").bounding_box()
    await asyncio.sleep(0.5)
    await alice.mouse.move(box["x"] + box["width"] * 0.62, box["y"] + box["height"] * 0.4, steps=8)
    await bob.locator(".cursor[data-user=alice]").wait_for()
    await asyncio.sleep(0.5)
    return bob


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data_dir:
        hub = Hub(demo_settings("127.0.0.1", 0, data_dir))
        app = Demo(hub)
        server = make_server(hub, app=app, port=0)
        await server.start()
        url = f"http://127.0.0.1:{server.port}"
        app.serving(url)
        await asyncio.sleep(8)  # the ticker and the devices build up a little history
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            alice, bob = await chat(browser, url)
            shots = {
                "chat": bob,
                "board": await board(browser, url),
                "ticker": await page_of(browser, f"{url}/demo/ticker"),
                "dashboard": await page_of(browser, f"{url}/demo/dashboard?transport=sse"),
            }
            await asyncio.sleep(3)
            await alice.type("#text", "Great, start", delay=40)  # bob sees alice typing
            await bob.wait_for_function("document.getElementById('typing').textContent !== ''")
            for name, page in shots.items():
                await page.screenshot(path=str(OUT / f"{name}.png"))
                print(OUT / f"{name}.png", file=sys.stderr)
            await browser.close()
        await server.shutdown(timeout=5)


if __name__ == "__main__":
    asyncio.run(main())
