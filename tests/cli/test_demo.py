"""``clarion demo`` as a user runs it, and what keeps it demo-only."""

from __future__ import annotations

import asyncio
import fnmatch
import re
import signal
import socket
import tomllib
from importlib.resources import files
from typing import Any

from clarion.cli import main

from ..conftest import RunningHub, timeout
from ..docblocks import ROOT

APPS = ("chat", "ticker", "board", "dashboard")


async def test_clarion_demo_serves_the_apps_and_publishes(hub_process: Any) -> None:
    demo = await hub_process(command="demo")
    url = demo.http_url
    for _ in range(int(timeout(10) / 0.05)):  # the line after "listening on"
        if any(f"{url}/demo/" in line for line in demo.log):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("".join(demo.log))
    async with RunningHub(None, None, demo.port).http() as http:  # type: ignore[arg-type]
        index = await http.get("/demo/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert {f'href="/demo/{app}"' for app in APPS} <= set(
            re.findall(r'href="[^"]+"', index.text)
        )
        for app in APPS:
            page = await http.get(f"/demo/{app}")
            assert page.status_code == 200 and f'src="/demo/{app}.js"' in page.text
            script = await http.get(f"/demo/{app}.js")
            assert script.headers["content-type"].startswith("text/javascript")
        assert (await http.get("/")).headers["location"] == "/demo/"
        missing = await http.get("/demo/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        wrong_method = await http.post("/demo/token?user=x")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
        # Every run has its own secret: the token comes from the demo's endpoint.
        token = (await http.get("/demo/token", params={"user": "visitor"})).json()["token"]
        refused = await http.get("/poll", params={"channel": "ticker:ACME", "timeout": "0"})
        assert refused.status_code == 401
        # The ticker runs in the demo's process: the latest price is there at once.
        latest = await http.get(
            "/poll",
            params={"channel": "ticker:ACME", "latest": "1", "timeout": "5"},
            headers={"authorization": f"Bearer {token}"},
        )
        assert latest.status_code == 200, latest.text
        assert latest.json()["publications"][0]["data"]["symbol"] == "ACME"
        # The server API stays closed: a key was generated for the run, and nobody was told.
        assert (
            await http.post("/api/publish", json={"channel": "chat:x", "data": 1})
        ).status_code == 401
    demo.proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(demo.proc.wait(), timeout(15)) == 0


async def test_the_token_endpoint_takes_names_only(hub_process: Any) -> None:
    demo = await hub_process(command="demo")
    async with RunningHub(None, None, demo.port).http() as http:  # type: ignore[arg-type]
        for name in ("", "device:freezer", "a b", "x" * 25, "<script>"):
            r = await http.get("/demo/token", params={"user": name})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", name
        assert (await http.get("/demo/token", params={"user": "x" * 24})).status_code == 200


async def test_the_board_snapshot_is_the_notes_and_their_cursor(hub_process: Any) -> None:
    from clarion.client import connect

    demo = await hub_process(command="demo")
    async with RunningHub(None, None, demo.port).http() as http:  # type: ignore[arg-type]
        empty = await http.get("/demo/board.json")
        assert empty.status_code == 200 and empty.headers["cache-control"] == "no-store"
        start = empty.json()
        assert start["notes"] == [] and isinstance(start["cursor"], str)
        assert (await http.post("/demo/board.json")).status_code == 405

        token = (await http.get("/demo/token", params={"user": "visitor"})).json()["token"]
        async with connect(demo.http_url, token=token, transport="sse") as client:
            add = {"op": "add", "id": "n1", "x": 0.25, "y": 1.5, "text": "é" * 600}
            await client.publish("board:main", add)
            await client.publish("board:main", "not a change")
            last = await client.publish("board:main", {"op": "move", "id": "n1", "x": 0.5, "y": 0})
            snapshot: dict[str, Any] = {}
            for _ in range(int(timeout(10) / 0.05)):  # the keeper follows the channel
                snapshot = (await http.get("/demo/board.json")).json()
                if snapshot["cursor"] == last.cursor:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(snapshot)
            # The server's rules, the page's too: coordinates within the board, texts cut.
            assert snapshot["notes"] == [
                {"id": "n1", "x": 0.5, "y": 0.0, "text": "é" * 500, "by": "visitor"}
            ]
            # The cursor resumes after the last change the notes hold: only later ones follow.
            async with client.subscribe("board:main", since=snapshot["cursor"]) as sub:
                await client.publish("board:main", {"op": "delete", "id": "n1"})
                item = await asyncio.wait_for(anext(sub), timeout(10))
                assert item.data == {"op": "delete", "id": "n1"}  # type: ignore[union-attr]
    demo.proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(demo.proc.wait(), timeout(15)) == 0


async def test_clarion_serve_has_no_demo(hub: RunningHub) -> None:
    async with hub.http() as http:
        for path in ("/demo/", "/demo/token?user=x", "/demo/chat"):
            assert (await http.get(path)).status_code == 404


def test_the_demo_refuses_other_addresses_unless_told(capsys: Any) -> None:
    assert main(["demo", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve the demo on 0.0.0.0" in err and "--insecure" in err


def test_a_port_in_use_is_one_line_without_the_settings_the_demo_does_not_read(
    capsys: Any,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (
        f"clarion: cannot listen on 127.0.0.1:{port}: address already in use; "
        "choose another with --port N\n"
    )


def test_the_package_ships_every_demo_file() -> None:
    # The wheel holds what package-data names: every page must be matched by one of its globs.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["clarion"]
    shipped = files("clarion") / "static" / "demo"
    names = [f"static/demo/{entry.name}" for entry in shipped.iterdir()]
    assert {"static/demo/index.html", "static/demo/chat.js"} <= set(names)
    assert [n for n in names if not any(fnmatch.fnmatch(n, g) for g in globs)] == []
